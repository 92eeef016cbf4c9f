"""The async feature-store interface, its in-memory default, the backend factory, and that the
encoder awaits the store (never calls it for a bad request)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.model_repository import ModelRepository
from services.encoder.config import EncoderConfig
from services.encoder.encoding import WARM, EncodeQuery, Encoder, EncoderLimits
from services.encoder.feature_store import (
    EMPTY,
    FeatureStore,
    FeatureStoreConfig,
    History,
)
from services.encoder.memory_store import InMemoryFeatureStore
from services.encoder.store_factory import build_feature_store
from services.encoder.vocab import ModelVocabulary
from tests.fixtures.model_repo import BuiltRepo

SNAPSHOT = (
    "user_id\tdomain\titem_id\ttimestamp\nu\ttarget\tb\t20\nu\ttarget\ta\t10\nu\tsource\tx\t5\n"
)


def test_in_memory_store_answers_histories_per_domain(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    path.write_text(SNAPSHOT)
    store: FeatureStore = InMemoryFeatureStore.from_tsv(path)

    async def scenario() -> None:
        found = await store.histories("u", ("source", "target", "music"))
        assert found["target"] == History(items=("a", "b"), timestamps=(10.0, 20.0))
        assert found["source"].items == ("x",)
        assert found["music"] is EMPTY
        assert (await store.histories("nobody", ("target",)))["target"] is EMPTY
        await store.close()

    asyncio.run(scenario())


def test_factory_builds_the_memory_backend_from_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    path.write_text(SNAPSHOT)
    store = build_feature_store(FeatureStoreConfig(backend="memory", snapshot=str(path)))
    assert isinstance(store, InMemoryFeatureStore)
    assert store.stats() == {"users": 1, "events": 3}
    empty = build_feature_store(FeatureStoreConfig())  # no snapshot: every user UNKNOWN
    assert asyncio.run(empty.histories("u", ("target",)))["target"] is EMPTY


def test_factory_refuses_an_unknown_backend() -> None:
    with pytest.raises(
        ValueError, match=r"feature store backend 'cassandra' is unknown \(known: memory, redis\)"
    ):
        build_feature_store(FeatureStoreConfig(backend="cassandra"))  # type: ignore[arg-type]


def test_encoder_config_selects_the_backend() -> None:
    config = EncoderConfig(model_repo="/x")
    assert config.feature_store == "memory"


class SlowStore:
    """A store that really yields to the event loop, as a network store would, and counts."""

    def __init__(self, histories: Mapping[tuple[str, str], History]) -> None:
        self.histories_by_key = histories
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.closed = False

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        self.calls.append((user_id, tuple(domains)))
        await asyncio.sleep(0.05)
        return {d: self.histories_by_key.get((user_id, d), EMPTY) for d in domains}

    async def close(self) -> None:
        self.closed = True


def test_encoder_awaits_the_store_once_per_request_and_concurrently(repo: BuiltRepo) -> None:
    vocab = ModelVocabulary.load(ModelRepository(repo.root).open(repo.name))
    store = SlowStore({("w", "target"): History(("t01", "t02"), (1.0, 2.0))})
    encoder = Encoder(vocab, store, EncoderLimits())

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(
            *(encoder.encode(EncodeQuery(user_id="w")) for _ in range(20))
        )
        assert all(r.user_status == WARM for r in results)
        assert results[0].inputs["tgt_items"].tolist() == [[1, 2]]
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert elapsed < 0.5  # 20 requests x 50 ms of store latency overlap (serial: >= 1 s)
    assert store.calls == [("w", ("source", "target"))] * 20  # one call per request


def test_a_bad_request_never_reaches_the_store(repo: BuiltRepo) -> None:
    vocab = ModelVocabulary.load(ModelRepository(repo.root).open(repo.name))
    store = SlowStore({})
    encoder = Encoder(vocab, store, EncoderLimits())
    with pytest.raises(InvalidArgument):
        asyncio.run(encoder.encode(EncodeQuery(user_id="")))
    assert store.calls == []


def test_bad_store_filter_and_ranking_settings_fail_at_construction() -> None:
    from services.encoder.app import EncoderApp
    from services.ranker.app import RankerApp
    from services.ranker.config import RankerConfig

    with pytest.raises(ValueError, match="backend 'cassandra' is unknown"):
        EncoderApp(EncoderConfig(model_repo="/x", feature_store="cassandra"))
    with pytest.raises(ValueError, match="--candidate-filters: unknown operator"):
        EncoderApp(EncoderConfig(model_repo="/x", candidate_filters="exclude_seen,boost"))
    with pytest.raises(ValueError, match="--ranking-ops"):
        RankerApp(RankerConfig(ranking_ops="boost"))
