"""Encoder and scorer shed their own load: a bound on calls in flight, refused at the edge.

On the real bootstrap with a servicer that holds each call a second: concurrent calls beyond the
limit are refused at once with RESOURCE_EXHAUSTED naming the limit and its flag, never reach
the servicer, health checks are never refused, and the slots are free again afterwards. The
real scorer refuses at its edge while its slot is taken.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.config import ServerConfig
from services.common.shedding import InFlightLimit
from services.encoder.app import EncoderApp
from services.encoder.config import EncoderConfig
from services.scorer.app import ScorerApp
from services.scorer.config import ScorerConfig
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.scorer_requests import predict
from tests.fixtures.servers import LOOPBACK, LoopThread, health_status, scorer_config, start_host

SERVING = health_pb2.HealthCheckResponse.SERVING


class Sleeper(scorer_pb2_grpc.ScorerServiceServicer):
    """Holds each Predict for ``delay`` seconds (the edge's bookkeeping under real concurrency)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    async def Predict(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        await asyncio.sleep(self.delay)
        return scorer_pb2.PredictResponse()


class SleeperApp:
    """A ``ServiceApp`` on the real bootstrap, shedding with the scorer's ``InFlightLimit``."""

    name = "sleeper"
    health_names = ("xdrec.scorer.v1.ScorerService",)

    def __init__(self, limit: int) -> None:
        self.servicer = Sleeper(1.0)
        self.shedder = InFlightLimit(self.name, limit)

    def register(self, server, readiness) -> None:
        scorer_pb2_grpc.add_ScorerServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness) -> None:
        await readiness.set(True)

    async def stop(self) -> None:
        pass


def one(stub: scorer_pb2_grpc.ScorerServiceStub) -> tuple[str, float, str]:
    started = time.monotonic()
    try:
        stub.Predict(predict(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code().name, time.monotonic() - started, exc.details() or ""
    return "OK", time.monotonic() - started, ""


def test_calls_beyond_the_in_flight_limit_are_refused_at_once(loop: LoopThread) -> None:
    app = SleeperApp(limit=2)
    host = start_host(loop, lambda _config: app, ServerConfig(**LOOPBACK))
    try:
        with grpc.insecure_channel(host.address) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            with ThreadPoolExecutor(8) as pool:
                holders = [pool.submit(one, stub) for _ in range(2)]
                time.sleep(0.2)  # both slots held for a second
                others = list(pool.map(lambda _: one(stub), range(5)))
                assert health_status(host.address) == SERVING  # probes are never shed
                assert [h.result()[0] for h in holders] == ["OK", "OK"]
            assert {code for code, _, _ in others} == {"RESOURCE_EXHAUSTED"}, others
            assert max(elapsed for _, elapsed, _ in others) < 0.5  # at once, not after 1 s
            assert (
                "sleeper overloaded: 2 calls in flight (limit 2, --max-in-flight)" in others[0][2]
            )
            assert app.servicer.calls == 2  # refused calls never reached the servicer
            assert app.shedder.in_flight == 0
            assert one(stub)[0] == "OK"  # slots given back
    finally:
        loop.run(host.stop(grace=0.1))


def test_the_real_scorer_sheds_at_its_edge(loop: LoopThread, repo: BuiltRepo) -> None:
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, max_in_flight=1))
    try:
        with grpc.insecure_channel(scorer.address) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            assert one(stub)[0] == "OK"
            shedder = scorer.app.shedder
            loop.run(asyncio.to_thread(shedder.enter))  # one call in flight, on the server's loop
            code, _, details = one(stub)
            assert code == "RESOURCE_EXHAUSTED"
            assert "scorer overloaded: 1 calls in flight (limit 1, --max-in-flight)" in details
            assert health_status(scorer.address) == SERVING
            loop.run(asyncio.to_thread(shedder.leave))
            assert one(stub)[0] == "OK"
        refused = REGISTRY.get_sample_value(
            "xdrec_shed_total", {"service": "scorer", "reason": "in_flight"}
        )
        assert refused is not None and refused >= 1
    finally:
        loop.run(scorer.stop(grace=0.1))


def test_encoder_and_scorer_shed_by_default_and_zero_turns_it_off(repo: BuiltRepo) -> None:
    encoder = EncoderApp(EncoderConfig(model_repo=str(repo.root)))
    scorer = ScorerApp(ScorerConfig(model_repo=str(repo.root), providers="cpu"))
    assert encoder.shedder.limit == EncoderConfig.max_in_flight == 256
    assert scorer.shedder.limit == ScorerConfig.max_in_flight == 128
    off = ScorerApp(ScorerConfig(model_repo=str(repo.root), providers="cpu", max_in_flight=0))
    off.shedder.in_flight = 10_000
    assert off.shedder.refusal() is None
