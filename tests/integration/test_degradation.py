"""Graceful degradation: the ranker answers by popularity, flagged, while the encoder or the
scorer is down or too slow, and never fails a valid Recommend because of one of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.servers import (
    LoopThread,
    Stack,
    encoder_config,
    ranker_config,
    serve_scripted,
    start_host,
    start_stack,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
RANKER = "xdrec.ranker.v1.RankerService"


@pytest.fixture
def own_stack(loop: LoopThread, repo: BuiltRepo) -> Iterator[Stack]:
    """A stack of its own: these tests stop its services."""
    running = start_stack(loop, repo.root, repo.features_path)
    yield running
    for host in (running.ranker, running.encoder, running.scorer):
        running.loop.run(host.stop(grace=0.1))
    for channel in running.channels:
        channel.close()


def recommend(stack: Stack, **fields) -> ranker_pb2.RecommendResponse:
    return stack.ranker_stub.Recommend(ranker_pb2.RecommendRequest(**fields), timeout=5)


def by_popularity(repo: BuiltRepo, ids: list[str]) -> list[str]:
    return sorted(ids, key=lambda i: (-repo.popularity(i), ids.index(i)))


def test_scorer_down_gives_the_flagged_popularity_answer(own_stack: Stack, repo: BuiltRepo) -> None:
    own_stack.loop.run(own_stack.scorer.stop(grace=0.1))
    for user in ("warm", "cold", "heavy"):
        answer = recommend(own_stack, user_id=user, k=4, exclude_item_ids=["t05"])
        assert answer.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE
        assert answer.user_status in (
            tensor_pb2.USER_STATUS_WARM,
            tensor_pb2.USER_STATUS_COLD_START,
        )
        ids = [i.item_id for i in answer.items]
        assert "t05" not in ids
        assert ids == by_popularity(repo, ids)
        assert answer.items[0].title == repo.title(ids[0])
    warm = recommend(own_stack, user_id="warm", k=5)
    assert not {"t01", "t02", "t03"} & {i.item_id for i in warm.items}  # seen: still dropped
    # unknown users never needed the scorer: their answer is the ordinary popularity one
    unknown = recommend(own_stack, user_id="never-seen", k=3)
    assert unknown.fallback == ranker_pb2.FALLBACK_POPULARITY
    assert [i.item_id for i in unknown.items] == ["t01", "t02", "t03"]
    assert own_stack.ranker.readiness.ready  # SERVING: it can still answer


def test_encoder_down_answers_from_the_cached_catalogue(own_stack: Stack, repo: BuiltRepo) -> None:
    own_stack.loop.run(own_stack.encoder.stop(grace=0.1))
    answer = recommend(own_stack, user_id="warm", k=3)
    assert answer.fallback == ranker_pb2.FALLBACK_ENCODER_UNAVAILABLE
    assert answer.model.name == repo.name and answer.model.version == repo.latest
    assert [i.item_id for i in answer.items] == ["t01", "t02", "t03"]
    total = sum(c["popularity"] for c in repo.catalog)
    assert answer.items[0].score == pytest.approx(repo.popularity("t01") / total)
    assert [i.rank for i in answer.items] == [1, 2, 3]

    listed = recommend(
        own_stack,
        user_id="warm",
        k=10,
        candidate_item_ids=["t09", "nope", "t02", "t07", "t02"],
        exclude_item_ids=["t07", "also-unknown"],
    )
    assert listed.fallback == ranker_pb2.FALLBACK_ENCODER_UNAVAILABLE
    assert [i.item_id for i in listed.items] == by_popularity(repo, ["t09", "t02"])
    assert list(listed.unknown_candidate_ids) == ["nope"]

    excluded = recommend(own_stack, user_id="x", k=3, exclude_item_ids=["t01"])
    assert [i.item_id for i in excluded.items] == ["t02", "t03", "t04"]


def test_bad_requests_are_still_refused_while_degraded(own_stack: Stack) -> None:
    own_stack.loop.run(own_stack.encoder.stop(grace=0.1))
    with pytest.raises(grpc.RpcError) as info:
        recommend(own_stack, user_id="warm", k=0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class SlowScorer(scorer_pb2_grpc.ScorerServiceServicer):
    """A scorer that is SERVING but never answers in time."""

    async def Predict(self, request, context):  # noqa: N802 - gRPC method name
        await asyncio.sleep(5)
        return scorer_pb2.PredictResponse()


def test_slow_scorer_is_answered_by_popularity_within_the_deadline(
    loop: LoopThread, repo: BuiltRepo
) -> None:
    server, port = loop.run(
        serve_scripted(
            lambda s: scorer_pb2_grpc.add_ScorerServiceServicer_to_server(SlowScorer(), s),
            "xdrec.scorer.v1.ScorerService",
        )
    )
    encoder = start_host(loop, EncoderApp, encoder_config(repo.root, repo.features_path))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, f"127.0.0.1:{port}"))
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            started = time.monotonic()
            answer = stub.Recommend(ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=0.5)
            elapsed = time.monotonic() - started
        assert answer.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE
        assert len(answer.items) == 3
        assert elapsed < 0.5
    finally:
        loop.run(ranker.stop(grace=0.1))
        loop.run(encoder.stop(grace=0.1))
        loop.run(server.stop(0))
