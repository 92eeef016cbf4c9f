"""The ranker's circuit breaker against a real slow-but-healthy scorer.

The scorer here is a real gRPC server on loopback that reports SERVING and answers Predict
correctly (zero scores of the right shape) after a delay the test sets: the health monitor
never sees anything wrong, only the latency does. While it is slow the breaker opens and the
ranker answers by popularity at once, flagged, without calling it; once it is fast again a probe
closes the breaker and personal answers resume, without a restart. The encoder side is the same
with a real gRPC proxy in front of the real encoder that delays Encode: while open, the answer
comes from the ranker's cached catalogue, flagged FALLBACK_ENCODER_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.server import ServiceHost
from services.common.tensors import from_proto, to_proto
from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.servers import (
    LoopThread,
    encoder_config,
    ranker_config,
    scorer_config,
    serve_scripted,
    start_host,
)


class DelayedScorer(scorer_pb2_grpc.ScorerServiceServicer):
    """SERVING, correct, and as slow as ``delay`` says."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.calls = 0

    async def Predict(self, request, context):  # noqa: N802 - gRPC method name
        self.calls += 1
        await asyncio.sleep(self.delay)
        inputs = {t.name: from_proto(t) for t in request.inputs}
        scores = np.zeros(inputs["candidates"].shape, dtype=np.float32)
        return scorer_pb2.PredictResponse(model=request.model, outputs=[to_proto("scores", scores)])


@dataclass
class Setup:
    scorer: DelayedScorer
    ranker: ServiceHost
    stub: ranker_pb2_grpc.RankerServiceStub


@pytest.fixture
def setup(loop: LoopThread, repo: BuiltRepo) -> Iterator[Setup]:
    scorer = DelayedScorer()

    server, port = loop.run(
        serve_scripted(
            lambda s: scorer_pb2_grpc.add_ScorerServiceServicer_to_server(scorer, s),
            "xdrec.scorer.v1.ScorerService",
        )
    )
    encoder = start_host(loop, EncoderApp, encoder_config(repo.root, repo.features_path))
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            encoder.address,
            f"127.0.0.1:{port}",
            breaker_slow_call_ms=150.0,
            breaker_window=3,
            breaker_min_calls=3,
            breaker_failure_ratio=1.0,
            breaker_open_ms=600.0,
        ),
    )
    channel = grpc.insecure_channel(ranker.address)
    try:
        yield Setup(scorer, ranker, ranker_pb2_grpc.RankerServiceStub(channel))
    finally:
        channel.close()
        loop.run(ranker.stop(grace=0.1))
        loop.run(encoder.stop(grace=0.1))
        loop.run(server.stop(0))


def timed(setup: Setup) -> tuple[ranker_pb2.RecommendResponse, float]:
    started = time.monotonic()
    answer = setup.stub.Recommend(ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=5)
    return answer, time.monotonic() - started


def state() -> float | None:
    return REGISTRY.get_sample_value("xdrec_ranker_breaker_state", {"dependency": "scorer"})


def test_a_slow_scorer_is_cut_off_then_probed_back(setup: Setup) -> None:
    answer, _ = timed(setup)
    assert answer.fallback == ranker_pb2.FALLBACK_NONE

    setup.scorer.delay = 0.3  # healthy, answering, slow
    for _ in range(3):
        answer, elapsed = timed(setup)
        assert answer.fallback == ranker_pb2.FALLBACK_NONE  # still answered in time...
        assert elapsed >= 0.3  # ...slowly
    assert state() == 1  # three slow calls in a row: open

    calls = setup.scorer.calls
    for _ in range(5):
        answer, elapsed = timed(setup)
        assert answer.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE
        assert len(answer.items) == 3
        assert elapsed < 0.25  # at once, not after the scorer's 300 ms
    assert setup.scorer.calls == calls  # not called while open
    assert setup.ranker.readiness.ready  # the ranker itself stays SERVING

    setup.scorer.delay = 0.0  # recovered
    time.sleep(0.7)  # the cool-down
    answer, _ = timed(setup)  # the probe
    assert answer.fallback == ranker_pb2.FALLBACK_NONE
    assert state() == 0
    assert setup.scorer.calls == calls + 1
    answer, _ = timed(setup)
    assert answer.fallback == ranker_pb2.FALLBACK_NONE


def test_a_probe_that_is_still_slow_keeps_it_open(setup: Setup) -> None:
    setup.scorer.delay = 0.3
    for _ in range(3):
        timed(setup)
    assert state() == 1
    time.sleep(0.7)
    answer, elapsed = timed(setup)  # the probe goes through and is slow
    assert answer.fallback == ranker_pb2.FALLBACK_NONE and elapsed >= 0.3
    assert state() == 1  # open again
    answer, elapsed = timed(setup)
    assert answer.fallback == ranker_pb2.FALLBACK_SCORER_UNAVAILABLE and elapsed < 0.25


class DelayingEncoderProxy(grpc.GenericRpcHandler):
    """A real gRPC server in front of the real encoder: every EncoderService call is forwarded
    byte for byte, Encode after ``delay`` seconds; health says SERVING throughout."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.delay = 0.0
        self.encodes = 0

    def service(self, handler_call_details):  # noqa: ANN001 - grpc's signature
        method = handler_call_details.method
        if not method.startswith("/xdrec.encoder.v1.EncoderService/"):
            return None
        forward = self.channel.unary_unary(method)

        async def relay(request: bytes, context) -> bytes:  # noqa: ANN001
            if method.endswith("/Encode"):
                self.encodes += 1
                await asyncio.sleep(self.delay)
            return await forward(request, timeout=context.time_remaining())

        return grpc.unary_unary_rpc_method_handler(relay)


def test_a_slow_encoder_is_cut_off_and_the_cached_catalogue_answers(
    loop: LoopThread, repo: BuiltRepo
) -> None:
    encoder = start_host(loop, EncoderApp, encoder_config(repo.root, repo.features_path))

    async def start_proxy() -> tuple[grpc.aio.Server, int, DelayingEncoderProxy]:
        proxy = DelayingEncoderProxy(grpc.aio.insecure_channel(encoder.address))
        server, port = await serve_scripted(
            lambda s: s.add_generic_rpc_handlers((proxy,)), "xdrec.encoder.v1.EncoderService"
        )
        return server, port, proxy

    server, port, proxy = loop.run(start_proxy())
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root))
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            f"127.0.0.1:{port}",
            scorer.address,
            breaker_slow_call_ms=150.0,
            breaker_window=3,
            breaker_min_calls=3,
            breaker_failure_ratio=1.0,
            breaker_open_ms=600.0,
        ),
    )
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            setup = Setup(DelayedScorer(), ranker, ranker_pb2_grpc.RankerServiceStub(channel))
            assert timed(setup)[0].fallback == ranker_pb2.FALLBACK_NONE
            proxy.delay = 0.3
            for _ in range(3):
                answer, elapsed = timed(setup)
                assert answer.fallback == ranker_pb2.FALLBACK_NONE and elapsed >= 0.3
            encodes = proxy.encodes
            answer, elapsed = timed(setup)  # open: the cached catalogue, at once
            assert answer.fallback == ranker_pb2.FALLBACK_ENCODER_UNAVAILABLE
            assert len(answer.items) == 3 and elapsed < 0.25
            assert proxy.encodes == encodes
            assert (
                REGISTRY.get_sample_value("xdrec_ranker_breaker_state", {"dependency": "encoder"})
                == 1
            )
            proxy.delay = 0.0
            time.sleep(0.7)
            assert timed(setup)[0].fallback == ranker_pb2.FALLBACK_NONE  # the probe closes it
            assert proxy.encodes == encodes + 1
    finally:
        loop.run(ranker.stop(grace=0.1))
        loop.run(scorer.stop(grace=0.1))
        loop.run(server.stop(0))
        loop.run(proxy.channel.close())
        loop.run(encoder.stop(grace=0.1))
