"""Ranking operators, catalogue and its cache, request validation, without gRPC."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.ranker.v1 import ranker_pb2

from services.common.errors import Internal, InvalidArgument, ResourceExhausted
from services.ranker.catalog import Catalog, CatalogCache
from services.ranker.config import RankerConfig
from services.ranker.ops import Ranking, TopK, build_ranking_ops, top_k
from services.ranker.servicer import validate


def ints(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_top_k_orders_best_first_with_deterministic_ties() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9, np.nan, 0.3], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 100).tolist() == [1, 3, 2, 5, 0, 4]  # k larger than C; NaN last
    assert top_k(np.empty(0, dtype=np.float32), 5).tolist() == []


def test_top_k_matches_a_full_sort_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000).astype(np.float32)
    np.testing.assert_array_equal(top_k(scores, 50), np.argsort(-scores, kind="stable")[:50])


def test_top_k_operator_keeps_the_k_best_with_their_indices() -> None:
    ranking = Ranking(ints(7, 3, 9, 4), np.array([0.2, 0.9, 0.5, 0.9], dtype=np.float32), k=3)
    best = TopK().apply(ranking)
    assert best.indices.tolist() == [3, 4, 9]
    assert best.scores.tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert ranking.indices.tolist() == [7, 3, 9, 4]  # the input state is not mutated


def test_ranking_pipeline_is_configured_and_ends_with_top_k() -> None:
    assert build_ranking_ops().names == ("top_k",)
    assert build_ranking_ops(" top_k ").names == ("top_k",)
    with pytest.raises(ValueError, match=r"unknown operator\(s\) boost.*known: top_k"):
        build_ranking_ops("boost,top_k")
    with pytest.raises(ValueError, match="must end with top_k"):
        build_ranking_ops("")
    with pytest.raises(ValueError, match="listed twice"):
        build_ranking_ops("top_k,top_k")
    ranking = Ranking(ints(1, 2, 3), np.array([0.1, 0.3, 0.2], dtype=np.float32), k=2)
    assert build_ranking_ops().apply(ranking).indices.tolist() == [2, 3]


def catalog_response(version: str = "1") -> encoder_pb2.GetCatalogResponse:
    return encoder_pb2.GetCatalogResponse(
        model=tensor_pb2.ModelRef(name="m", version=version),
        items=[
            encoder_pb2.CatalogItem(item_id="a", index=1, title="A", popularity=30),
            encoder_pb2.CatalogItem(item_id="b", index=2, title="B", popularity=10),
            encoder_pb2.CatalogItem(item_id="c", index=4, title="C", popularity=60),
        ],
    )


def test_catalog_arrays_and_popularity_share() -> None:
    catalog = Catalog.from_response(catalog_response())
    assert catalog.item_ids[4] == "c" and catalog.titles[1] == "A"
    assert catalog.check(ints(4, 1)).tolist() == [4, 1]
    for stray in (ints(1, 3), ints(0), ints(4, 9)):  # a hole, padding, past the end
        with pytest.raises(Internal, match="not in the catalogue"):
            catalog.check(stray)
    with pytest.raises(Internal, match="flat integer tensor"):
        catalog.check(np.array([1.0, 4.0]))
    np.testing.assert_allclose(catalog.popularity_shares(ints(4, 1, 2)), [0.6, 0.3, 0.1])


def test_catalog_cache_fetches_each_version_once() -> None:
    calls: list[tuple[str, str]] = []

    async def fetch(name: str, version: str, deadline: float) -> encoder_pb2.GetCatalogResponse:
        calls.append((name, version))
        await asyncio.sleep(0.01)
        return catalog_response(version)

    async def scenario() -> None:
        cache = CatalogCache(fetch, size=1)
        first = await asyncio.gather(*(cache.get("m", "1", 0.0) for _ in range(5)))
        assert all(c is first[0] for c in first)
        await cache.get("m", "2", 0.0)
        await cache.get("m", "1", 0.0)  # evicted by version 2 (size 1)

    asyncio.run(scenario())
    assert calls == [("m", "1"), ("m", "2"), ("m", "1")]


@pytest.mark.parametrize(
    ("request_kwargs", "error", "field"),
    [
        ({"user_id": "u", "k": 0}, InvalidArgument, "k"),
        ({"user_id": "u", "k": -3}, InvalidArgument, "k"),
        ({"user_id": "u", "k": 101}, ResourceExhausted, "k"),
        ({"user_id": "", "k": 5}, InvalidArgument, "user_id"),
        (
            {"user_id": "u", "k": 5, "candidate_item_ids": ["x"] * 5001},
            ResourceExhausted,
            "candidate_item_ids",
        ),
        (
            {"user_id": "u", "k": 5, "exclude_item_ids": ["x"] * 5001},
            ResourceExhausted,
            "exclude_item_ids",
        ),
    ],
)
def test_request_validation_names_the_field(request_kwargs, error, field: str) -> None:
    with pytest.raises(error) as info:
        validate(ranker_pb2.RecommendRequest(**request_kwargs), RankerConfig())
    assert info.value.message.startswith(field)
