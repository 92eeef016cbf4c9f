"""Service errors that carry their gRPC status code, and the mapping of everything else.

Why exceptions with a code: validation happens deep inside plain Python functions (unit-tested
without gRPC) that cannot call ``context.abort``. They raise one of these; the RPC wrapper in
``services.common.rpc`` turns it into the status and message the caller sees. Anything that is not
a ``ServiceError`` becomes INTERNAL with a generic message (the traceback goes to the log), so no
exception ever reaches the gRPC runtime as UNKNOWN or takes a server down.
"""

from __future__ import annotations

import re

import grpc

from services.common.tensors import TensorError


class ServiceError(Exception):
    """An error with the gRPC status code the client should receive."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed; the message names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Unauthenticated(ServiceError):
    """The call carries no credentials where the operation needs them."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller's credentials do not allow the operation."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(ServiceError):
    """The operation exists in the protocol but is switched off on this server."""

    code = grpc.StatusCode.UNIMPLEMENTED


class NotFound(ServiceError):
    """An unknown model, version or other named resource."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    """The request is too large (elements, candidates, k) or a queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The service (or a service it depends on) is not ready; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    """The caller's deadline ran out before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the operation (e.g. a broken model version)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(ServiceError):
    """A server-side failure (e.g. ONNX Runtime rejected the inputs at run time)."""

    code = grpc.StatusCode.INTERNAL


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s'\"()\[\],;]+")
PATH_PLACEHOLDER = "<path>"


def redact_paths(message: str) -> str:
    """Replaces absolute file paths in ``message`` with ``<path>``.

    Why: messages from the repository, the file system or ONNX Runtime name files by their
    absolute path (and staging files carry the process id); a client must learn neither the
    server's layout nor its pid. The full text stays in the server log.
    """
    return _ABSOLUTE_PATH.sub(PATH_PLACEHOLDER, message)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message the client receives for ``exc`` (paths redacted)."""
    if isinstance(exc, ServiceError):
        return exc.code, redact_paths(exc.message)
    if isinstance(exc, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT, redact_paths(str(exc))
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class Relayed(ServiceError):
    """An error a downstream service returned, passed on with its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
