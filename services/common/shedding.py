"""Cheap load shedding at a server's edge: refuse before parsing when too much is in flight.

Why at the edge: an overloaded server that accepts every call queues them until their deadlines
pass and then works for callers that have gone (goodput collapses). Refusing costs least before
the request body is parsed, before the other interceptors run (request ids, metrics, auth) and
before any servicer code: the refusal is one RESOURCE_EXHAUSTED with a message that says which
limit was hit and which flag sets it, so the caller (the ranker: the popularity fallback, flagged)
can act at once.

Why an interceptor and not gRPC's ``maximum_concurrent_rpcs``: that limit counts health checks
too (an overloaded pod would fail its probes and be restarted, and the ranker would mark it
down), and its message (``Concurrent RPC limit exceeded!``) names no limit. Health and
reflection pass here untouched.

A service plugs in by giving the bootstrap a ``Shedder`` (``ServiceApp.shedder``): it says,
per call, whether to refuse (``refusal``) and counts the calls it admitted (``enter`` /
``leave``). ``InFlightLimit`` is the plain bound that the encoder and the scorer use; the ranker
adds a queue with a time budget (``services.ranker.admission``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from prometheus_client import Counter, Gauge

from services.common.auth import OPEN_PREFIXES

SHED_AT_EDGE = Counter(
    "xdrec_shed",
    "calls refused with RESOURCE_EXHAUSTED at the server's edge, before the body is parsed, by "
    "service and reason",
    ["service", "reason"],
)
IN_FLIGHT_AT_EDGE = Gauge(
    "xdrec_in_flight", "calls admitted at the server's edge and not yet answered", ["service"]
)


class Shedder(Protocol):
    """What the edge asks per call."""

    def refusal(self) -> tuple[str, str] | None:
        """(reason, message) to refuse the call now, or None to admit it."""

    def enter(self) -> None:
        """An admitted call starts running."""

    def leave(self) -> None:
        """An admitted call finished (answered, failed or cancelled)."""


class InFlightLimit:
    """At most ``limit`` calls running at once; the next ones are refused at once (no queue).

    Why no queue: the encoder and the scorer sit behind the ranker, which queues (within a
    budget) and degrades; a refused downstream call costs the ranker a popularity answer, a
    queued one costs it its deadline.
    """

    def __init__(self, service: str, limit: int, flag: str = "--max-in-flight") -> None:
        self.service = service
        self.limit = limit
        self.flag = flag
        self.in_flight = 0
        self._gauge = IN_FLIGHT_AT_EDGE.labels(service)

    def refusal(self) -> tuple[str, str] | None:
        if self.limit <= 0 or self.in_flight < self.limit:
            return None
        return (
            "in_flight",
            f"{self.service} overloaded: {self.in_flight} calls in flight (limit {self.limit}, "
            f"{self.flag}); retry later or elsewhere",
        )

    def enter(self) -> None:
        self.in_flight += 1
        self._gauge.set(self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1
        self._gauge.set(self.in_flight)


class SheddingInterceptor(grpc.aio.ServerInterceptor):
    """Refuses unary calls the ``shedder`` says no to, before anything else runs.

    Installed first (outermost): a refused call never reaches the observability, auth or
    servicer code and its body is never deserialised. Admitted calls are counted while their
    handler runs; the handler learns when the call reached Python (``arrived``) through the
    ``on_arrival`` hook, so a queue budget can count from there.
    """

    def __init__(
        self,
        service: str,
        shedder: Shedder,
        on_arrival: Callable[[float], None] | None = None,
    ) -> None:
        self.service = service
        self.shedder = shedder
        self.on_arrival = on_arrival

    def _refuse(self, reason: str, message: str) -> grpc.RpcMethodHandler:
        SHED_AT_EDGE.labels(self.service, reason).inc()

        async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        # no deserializer: the body stays bytes, never parsed
        return grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        arrived = time.monotonic()
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        refusal = self.shedder.refusal()
        if refusal is not None:
            return self._refuse(*refusal)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        shedder, on_arrival = self.shedder, self.on_arrival

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if on_arrival is not None:
                on_arrival(arrived)
            shedder.enter()
            try:
                return await inner(request, context)
            finally:
                shedder.leave()

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
