"""Who is calling: bearer tokens, verified client certificates, and the interceptor that checks them.

Why at the server's edge: authentication is the same for every service and every method, so one
interceptor decides before any servicer code runs; servicers that need to know *who* called (the
model control plane admits only admins) ask ``caller_identity(context)``.

A call is admitted when

* its method is open: health checks (kubelet and load-balancer probes) and server reflection; or
* the transport verified a client certificate (mutual TLS; the server requires one only when
  ``--tls-client-auth`` is on) whose identity is allowed (``--tls-allowed-clients``, empty = any
  certificate signed by ``--tls-ca``); or
* it carries ``authorization: Bearer <token>`` with a token from ``--auth-token-file``.

Otherwise it fails with UNAUTHENTICATED (no usable credential) or PERMISSION_DENIED (a verified
certificate that is not on the allow list), before the servicer runs.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("xdrec.auth")

AUTHORIZATION_KEY = "authorization"
BEARER = "bearer "
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods every caller may use: probes must work without credentials."""
TOKEN_RELOAD_INTERVAL_S = 1.0
"""How often the token file's modification time is checked (mounted Secrets rotate in place)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: how it proved who it is and its name."""

    method: str
    """``cert`` (verified client certificate) or ``token`` (bearer token)."""
    name: str
    """Certificate: its first DNS SAN, else its common name. Token: the principal in the file."""

    def __str__(self) -> str:
        return f"{self.method}:{self.name}"


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """Names of the peer's verified certificate (DNS/URI SANs, then the CN); [] without one."""
    auth = context.auth_context() or {}
    names = [v.decode() for v in auth.get("x509_subject_alternative_name", ())]
    names += [v.decode() for v in auth.get("x509_common_name", ())]
    return names


def caller_identity(context: grpc.aio.ServicerContext) -> Caller | None:
    """Who made the current call: the client certificate's identity or the token's principal.

    None for an anonymous caller (plaintext, or TLS without a client certificate and no token).
    Servicers call this to authorise privileged operations (e.g. an admin allow list).
    """
    caller = _CALLER.get()
    if caller is not None:
        return caller
    names = certificate_names(context)
    return Caller("cert", names[0]) if names else None


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """``token`` or ``principal token`` per line (``#`` comments) -> {token: principal}."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1:
            principal, token = f"token-{number}", parts[0]
        elif len(parts) == 2:
            principal, token = parts
        else:
            raise ValueError(
                f"--auth-token-file {source!r} line {number}: expected 'TOKEN' or 'PRINCIPAL TOKEN'"
            )
        if len(token) < 16:
            raise ValueError(
                f"--auth-token-file {source!r} line {number}: token shorter than 16 characters"
            )
        tokens[token] = principal
    if not tokens:
        raise ValueError(f"--auth-token-file {source!r} holds no token")
    return tokens


class TokenFile:
    """Bearer tokens read from a file (a mounted Secret), re-read when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime = -1.0
        self._checked = 0.0
        self._tokens: dict[bytes, str] = {}
        self._load()

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
            text = Path(self.path).read_text()
        except OSError as exc:
            raise ValueError(
                f"--auth-token-file: cannot read {self.path!r} ({exc.strerror or exc})"
            ) from None
        self._tokens = {t.encode(): p for t, p in parse_tokens(text, self.path).items()}
        self._mtime = stat.st_mtime

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < TOKEN_RELOAD_INTERVAL_S:
            return
        self._checked = now
        try:
            if os.stat(self.path).st_mtime != self._mtime:
                self._load()
                log.info("bearer tokens reloaded", extra={"count": len(self._tokens)})
        except ValueError as exc:  # keep the last good tokens; a half-written file is transient
            log.warning("keeping the previous bearer tokens: %s", exc)
        except OSError:
            pass

    def principal(self, presented: str) -> str | None:
        """The principal of ``presented`` (None if unknown); compares in constant time."""
        self._refresh()
        candidate = presented.encode()
        found = None
        for token, principal in self._tokens.items():  # no early exit: timing says nothing
            if hmac.compare_digest(token, candidate):
                found = principal
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    for key, value in metadata or ():
        is_bearer = isinstance(value, str) and value[: len(BEARER)].lower() == BEARER
        if key == AUTHORIZATION_KEY and is_bearer:
            return value[len(BEARER) :].strip()
    return None


@dataclass(frozen=True)
class AuthPolicy:
    """What the server accepts besides open methods."""

    tokens: TokenFile | None = None
    allowed_clients: frozenset[str] = frozenset()
    """Certificate names admitted; empty = any verified client certificate."""

    @property
    def active(self) -> bool:
        return self.tokens is not None or bool(self.allowed_clients)

    def authenticate(self, context: grpc.aio.ServicerContext, metadata: Any) -> Caller:
        """The caller, or a ``_Denied`` with the status to return."""
        names = certificate_names(context)
        if names and (not self.allowed_clients or self.allowed_clients.intersection(names)):
            return Caller("cert", names[0])
        token = bearer_token(metadata)
        if token and self.tokens is not None:
            principal = self.tokens.principal(token)
            if principal is not None:
                return Caller("token", principal)
        if names:
            raise _Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"client certificate {names[0]!r} is not in --tls-allowed-clients",
            )
        if token and self.tokens is not None:
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        how = "a client certificate"
        if self.tokens is not None:
            how = "'authorization: Bearer <token>' metadata or a client certificate"
        raise _Denied(grpc.StatusCode.UNAUTHENTICATED, f"credentials required: send {how}")


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def auth_policy(token_file: str, allowed_clients: str) -> AuthPolicy:
    """Builds the policy from the flag values (raises ValueError naming the flag)."""
    tokens = TokenFile(token_file) if token_file else None
    allowed = frozenset(n.strip() for n in allowed_clients.split(",") if n.strip())
    return AuthPolicy(tokens=tokens, allowed_clients=allowed)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits a call only with a verified certificate or a valid token (open methods aside)."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        policy = self.policy
        if handler.unary_unary is None:  # every protected API is unary: refuse anything else
            return _refuse_stream(handler)
        inner = handler.unary_unary

        async def authenticated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                caller = policy.authenticate(context, metadata)
            except _Denied as denied:
                await context.abort(denied.code, denied.message)
            _CALLER.set(caller)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _refuse_stream(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "streaming methods need no-auth mode")

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
