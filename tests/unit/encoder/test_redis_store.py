"""The Redis feature store against a real ``redis-server``, and the memory store's writes: the
same contract (capped time-ordered histories, idempotent appends, forget, export)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from services.common.endpoints import free_loopback_port
from services.encoder.feature_store import (
    EMPTY,
    FeatureStore,
    FeatureStoreConfig,
    FeatureStoreUnavailable,
    StoredEvent,
)
from services.encoder.memory_store import InMemoryFeatureStore
from services.encoder.redis_store import RedisFeatureStore, snapshot_event_ids
from services.encoder.store_factory import build_feature_store
from tests.fixtures.redis_server import RedisServer, start_redis

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def redis_config(server: RedisServer, **overrides: object) -> FeatureStoreConfig:
    return FeatureStoreConfig(
        backend="redis",
        redis_url=server.url,
        redis_timeout_s=overrides.pop("redis_timeout_s", 0.5),  # type: ignore[arg-type]
        **overrides,  # type: ignore[arg-type]
    )


def event(event_id: str, item: str, ts: float, domain: str = "target") -> StoredEvent:
    return StoredEvent(event_id, domain, item, ts, "click")


Factory = Callable[..., FeatureStore]


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Builds a store of either backend (a real redis-server for ``redis``)."""
    if request.param == "memory":
        return lambda **cfg: InMemoryFeatureStore(config=FeatureStoreConfig(**cfg))
    server = start_redis(tmp_path / "redis")
    request.addfinalizer(server.stop)
    return lambda **cfg: build_feature_store(redis_config(server, **cfg))


def test_append_keeps_a_time_ordered_capped_history(make_store: Factory) -> None:
    async def scenario() -> None:
        store = make_store(max_history=3)
        result = await store.append(
            "u", [event("e1", "b", 20), event("e2", "a", 10), event("e3", "x", 5, "source")]
        )
        assert (result.accepted, result.duplicates) == (3, 0)
        found = await store.histories("u", ("source", "target", "music"))
        assert found["target"].items == ("a", "b")
        assert found["target"].timestamps == (10.0, 20.0)
        assert found["source"].items == ("x",)
        assert found["music"] is EMPTY or len(found["music"]) == 0
        await store.append("u", [event("e4", "c", 30), event("e5", "d", 40)])
        assert (await store.histories("u", ("target",)))["target"].items == ("b", "c", "d")
        await store.close()

    run(scenario())


def test_a_retried_batch_is_counted_once(make_store: Factory) -> None:
    async def scenario() -> None:
        store = make_store()
        batch = [event("e1", "a", 10), event("e2", "a", 11), event("e1", "a", 10)]
        first = await store.append("u", batch)
        assert (first.accepted, first.duplicates) == (2, 1)  # the same id twice in one batch
        again = await store.append("u", batch)
        assert (again.accepted, again.duplicates) == (0, 3)
        # The same item twice under different ids is two interactions.
        assert (await store.histories("u", ("target",)))["target"].items == ("a", "a")
        # Event ids are per user: another user's e1 is a different event.
        assert (await store.append("v", [event("e1", "a", 10)])).accepted == 1
        await store.close()

    run(scenario())


def test_forget_deletes_every_domain_and_is_idempotent(make_store: Factory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.append("u", [event("e1", "a", 10), event("e2", "x", 5, "source")])
        await store.append("keep", [event("e1", "a", 10)])
        assert await store.forget("u") == 2
        assert await store.forget("u") == 0
        found = await store.histories("u", ("source", "target"))
        assert all(len(h) == 0 for h in found.values())
        assert len((await store.histories("keep", ("target",)))["target"]) == 1
        exported = [(user, e.event_id) async for user, e in store.events()]
        assert exported == [("keep", "e1")]
        await store.close()

    run(scenario())


def test_export_yields_ids_kinds_and_times(make_store: Factory) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.append("u", [event("e1", "a", 10), event("e2", "x", 5, "source")])
        exported = sorted(
            [
                (u, e.domain, e.item_id, e.timestamp, e.kind, e.event_id)
                async for u, e in store.events()
            ]
        )
        assert exported == [
            ("u", "source", "x", 5.0, "click", "e2"),
            ("u", "target", "a", 10.0, "click", "e1"),
        ]
        await store.close()

    run(scenario())


def test_two_clients_share_one_redis(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        one = build_feature_store(redis_config(redis_server))
        two = build_feature_store(redis_config(redis_server))
        await one.append("u", [event("e1", "a", 10)])
        assert (await two.histories("u", ("target",)))["target"].items == ("a",)
        assert (await two.append("u", [event("e1", "a", 10)])).duplicates == 1
        await one.close()
        await two.close()

    run(scenario())


def test_bulk_load_is_idempotent(redis_server: RedisServer) -> None:
    rows = [("u", "target", "a", 10.0), ("u", "target", "a", 10.0), ("u", "source", "x", 1.0)]

    async def scenario() -> None:
        store = build_feature_store(redis_config(redis_server))
        assert isinstance(store, RedisFeatureStore)
        ids = snapshot_event_ids(rows)
        assert len(set(ids)) == 3  # a repeated row keeps its repetition
        assert await store.load(rows, ids) == 3
        assert await store.load(rows, snapshot_event_ids(rows)) == 0
        assert (await store.histories("u", ("target",)))["target"].items == ("a", "a")
        await store.close()

    run(scenario())


def test_an_unreachable_redis_is_unavailable_within_the_timeout() -> None:
    config = FeatureStoreConfig(
        backend="redis",
        redis_url=f"redis://127.0.0.1:{free_loopback_port()}/0",
        redis_timeout_s=0.1,
    )

    async def scenario() -> None:
        store = build_feature_store(config)
        start = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable, match="redis"):
            await store.histories("u", ("target",))
        with pytest.raises(FeatureStoreUnavailable):
            await store.append("u", [event("e1", "a", 10)])
        assert time.monotonic() - start < 1.0
        await store.close()

    run(scenario())


def test_a_hung_redis_times_out_and_the_client_reconnects(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = build_feature_store(redis_config(redis_server, redis_timeout_s=0.1))
        await store.append("u", [event("e1", "a", 10)])
        redis_server.pause()
        try:
            start = time.monotonic()
            with pytest.raises(FeatureStoreUnavailable, match="did not answer"):
                await store.histories("u", ("target",))
            assert time.monotonic() - start < 0.5
        finally:
            redis_server.resume()
        assert (await store.histories("u", ("target",)))["target"].items == ("a",)
        await store.close()

    run(scenario())


def test_the_client_survives_a_redis_restart(durable_redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = build_feature_store(redis_config(durable_redis_server))
        assert (await store.append("u", [event("e1", "a", 10)])).accepted == 1
        durable_redis_server.kill()  # SIGKILL: only what AOF had fsynced survives
        with pytest.raises(FeatureStoreUnavailable):
            await store.histories("u", ("target",))
        durable_redis_server.start()
        # The acknowledged event survived, and the pooled client reconnected by itself.
        assert (await store.histories("u", ("target",)))["target"].items == ("a",)
        assert (await store.append("u", [event("e1", "a", 10)])).duplicates == 1
        await store.close()

    run(scenario())


def test_the_password_comes_from_config(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", password="s3cret")
    try:

        async def scenario() -> None:
            denied = build_feature_store(redis_config(server))
            with pytest.raises(FeatureStoreUnavailable, match="(?i)auth"):
                await denied.ping()
            await denied.close()
            allowed = build_feature_store(redis_config(server, redis_password="s3cret"))
            await allowed.ping()
            await allowed.close()

        run(scenario())
    finally:
        server.stop()


def test_the_encoder_reads_the_password_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.encoder.app import store_config
    from services.encoder.config import EncoderConfig

    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("XDREC_REDIS_PASSWORD", "from-env")
    config = EncoderConfig(model_repo="/x", feature_store="redis")
    assert store_config(config).redis_password == "from-env"
    with_file = EncoderConfig(
        model_repo="/x", feature_store="redis", redis_password_file=str(secret)
    )
    assert store_config(with_file).redis_password == "from-file"
    assert "from-file" not in repr(store_config(with_file))  # never logged with the config
    missing = EncoderConfig(
        model_repo="/x", feature_store="redis", redis_password_file=str(tmp_path / "nope")
    )
    with pytest.raises(ValueError, match="--redis-password-file .*nope"):
        store_config(missing)


def test_a_burst_beyond_the_pool_waits_for_a_connection(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = build_feature_store(
            redis_config(redis_server, redis_max_connections=2, redis_timeout_s=5.0)
        )
        await store.append("u", [event("e1", "a", 10)])
        found = await asyncio.gather(*(store.histories("u", ("target",)) for _ in range(50)))
        assert all(f["target"].items == ("a",) for f in found)
        await store.close()

    run(scenario())
