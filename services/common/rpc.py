"""What happens around every unary RPC: request id, error mapping, metrics and the access log.

One server interceptor does this for all services, so servicers stay plain business logic that
raises ``ServiceError``. For each unary call it:

* takes the request id from the ``x-request-id`` metadata (or makes one), stores it in the
  ``REQUEST_ID`` context variable (downstream calls and log lines pick it up) and returns it in the
  trailing metadata;
* answers INVALID_ARGUMENT for a body that does not parse (``tolerant_deserializer``);
* maps exceptions to gRPC statuses (``services.common.errors.status_for``), logging unexpected
  ones with their traceback;
* counts the call and observes its latency in Prometheus, and writes one access-log line.

Streaming RPCs (health Watch, reflection) pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import InvalidArgument, ServiceError, status_for
from services.common.logs import REQUEST_ID, REQUEST_ID_KEY, new_request_id
from services.common.metrics import RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger("xdrec.rpc")

QUIET_PREFIXES = ("/grpc.health.v1.Health/",)
"""Methods whose access-log lines are DEBUG instead of INFO (still counted in the metrics)."""


class MalformedRequest:
    """Stands in for a request body that could not be parsed (bad protobuf, invalid UTF-8).

    Why a stand-in and not an exception: gRPC calls the deserializer outside the handler, and an
    exception there reaches the client as UNKNOWN with a Python class name. The wrapped
    deserializer returns this instead, and the handler answers INVALID_ARGUMENT.
    """

    def __init__(self, message_type: str, problem: str) -> None:
        self.message_type = message_type
        self.problem = problem


MALFORMED_FIELD = "request"
"""The field named in the INVALID_ARGUMENT for a body that is not a valid protobuf message."""


def tolerant_deserializer(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns a ``MalformedRequest`` instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    message_type = getattr(owner, "__name__", "") or "message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, ...
            problem = "invalid UTF-8 in a string field" if "utf-8" in str(exc).lower() else ""
            return MalformedRequest(message_type, problem or "not a valid protobuf encoding")

    return deserialize


def request_id_from(metadata: Any) -> str:
    """The caller's request id from invocation metadata, or a new one (bounded to 128 chars)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return new_request_id()


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a downstream call: propagates the current request id."""
    request_id = REQUEST_ID.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else ()


class MethodMetrics:
    """One method's metric children, resolved once: ``.labels()`` hashes its label values on
    every call, which is measurable per request at a few thousand RPCs per second."""

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self.latency = RPC_LATENCY.labels(service, method)
        self._requests: dict[str, Any] = {}

    def requests(self, code_name: str) -> Any:
        counter = self._requests.get(code_name)
        if counter is None:
            counter = self._requests[code_name] = RPC_REQUESTS.labels(
                self.service, self.method, code_name
            )
        return counter


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, error mapping, metrics and access logs for every unary RPC of a server.

    Why the wrapped handler is reused per method (``_wrapped``): grpc.aio calls the interceptor
    for every RPC; building a new handler, deserializer and closures each time was a visible
    share of a small RPC's CPU in the profile. It is reused only while the inner handler is the
    same object: an inner interceptor that builds a handler per call (auth, which binds the
    call's metadata) gets a fresh wrapper per call, so nothing of one call leaks into another and
    the cache holds one entry per method. The request id is read per call from its metadata.
    """

    def __init__(self, service: str, *, access_log: bool = True) -> None:
        self.service = service
        self.access_log = access_log
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}
        self._metrics: dict[str, MethodMetrics] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler.unary_unary:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler.unary_unary, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        # Health probes arrive every second from kubelets and the ranker: log them at DEBUG.
        level = logging.DEBUG if full_method.startswith(QUIET_PREFIXES) else logging.INFO
        inner = handler.unary_unary
        metrics = self._metrics.get(method)
        if metrics is None:
            metrics = self._metrics[method] = MethodMetrics(self.service, method)
        access_log = self.access_log

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = request_id_from(context.invocation_metadata())
            REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, MalformedRequest):
                    raise InvalidArgument(
                        MALFORMED_FIELD,
                        f"the body is not a valid {request.message_type}: {request.problem}",
                    )
                return await inner(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:  # every failure becomes a precise status, never a crash
                code, message = status_for(exc)
                if not isinstance(exc, ServiceError):
                    log.exception("unexpected error in %s", method)
                elif code == grpc.StatusCode.INTERNAL:
                    log.warning("%s failed: %s", method, message, exc_info=exc.__cause__)
                await context.abort(code, message)
            finally:
                elapsed = time.perf_counter() - started
                # context.code() may hand back a raw integer instead of a StatusCode
                code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                metrics.requests(code_name).inc()
                metrics.latency.observe(elapsed)
                if access_log and log.isEnabledFor(level):
                    log.log(
                        level,
                        "rpc",
                        extra={
                            "server": self.service,
                            "method": method,
                            "code": code_name,
                            "duration_ms": round(elapsed * 1000.0, 3),
                            "request_id": request_id,
                        },
                    )

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=tolerant_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline as a ``time.monotonic()`` instant (None when the call has none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
