"""Health transitions, downstream outages, forwarded deadlines and start-up failures."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.endpoints import free_loopback_port
from services.common.errors import FailedPrecondition
from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import BuiltRepo, build_model_repo
from tests.fixtures.servers import (
    ADMIN_METADATA,
    LoopThread,
    encoder_config,
    explicit_control,
    health_status,
    ranker_config,
    scorer_config,
    start_host,
    wait_for_status,
)

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_not_serving_until_loaded_then_serving(loop: LoopThread, repo: BuiltRepo) -> None:
    host = start_host(loop, ScorerApp, scorer_config(repo.root), load=False)
    try:
        for name in ("", "xdrec.scorer.v1.ScorerService", "inference.GRPCInferenceService"):
            assert health_status(host.address, name) == NOT_SERVING
        with grpc.insecure_channel(host.address) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(scorer_pb2.PredictRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not ready" in info.value.details()
        loop.run(host.load())
        assert health_status(host.address, "xdrec.scorer.v1.ScorerService") == SERVING
        assert health_status(host.address, "") == SERVING
    finally:
        loop.run(host.stop(grace=0.1))
    # after a graceful stop nothing answers any more
    with pytest.raises(grpc.RpcError):
        health_status(host.address, "", timeout=0.5)


def test_ranker_serves_degraded_while_it_can_answer(loop: LoopThread, repo: BuiltRepo) -> None:
    """SERVING (by popularity, flagged) while the scorer is missing; NOT_SERVING only when
    neither dependency can help: the scorer is gone and so is the encoder."""
    encoder = start_host(loop, EncoderApp, encoder_config(repo.root, repo.features_path))
    scorer_port = free_loopback_port()
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, f"127.0.0.1:{scorer_port}"))
    scorer = None
    request = ranker_pb2.RecommendRequest(user_id="warm", k=3)
    try:
        assert health_status(ranker.address, "xdrec.ranker.v1.RankerService") == SERVING
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            degraded = stub.Recommend(request, timeout=5)
            assert degraded.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE
            assert len(degraded.items) == 3

            scorer = start_host(loop, ScorerApp, scorer_config(repo.root, port=scorer_port))
            deadline = time.monotonic() + 5
            while stub.Recommend(request, timeout=5).fallback != ranker_pb2.FALLBACK_NONE:
                assert time.monotonic() < deadline, "the ranker never used the scorer"
                time.sleep(0.05)

            loop.run(scorer.stop(grace=0.1))  # the scorer goes away again: degraded, not failing
            scorer = None
            answer = stub.Recommend(request, timeout=5)
            assert answer.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE

            loop.run(encoder.stop(grace=0.1))  # and the encoder too: nothing left to answer with
            encoder = None
            wait_for_status(ranker.address, "xdrec.ranker.v1.RankerService", NOT_SERVING)
            assert health_status(ranker.address, "") == NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(request, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "scorer" in info.value.details() and "encoder" in info.value.details()
    finally:
        for host in (ranker, scorer, encoder):
            if host is not None:
                loop.run(host.stop(grace=0.1))


def test_ranker_without_any_dependency_is_not_serving(loop: LoopThread) -> None:
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(f"127.0.0.1:{free_loopback_port()}", f"127.0.0.1:{free_loopback_port()}"),
    )
    try:
        assert health_status(ranker.address, "xdrec.ranker.v1.RankerService") == NOT_SERVING
        with grpc.insecure_channel(ranker.address) as channel, pytest.raises(grpc.RpcError) as info:
            ranker_pb2_grpc.RankerServiceStub(channel).Recommend(
                ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no catalogue" in info.value.details()
    finally:
        loop.run(ranker.stop(grace=0.1))


class SlowEncoder(encoder_pb2_grpc.EncoderServiceServicer):
    """A stand-in encoder that records the deadline it was given and never answers in time."""

    def __init__(self) -> None:
        self.remaining: list[float | None] = []
        self.metadata: list[dict[str, str]] = []

    async def Encode(self, request, context):  # noqa: N802 - gRPC method name
        self.remaining.append(context.time_remaining())
        self.metadata.append(dict(context.invocation_metadata()))
        await asyncio.sleep(5)
        return encoder_pb2.EncodeResponse()


def test_the_callers_deadline_is_forwarded(loop: LoopThread, repo: BuiltRepo) -> None:
    slow = SlowEncoder()

    async def start_slow() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(slow, server)
        health = health_aio.HealthServicer()
        await health.set("xdrec.encoder.v1.EncoderService", SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.run(start_slow())
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root))
    ranker = start_host(loop, RankerApp, ranker_config(f"127.0.0.1:{port}", scorer.address))
    try:
        wait_for_status(ranker.address, "", SERVING)
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(
                    ranker_pb2.RecommendRequest(user_id="warm", k=3),
                    timeout=0.5,
                    metadata=(("x-request-id", "slow-1"),),
                )
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - started < 2.0
        assert (
            slow.remaining and 0 < slow.remaining[0] <= 0.55
        )  # the caller's 0.5 s, not a new budget
        assert slow.metadata[0]["x-request-id"] == "slow-1"
    finally:
        loop.run(ranker.stop(grace=0.1))
        loop.run(scorer.stop(grace=0.1))
        loop.run(server.stop(0))


def test_a_broken_repository_fails_start_up(loop: LoopThread, fresh_repo: BuiltRepo) -> None:
    (fresh_repo.model_path()).write_bytes(b"garbage")
    host = start_host(loop, ScorerApp, scorer_config(fresh_repo.root), load=False)
    try:
        with pytest.raises(FailedPrecondition, match="refused"):
            loop.run(host.load())
        assert health_status(host.address, "") == NOT_SERVING
    finally:
        loop.run(host.stop(grace=0.1))


def test_metrics_endpoint_counts_rpcs(loop: LoopThread, repo: BuiltRepo) -> None:
    port = free_loopback_port()
    host = start_host(loop, ScorerApp, scorer_config(repo.root, metrics_port=port))
    try:
        with grpc.insecure_channel(host.address) as channel:
            scorer_pb2_grpc.ScorerServiceStub(channel).ListModels(
                scorer_pb2.ListModelsRequest(), timeout=5
            )
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        loop.run(host.stop(grace=0.1))
    assert 'xdrec_rpc_requests_total{code="OK",method="ListModels",service="scorer"}' in body
    assert 'xdrec_rpc_latency_seconds_count{method="ListModels",service="scorer"}' in body
    assert 'xdrec_ready{service="scorer"}' in body


def test_a_broken_newest_version_falls_back_to_the_previous_one(loop: LoopThread, tmp_path) -> None:

    repo = build_model_repo(tmp_path, versions=2)
    model = repo.model_path("2")
    model.write_bytes(model.read_bytes()[:-1] + b"\0")  # hash mismatch, same size
    encoder = start_host(loop, EncoderApp, encoder_config(repo.root, repo.features_path))
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, **explicit_control(tmp_path)))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, scorer.address))
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            response = ranker_pb2_grpc.RankerServiceStub(channel).Recommend(
                ranker_pb2.RecommendRequest(user_id="warm", k=2), timeout=5
            )
        assert response.model.version == "1" and len(response.items) == 2
        with grpc.insecure_channel(scorer.address) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:  # reloading refuses the broken version
                stub.RepositoryModelLoad(
                    v2.RepositoryModelLoadRequest(model_name=repo.name),
                    timeout=10,
                    metadata=ADMIN_METADATA,
                )
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "sha256" in info.value.details()
            assert stub.ModelReady(
                v2.ModelReadyRequest(name=repo.name, version="1"), timeout=5
            ).ready
            stub.RepositoryModelUnload(
                v2.RepositoryModelUnloadRequest(model_name=repo.name),
                timeout=5,
                metadata=ADMIN_METADATA,
            )
            assert not stub.ModelReady(v2.ModelReadyRequest(name=repo.name), timeout=5).ready
    finally:
        for host in (ranker, scorer, encoder):
            loop.run(host.stop(grace=0.1))
