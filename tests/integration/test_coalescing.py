"""Coalescing never changes a result: a coalesced and an uncoalesced ranker, on real servers and
real ports, answer many concurrent Recommends (warm, cold and unknown users, with and without
candidates, exclusions, different k, bad requests) with the same items, scores, statuses and
fallback flags; one bad request in a batch fails alone; short deadlines expire alone.

Which batches form must not depend on how fast the test's client threads send on a loaded
machine: the coalescing ranker reaches the encoder through a real gRPC proxy (``EncoderGate``)
that, for the concurrent tests, holds Encode and EncodeBatch until the ranker has admitted every
request, so all of them are in the coalescer before any batch returns. The dispatch policy tests
(who goes at once, who waits, for how long) hold and release single calls through the same gate."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.server import ServiceHost
from services.ranker.app import RankerApp
from tests.fixtures.model_repo import MODEL_NAME, BuiltRepo
from tests.fixtures.rpc_counts import RpcCounter, coalesced_batches, ranker_in_flight
from tests.fixtures.servers import (
    LOOPBACK_HOST,
    LoopThread,
    Stack,
    ranker_config,
    serve_scripted,
    start_host,
    start_stack,
)

pytestmark = pytest.mark.integration

SCORE_TOLERANCE = 1e-6
"""Stacked rows are padded: float32 sums over a longer (masked) axis may round differently."""

USERS = ("warm", "cold", "tgt_only", "heavy", "stale", "nobody")
CANDIDATES = ((), ("t02", "t05", "nope", "t07", "t09", "t11", "t05"), ("t13",), ("t01", "t19"))
EXCLUDED = ((), ("t09", "t04", "x"))
KS = (1, 3, 10, 20)


def request_mix() -> list[ranker_pb2.RecommendRequest]:
    """Every combination of user, candidates, exclusions and k, requests pinned to either
    version, and requests that fail at the encoder (an empty candidate id, a recent event of a
    foreign domain)."""
    requests = [
        ranker_pb2.RecommendRequest(
            user_id=user,
            k=k,
            candidate_item_ids=candidates,
            exclude_item_ids=excluded,
            include_seen=(k == 20),
        )
        for user, candidates, excluded, k in itertools.product(USERS, CANDIDATES, EXCLUDED, KS)
    ]
    # Pinned versions: coalesced only with requests pinning the same version.
    requests += [
        ranker_pb2.RecommendRequest(
            user_id=user, k=5, model=tensor_pb2.ModelRef(name=MODEL_NAME, version=version)
        )
        for user, version in itertools.product(USERS, ("1", "2"))
    ]
    bad = [
        ranker_pb2.RecommendRequest(user_id="warm", k=3, candidate_item_ids=["t01", ""]),
        ranker_pb2.RecommendRequest(
            user_id="cold",
            k=3,
            recent_events=[tensor_pb2.Event(item_id="t03", domain="elsewhere")],
        ),
    ]
    # Spread the bad ones through the mix so that they land inside batches.
    for i, request in enumerate(bad):
        requests.insert(len(requests) * (i + 1) // 3, request)
    return requests


@dataclass(frozen=True)
class Answer:
    """What a caller sees of one Recommend."""

    code: grpc.StatusCode
    details: str = ""
    response: ranker_pb2.RecommendResponse | None = None


def outcome(call: grpc.Future) -> Answer:
    try:
        return Answer(grpc.StatusCode.OK, response=call.result())
    except grpc.RpcError as exc:
        return Answer(exc.code(), exc.details() or "")


WAIT_TIMEOUT_S = 20.0
"""How long a test waits for the ranker to admit or send something (a loaded 2-core machine)."""


def wait_until(done: Callable[[], bool], what: Callable[[], str]) -> None:
    give_up = time.monotonic() + WAIT_TIMEOUT_S
    while not done():
        assert time.monotonic() < give_up, f"{what()} after {WAIT_TIMEOUT_S:.0f} s"
        time.sleep(0.005)


@dataclass(frozen=True)
class GateCall:
    """An Encode or EncodeBatch that reached the gate."""

    method: str
    requests: int
    at: float  # time.monotonic()


class EncoderGate(grpc.GenericRpcHandler):
    """A real gRPC server in front of the real encoder: every EncoderService call is forwarded
    byte for byte; Encode and EncodeBatch are logged (``calls``) and, while holding, held until
    released (``release``), so a test decides when the ranker's encoder calls return."""

    def __init__(self, loop: LoopThread, encoder: str) -> None:
        self.loop = loop
        self.channel = loop.run(self._channel(encoder))
        self.calls: list[GateCall] = []
        self._holding = False
        self._held: collections.deque[asyncio.Future[None]] = collections.deque()
        self.server, port = loop.run(
            serve_scripted(
                lambda s: s.add_generic_rpc_handlers((self,)), "xdrec.encoder.v1.EncoderService"
            )
        )
        self.address = f"{LOOPBACK_HOST}:{port}"

    @staticmethod
    async def _channel(address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address)

    def service(self, handler_call_details):  # noqa: ANN001 - grpc's signature
        method = handler_call_details.method
        if not method.startswith("/xdrec.encoder.v1.EncoderService/"):
            return None
        forward = self.channel.unary_unary(method)
        name = method.rsplit("/", 1)[1]

        async def relay(request: bytes, context) -> bytes:  # noqa: ANN001
            if name in ("Encode", "EncodeBatch"):
                count = (
                    len(encoder_pb2.EncodeBatchRequest.FromString(request).requests)
                    if name == "EncodeBatch"
                    else 1
                )
                self.calls.append(GateCall(name, count, time.monotonic()))
                if self._holding:
                    waiter = asyncio.get_running_loop().create_future()
                    self._held.append(waiter)
                    await waiter
            return await forward(request, timeout=context.time_remaining())

        return grpc.unary_unary_rpc_method_handler(relay)

    def hold(self) -> None:
        """Encoder calls from now on wait for ``release``."""

        async def hold() -> None:
            self._holding = True

        self.loop.run(hold())

    def release(self, count: int | None = None) -> None:
        """Lets the ``count`` oldest held calls through; all, and stops holding, when None."""

        async def release() -> None:
            if count is None:
                self._holding = False
            for _ in range(len(self._held) if count is None else count):
                waiter = self._held.popleft()
                if not waiter.done():  # its call may have been cancelled meanwhile
                    waiter.set_result(None)

        self.loop.run(release())

    def wait_calls(self, count: int) -> list[GateCall]:
        """The calls logged, once there are at least ``count``."""
        wait_until(lambda: len(self.calls) >= count, lambda: f"{len(self.calls)} encoder calls")
        return list(self.calls)

    @contextlib.contextmanager
    def holding(self, admitted: int) -> Iterator[None]:
        """Holds encoder calls during the block and after it until the ranker has admitted
        ``admitted`` Recommends (``xdrec_ranker_in_flight``): a Recommend is in the coalescer's
        queue, or in a held batch, in the same event-loop step in which it is admitted, so when
        the gate opens every request has been queued and batches formed by count, not by
        timing."""
        self.hold()
        try:
            yield
            wait_admitted(admitted)
        finally:
            self.release()

    def close(self) -> None:
        self.loop.run(self.server.stop(grace=0.1))
        self.loop.run(self.channel.close())


def wait_admitted(count: int) -> None:
    wait_until(
        lambda: ranker_in_flight() >= count,
        lambda: f"the ranker admitted {ranker_in_flight():.0f} of {count} Recommends",
    )


def concurrently(
    stub: ranker_pb2_grpc.RankerServiceStub,
    requests: list[ranker_pb2.RecommendRequest],
    gate: EncoderGate | None = None,
) -> list[Answer]:
    """All ``requests`` at once; with ``gate``, none reaches the encoder before all are in."""
    with gate.holding(len(requests)) if gate is not None else contextlib.nullcontext():
        calls = [stub.Recommend.future(r, timeout=10) for r in requests]
    return [outcome(c) for c in calls]


def one_by_one(
    stub: ranker_pb2_grpc.RankerServiceStub, requests: list[ranker_pb2.RecommendRequest]
) -> list[Answer]:
    return [outcome(stub.Recommend.future(r, timeout=10)) for r in requests]


def assert_same(got: Answer, want: Answer, request: ranker_pb2.RecommendRequest) -> None:
    where = f"{request.user_id} k={request.k} {list(request.candidate_item_ids)}"
    assert got.code == want.code, f"{where}: {got.code} {got.details} != {want.code}"
    if want.response is None:
        assert got.details == want.details, where
        return
    a, b = got.response, want.response
    assert a is not None
    assert [i.item_id for i in a.items] == [i.item_id for i in b.items], where
    assert [i.rank for i in a.items] == [i.rank for i in b.items], where
    assert [i.title for i in a.items] == [i.title for i in b.items], where
    for x, y in zip(a.items, b.items, strict=True):
        assert abs(x.score - y.score) <= SCORE_TOLERANCE, f"{where}: {x} vs {y}"
    assert (a.fallback, a.user_status, a.model) == (b.fallback, b.user_status, b.model), where
    assert list(a.unknown_candidate_ids) == list(b.unknown_candidate_ids), where


@dataclass
class Rankers:
    coalesced: ranker_pb2_grpc.RankerServiceStub
    plain: ranker_pb2_grpc.RankerServiceStub
    gate: EncoderGate


def start_rankers(loop: LoopThread, stack: Stack) -> tuple[list[ServiceHost], Rankers]:
    """A coalescing ranker, reaching the encoder through an ``EncoderGate``, and a plain one
    on the encoder directly, both on the stack's scorer."""
    gate = EncoderGate(loop, stack.encoder.address)
    hosts = [
        start_host(
            loop,
            RankerApp,
            ranker_config(
                encoder,
                stack.scorer.address,
                coalesce=coalesce,
                # Batches are closed by count (max_batch) or when the held ones return, never
                # by this timer, however long the gate holds.
                coalesce_max_wait_ms=10_000.0,
                coalesce_max_batch=16,
                max_in_flight=0,
                # Encode calls held at the gate are slow on purpose: no breaker judges them.
                breaker_min_calls=0,
                # One event loop serves every test server: a burst of ~200 Recommends can delay
                # the 0.2 s health checks enough to flap readiness; checked once at start here.
                health_interval_s=30.0,
            ),
        )
        for coalesce, encoder in ((True, gate.address), (False, stack.encoder.address))
    ]
    stubs = [ranker_pb2_grpc.RankerServiceStub(stack.channel(h.address)) for h in hosts]
    return hosts, Rankers(coalesced=stubs[0], plain=stubs[1], gate=gate)


def stop_rankers(loop: LoopThread, hosts: list[ServiceHost], rankers: Rankers) -> None:
    for host in hosts:
        loop.run(host.stop(grace=0.1))
    rankers.gate.close()


@pytest.fixture
def rankers(loop: LoopThread, stack: Stack) -> Iterator[Rankers]:
    hosts, stubs = start_rankers(loop, stack)
    yield stubs
    stop_rankers(loop, hosts, stubs)


def test_coalescing_never_changes_a_result(rankers: Rankers) -> None:
    requests = request_mix()
    want = one_by_one(rankers.plain, requests)
    failed = collections.Counter(a.details for a in want if a.code != grpc.StatusCode.OK)
    assert sum(failed.values()) == 2, failed
    assert {a.code for a in want} == {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    fallbacks = {a.response.fallback for a in want if a.response is not None}
    assert {a.response.model.version for a in want if a.response is not None} == {"1", "2"}
    assert {ranker_pb2.FALLBACK_NONE, ranker_pb2.FALLBACK_POPULARITY} <= fallbacks

    batches_before, members_before = coalesced_batches()
    with RpcCounter() as counted:
        got = concurrently(rankers.coalesced, requests, rankers.gate)
    after = coalesced_batches()
    batches, members = after[0] - batches_before, after[1] - members_before
    for g, w, request in zip(got, want, requests, strict=True):
        assert_same(g, w, request)
    # The load really was coalesced: fewer downstream calls than Recommends.
    assert members == len(requests) and batches < len(requests) / 2
    encodes = counted["Encode"] + counted["EncodeBatch"]
    assert counted["EncodeBatch"] >= 1 and encodes == batches
    assert counted["Predict"] <= encodes


def test_a_bad_request_fails_alone_and_the_batch_still_answers(rankers: Rankers) -> None:
    good = [ranker_pb2.RecommendRequest(user_id=u, k=5) for u in ("warm", "cold") * 8]
    bad = ranker_pb2.RecommendRequest(user_id="warm", k=5, candidate_item_ids=["t01", ""])
    mixed = [*good[:8], bad, *good[8:]]
    want = one_by_one(rankers.plain, mixed)
    with RpcCounter() as counted:
        got = concurrently(rankers.coalesced, mixed, rankers.gate)
    assert counted["EncodeBatch"] >= 1
    assert got[8].code == grpc.StatusCode.INVALID_ARGUMENT
    assert "candidate_item_ids[1]" in got[8].details
    for g, w, request in zip(got, want, mixed, strict=True):
        assert_same(g, w, request)


def test_short_deadlines_expire_alone(rankers: Rankers) -> None:
    """Requests with a deadline too short to be served get DEADLINE_EXCEEDED; the ones that
    share their batches are answered as if alone."""
    ask = ranker_pb2.RecommendRequest(user_id="warm", k=5)
    want = rankers.plain.Recommend(ask, timeout=10)
    calls = []
    for i in range(48):
        timeout = 0.0005 if i % 4 == 0 else 10
        calls.append((timeout, rankers.coalesced.Recommend.future(ask, timeout=timeout)))
    for timeout, call in calls:
        answer = outcome(call)
        if timeout < 1:
            assert answer.code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            assert_same(answer, Answer(grpc.StatusCode.OK, response=want), ask)


def test_scorer_down_each_member_takes_its_own_fallback(loop: LoopThread, repo: BuiltRepo) -> None:
    """With the scorer gone, every member of a batch gets the flagged popularity answer that
    the uncoalesced ranker gives, and unknown users keep FALLBACK_POPULARITY."""
    stack = start_stack(loop, repo.root, repo.features_path)
    hosts, rankers = start_rankers(loop, stack)
    try:
        loop.run(stack.scorer.stop(grace=0.1))
        requests = [
            ranker_pb2.RecommendRequest(user_id=u, k=4, exclude_item_ids=["t05"])
            for u in ("warm", "cold", "heavy", "nobody") * 6
        ]
        want = one_by_one(rankers.plain, requests)
        got = concurrently(rankers.coalesced, requests)
        for g, w, request in zip(got, want, requests, strict=True):
            assert_same(g, w, request)
        flags = {a.response.fallback for a in got if a.response is not None}
        assert flags == {ranker_pb2.FALLBACK_SCORER_UNAVAILABLE, ranker_pb2.FALLBACK_POPULARITY}
    finally:
        stop_rankers(loop, hosts, rankers)
        stack.close()


def gated_ranker(
    loop: LoopThread, stack: Stack, gate: EncoderGate, **coalesce: float
) -> tuple[ServiceHost, ranker_pb2_grpc.RankerServiceStub]:
    """A coalescing ranker reaching the encoder through ``gate``, with ``coalesce_*`` overrides."""
    host = start_host(
        loop,
        RankerApp,
        ranker_config(
            gate.address,
            stack.scorer.address,
            max_in_flight=0,
            breaker_min_calls=0,
            health_interval_s=30.0,
            **{f"coalesce_{name}": value for name, value in coalesce.items()},
        ),
    )
    return host, ranker_pb2_grpc.RankerServiceStub(stack.channel(host.address))


ASKS = [ranker_pb2.RecommendRequest(user_id=u, k=5) for u in ("warm", "cold", "heavy")]


def test_a_newcomer_goes_at_once_unless_the_encoder_stage_is_busy(
    loop: LoopThread, stack: Stack, rankers: Rankers
) -> None:
    """With --coalesce-busy-batches 2, a second request goes while the first one's Encode is
    still out (no wait for company at moderate load); a third, with two calls out, waits - here
    for up to 10 s - and goes as soon as one of them returns."""
    want = one_by_one(rankers.plain, ASKS)
    gate = rankers.gate
    host, stub = gated_ranker(
        loop, stack, gate, busy_batches=2, busy_recommends=0, max_wait_ms=10_000.0
    )
    seen = len(gate.calls)
    gate.hold()
    try:
        first = stub.Recommend.future(ASKS[0], timeout=30)
        gate.wait_calls(seen + 1)
        second = stub.Recommend.future(ASKS[1], timeout=30)
        calls = gate.wait_calls(seen + 2)  # the first is still held: two calls out at once
        assert [(c.method, c.requests) for c in calls[seen:]] == [("Encode", 1)] * 2
        third = stub.Recommend.future(ASKS[2], timeout=30)
        wait_admitted(3)  # it is in the coalescer now
        time.sleep(0.3)
        assert len(gate.calls) == seen + 2, "a request went while the encoder stage was busy"
        released = time.monotonic()
        gate.release(1)
        calls = gate.wait_calls(seen + 3)
        assert (calls[-1].method, calls[-1].requests) == ("Encode", 1)
        assert calls[-1].at - released < 5.0, "it waited for its max wait, not for the return"
    finally:
        gate.release()
        loop.run(host.stop(grace=0.1))
    for call, w, request in zip((first, second, third), want, ASKS, strict=True):
        assert_same(outcome(call), w, request)


def test_a_waiting_request_waits_no_longer_than_max_wait(
    loop: LoopThread, stack: Stack, rankers: Rankers
) -> None:
    """While the encoder stage is busy (--coalesce-busy-batches 1, the one call held), newcomers
    go on their own timer: not before --coalesce-max-wait-ms (250) from their arrival, not
    after the held call returns."""
    want = one_by_one(rankers.plain, ASKS)
    gate = rankers.gate
    host, stub = gated_ranker(
        loop, stack, gate, busy_batches=1, busy_recommends=0, max_wait_ms=250.0
    )
    seen = len(gate.calls)
    gate.hold()
    try:
        first = stub.Recommend.future(ASKS[0], timeout=30)
        gate.wait_calls(seen + 1)
        sent = time.monotonic()
        others = [stub.Recommend.future(r, timeout=30) for r in ASKS[1:]]
        wait_until(
            lambda: sum(c.requests for c in gate.calls[seen + 1 :]) == 2,
            lambda: f"encoder calls {gate.calls[seen:]}",
        )
        waited = gate.calls[seen + 1].at - sent
        assert 0.24 <= waited < 5.0, waited
    finally:
        gate.release()
        loop.run(host.stop(grace=0.1))
    for call, w, request in zip((first, *others), want, ASKS, strict=True):
        assert_same(outcome(call), w, request)


def test_a_saturated_ranker_waits_for_company_behind_one_call(
    loop: LoopThread, stack: Stack, rankers: Rankers
) -> None:
    """With --coalesce-busy-recommends 2 (and a busy-batches mark out of reach), one encoder
    call out is enough to make a newcomer wait once the ranker holds 2 Recommends; it goes as
    soon as that call returns."""
    want = one_by_one(rankers.plain, ASKS[:2])
    gate = rankers.gate
    host, stub = gated_ranker(
        loop, stack, gate, busy_batches=8, busy_recommends=2, max_wait_ms=10_000.0
    )
    seen = len(gate.calls)
    gate.hold()
    try:
        first = stub.Recommend.future(ASKS[0], timeout=30)
        gate.wait_calls(seen + 1)
        second = stub.Recommend.future(ASKS[1], timeout=30)
        wait_admitted(2)
        time.sleep(0.3)
        assert len(gate.calls) == seen + 1, "a request went while the ranker was saturated"
        gate.release(1)
        calls = gate.wait_calls(seen + 2)
        assert (calls[-1].method, calls[-1].requests) == ("Encode", 1)
    finally:
        gate.release()
        loop.run(host.stop(grace=0.1))
    for call, w, request in zip((first, second), want, ASKS, strict=False):
        assert_same(outcome(call), w, request)
