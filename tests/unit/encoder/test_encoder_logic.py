"""Encoder logic without gRPC: histories, the signature's tensors, candidates, user status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.model_repository import IntegrityError, ModelRepository
from services.encoder.encoding import (
    COLD_START,
    UNKNOWN,
    WARM,
    Encoded,
    EncodeQuery,
    Encoder,
    EncoderLimits,
    RecentEvent,
)
from services.encoder.feature_store import FeatureStoreError
from services.encoder.filters import build_candidate_filters
from services.encoder.memory_store import InMemoryFeatureStore
from services.encoder.vocab import ModelVocabulary
from tests.fixtures.model_repo import BuiltRepo, build_model_repo


def make_encoder(repo: BuiltRepo, version: str | None = None, **limits) -> Encoder:
    vocab = ModelVocabulary.load(ModelRepository(repo.root).open(repo.name, version))
    store = InMemoryFeatureStore.from_tsv(repo.features_path)
    return Encoder(vocab, store, EncoderLimits(**limits))


def encode(encoder: Encoder, query: EncodeQuery, now: float | None = None) -> Encoded:
    return asyncio.run(encoder.encode(query, now))


@pytest.fixture(scope="module")
def encoder(repo: BuiltRepo) -> Encoder:
    return make_encoder(repo)


def target_index(repo: BuiltRepo, *items: str) -> list[int]:
    return [repo.vocab_target.index(i) for i in items]


def source_index(repo: BuiltRepo, *items: str) -> list[int]:
    return [repo.vocab_source.index(i) for i in items]


def test_warm_user_gets_both_histories_in_time_order(encoder: Encoder, repo: BuiltRepo) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="warm"))
    assert list(encoded.inputs) == ["src_items", "src_mask", "tgt_items", "tgt_mask", "candidates"]
    assert encoded.inputs["src_items"].tolist() == [source_index(repo, "s01", "s02", "s03")]
    assert encoded.inputs["tgt_items"].tolist() == [target_index(repo, "t01", "t02", "t03")]
    assert encoded.inputs["src_mask"].dtype == np.float32
    assert encoded.inputs["src_items"].dtype == np.int64
    assert encoded.inputs["tgt_mask"].tolist() == [[1.0, 1.0, 1.0]]
    assert encoded.user_status == WARM
    assert encoded.seen_indices.tolist() == target_index(repo, "t01", "t02", "t03")
    assert (encoded.source_history_length, encoded.target_history_length) == (3, 3)


def test_cold_user_has_the_empty_target_history_encoding(encoder: Encoder) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="cold"))
    assert encoded.user_status == COLD_START
    assert encoded.inputs["tgt_items"].tolist() == [[0]]
    assert encoded.inputs["tgt_mask"].tolist() == [[0.0]]
    assert encoded.seen_indices.size == 0


@pytest.mark.parametrize("user", ["nobody", "stale"])
def test_unknown_users(encoder: Encoder, user: str) -> None:
    encoded = encode(encoder, EncodeQuery(user_id=user))
    assert encoded.user_status == UNKNOWN
    for name in ("src_items", "tgt_items"):
        assert encoded.inputs[name].tolist() == [[0]]


def test_whole_catalogue_when_no_candidates(encoder: Encoder, repo: BuiltRepo) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="warm", include_seen=True))
    expected = list(range(1, len(repo.vocab_target)))
    assert encoded.candidate_indices.tolist() == expected
    assert encoded.inputs["candidates"].shape == (1, len(expected))


def test_explicit_candidates_unknown_and_duplicates(encoder: Encoder, repo: BuiltRepo) -> None:
    query = EncodeQuery(
        user_id="warm", candidate_item_ids=["t04", "zzz", "t02", "t04", "s01"], include_seen=True
    )
    encoded = encode(encoder, query)
    assert encoded.candidate_indices.tolist() == target_index(repo, "t04", "t02")
    assert encoded.unknown_candidate_ids == ["zzz", "s01"]  # a source item is no target candidate


def test_seen_items_are_dropped_from_the_candidates_unless_included(
    encoder: Encoder, repo: BuiltRepo
) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="warm"))
    unseen = [
        i
        for i in range(1, len(repo.vocab_target))
        if i not in target_index(repo, "t01", "t02", "t03")
    ]
    assert encoded.candidate_indices.tolist() == unseen
    assert encoded.inputs["candidates"].tolist() == [unseen]  # the model scores exactly these
    assert encoded.seen_indices.tolist() == target_index(repo, "t01", "t02", "t03")
    kept = encode(encoder, EncodeQuery(user_id="warm", include_seen=True))
    assert kept.candidate_indices.tolist() == list(range(1, len(repo.vocab_target)))


def test_excluded_ids_are_dropped_unknown_ones_ignored(encoder: Encoder, repo: BuiltRepo) -> None:
    query = EncodeQuery(
        user_id="warm",
        candidate_item_ids=["t02", "t05", "nope", "t07", "t09", "s01"],
        exclude_item_ids=["t09", "ghost", "s02"],
    )
    encoded = encode(encoder, query)
    assert encoded.candidate_indices.tolist() == target_index(repo, "t05", "t07")  # t02 seen
    assert encoded.inputs["candidates"].tolist() == [target_index(repo, "t05", "t07")]
    assert encoded.unknown_candidate_ids == ["nope", "s01"]
    both = encode(
        encoder,
        EncodeQuery(
            user_id="warm",
            include_seen=True,
            exclude_item_ids=["t01", "t20"],
            candidate_item_ids=[],
        ),
    )
    assert both.candidate_indices.tolist() == list(range(2, 20))  # t01 seen but excluded


def test_everything_filtered_gives_an_empty_candidates_input(encoder: Encoder) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="warm", candidate_item_ids=["t01", "t02"]))
    assert encoded.candidate_indices.size == 0
    assert encoded.inputs["candidates"].shape == (1, 0)
    assert encoded.inputs["candidates"].dtype == np.int64


def test_candidate_filters_are_configurable(repo: BuiltRepo) -> None:
    vocab = ModelVocabulary.load(ModelRepository(repo.root).open(repo.name))
    store = InMemoryFeatureStore.from_tsv(repo.features_path)
    only_listed = Encoder(vocab, store, EncoderLimits(), build_candidate_filters("exclude_listed"))
    encoded = encode(only_listed, EncodeQuery(user_id="warm", exclude_item_ids=["t04"]))
    assert encoded.candidate_indices.tolist() == [i for i in range(1, 21) if i != 4]  # seen kept


def test_history_is_truncated_to_the_most_recent(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path, max_history=4)
    encoded = encode(make_encoder(repo), EncodeQuery(user_id="heavy"))
    assert encoded.inputs["tgt_items"].tolist() == [list(range(13, 17))]  # t13..t16: the last 4
    assert encoded.seen_indices.tolist() == list(range(1, 17))  # seen = whole history


def test_recent_events_are_merged_by_time_and_domain_looked_up(
    encoder: Encoder, repo: BuiltRepo
) -> None:
    query = EncodeQuery(
        user_id="cold",
        recent_events=[
            RecentEvent("t09"),  # domain looked up, timestamp 0 = now: last
            RecentEvent("s08", "source", 150.0),  # between the stored s04 (100) and s05 (200)
            RecentEvent("nope"),  # unknown to both vocabularies: dropped
        ],
    )
    encoded = encode(encoder, query, now=10_000.0)
    assert encoded.inputs["src_items"].tolist() == [source_index(repo, "s04", "s08", "s05", "s06")]
    assert encoded.inputs["tgt_items"].tolist() == [target_index(repo, "t09")]
    assert encoded.user_status == WARM


def test_recent_events_make_an_unknown_user_cold_start(encoder: Encoder) -> None:
    encoded = encode(encoder, EncodeQuery(user_id="new", recent_events=[RecentEvent("s01")]))
    assert encoded.user_status == COLD_START


@pytest.mark.parametrize(
    ("query", "error", "field"),
    [
        (EncodeQuery(user_id=""), InvalidArgument, "user_id"),
        (EncodeQuery(user_id="x" * 257), InvalidArgument, "user_id"),
        (EncodeQuery(user_id="u", domain="source"), InvalidArgument, "domain"),
        (
            EncodeQuery(user_id="u", candidate_item_ids=["t01", ""]),
            InvalidArgument,
            "candidate_item_ids[1]",
        ),
        (
            EncodeQuery(user_id="u", recent_events=[RecentEvent("t01", "music")]),
            InvalidArgument,
            "recent_events[0].domain",
        ),
        (
            EncodeQuery(user_id="u", recent_events=[RecentEvent("")]),
            InvalidArgument,
            "recent_events[0].item_id",
        ),
        (
            EncodeQuery(user_id="u", recent_events=[RecentEvent("t01", "", -1.0)]),
            InvalidArgument,
            "recent_events[0].timestamp",
        ),
        (
            EncodeQuery(user_id="u", candidate_item_ids=["t01"] * 5001),
            ResourceExhausted,
            "candidate_item_ids",
        ),
        (
            EncodeQuery(user_id="u", exclude_item_ids=["t01"] * 5001),
            ResourceExhausted,
            "exclude_item_ids",
        ),
    ],
)
def test_validation_names_the_field(encoder: Encoder, query, error, field: str) -> None:
    with pytest.raises(error) as info:
        encode(encoder, query)
    assert info.value.message.startswith(field)


def test_target_domain_by_name_is_accepted(encoder: Encoder) -> None:
    assert encode(encoder, EncodeQuery(user_id="warm", domain="target")).user_status == WARM


def test_limits_are_configurable(repo: BuiltRepo) -> None:
    small = make_encoder(repo, max_candidates=2, max_recent_events=1)
    with pytest.raises(ResourceExhausted, match="limit of 2"):
        encode(small, EncodeQuery(user_id="u", candidate_item_ids=["t01", "t02", "t03"]))
    with pytest.raises(ResourceExhausted, match="recent_events"):
        encode(small, EncodeQuery(user_id="u", recent_events=[RecentEvent("t01")] * 2))


def test_vocabulary_files_are_hash_checked(fresh_repo: BuiltRepo) -> None:
    path = fresh_repo.version_dir() / "vocab_target.json"
    path.write_text(path.read_text().replace("t01", "t0X"))
    with pytest.raises(IntegrityError, match="vocab_target.json"):
        ModelVocabulary.load(ModelRepository(fresh_repo.root).open(fresh_repo.name))


def test_feature_store_sorts_by_time_and_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.tsv"
    path.write_text("user_id\tdomain\titem_id\ttimestamp\nu\ttarget\tb\t20\nu\ttarget\ta\t10\n")
    store = InMemoryFeatureStore.from_tsv(path)
    histories = asyncio.run(store.histories("u", ("target", "source")))
    assert histories["target"].items == ("a", "b")
    assert histories["source"].items == ()
    assert store.stats() == {"users": 1, "events": 2}
    path.write_text("user_id\tdomain\titem_id\ttimestamp\nu\ttarget\tb\tyesterday\n")
    with pytest.raises(FeatureStoreError, match=r"f.tsv:2: timestamp 'yesterday'"):
        InMemoryFeatureStore.from_tsv(path)
    path.write_text("user\titem\n")
    with pytest.raises(FeatureStoreError, match="header lacks"):
        InMemoryFeatureStore.from_tsv(path)
