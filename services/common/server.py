"""Server bootstrap shared by the three services: health, reflection, metrics, graceful shutdown.

Why one bootstrap: the operational contract (docs/architecture.md) is the same for every service
- ``grpc.health.v1`` with a per-service status that stays NOT_SERVING until the service has
loaded and warmed up, the overall status ``""`` following it, server reflection, Prometheus on its
own port, a grace period on SIGTERM - so it is written once. A service plugs in as a
``ServiceApp``: it registers its servicers, loads (``start``) and releases (``stop``) resources.

``ServiceHost`` splits the life cycle into ``start`` (bind, serve health as NOT_SERVING),
``load`` (the app loads and reports ready) and ``stop``, so tests can observe each state;
``serve`` strings them together for a real process and handles the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.common.auth import AuthInterceptor, AuthPolicy, auth_policy
from services.common.config import ServerConfig
from services.common.endpoints import dial_target
from services.common.errors import Unavailable
from services.common.metrics import READY, MetricsEndpoint, start_metrics_endpoint
from services.common.rpc import ObservabilityInterceptor
from services.common.shedding import SheddingInterceptor

log = logging.getLogger("xdrec.server")

OVERALL = ""
"""Health service name of the server as a whole; follows the service's own status."""


class Readiness:
    """The service's health status, shared by the health servicer and the servicers.

    Servicers call ``require()`` first so that a request arriving before the service is ready
    gets UNAVAILABLE with the reason, not a half-initialised answer.
    """

    def __init__(
        self, health: health_aio.HealthServicer, service_names: Sequence[str], label: str
    ) -> None:
        self._health = health
        self._names = (*service_names, OVERALL)
        self._label = label
        self._ready = False
        self._reason = "starting"
        self._closing = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason

    async def set(self, ready: bool, reason: str = "") -> None:
        """Switches every health name of this service to SERVING or NOT_SERVING."""
        if self._closing:  # once draining, the status stays NOT_SERVING
            return
        changed = ready != self._ready
        self._ready = ready
        self._reason = "" if ready else (reason or "not ready")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self._health.set(name, status)
        READY.labels(self._label).set(1 if ready else 0)
        if changed:
            log.info(
                "health status changed",
                extra={"server": self._label, "serving": ready, "reason": self._reason},
            )

    async def set_component(self, name: str, up: bool) -> None:
        """Reports one part the service answers around (the encoder's feature store) under its
        own health name, leaving the service's readiness alone: a shared dependency that is
        down must not take every replica out of rotation while they still answer (degraded)."""
        if self._closing:
            return
        await self._health.set(
            name,
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING,
        )

    def require(self) -> None:
        """Raises UNAVAILABLE (with the reason) unless the service is ready."""
        if not self._ready:
            raise Unavailable(f"{self._label} is not ready: {self._reason}")

    async def shutting_down(self) -> None:
        """Reports NOT_SERVING for good so load balancers drain this instance."""
        self._closing = True
        self._ready = False
        self._reason = "shutting down"
        READY.labels(self._label).set(0)
        await self._health.enter_graceful_shutdown()


class ServiceApp(Protocol):
    """What a service plugs into the bootstrap."""

    name: str
    """Short name used in logs and metrics ("encoder", "scorer", "ranker")."""
    health_names: tuple[str, ...]
    """Fully qualified gRPC service names: health status names and reflection entries."""

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        """Adds the servicers to ``server``; called before the server starts.

        An app may also define ``shedder`` (``services.common.shedding.Shedder``): the bootstrap
        then refuses calls it says no to at the edge, before parsing (RESOURCE_EXHAUSTED), and
        ``on_arrival`` (called in the admitted call's task with the instant it reached Python).

        An app may also define ``max_receive_bytes`` (int): the largest request message the
        transport accepts, when it must be below ``--max-message-mb`` (the scorer: its request
        byte limit, so an oversized body is refused before it is buffered and parsed)."""

    async def start(self, readiness: Readiness) -> None:
        """Loads and warms up, then calls ``readiness.set(True)`` (or keeps it updated)."""

    async def stop(self) -> None:
        """Releases resources after the server has stopped."""


@dataclass(frozen=True)
class TransportSecurity:
    """What ``ServerConfig`` asks for, checked: credentials per port and the auth policy."""

    credentials: grpc.ServerCredentials | None
    """Main port; None = plaintext."""
    mtls_credentials: grpc.ServerCredentials | None
    """``--mtls-port``; None = no such port."""
    policy: AuthPolicy


def transport_security(config: ServerConfig) -> TransportSecurity:
    """The credentials and the auth policy of ``config``.

    Raises ValueError naming the flag to fix (unreadable file, key without certificate, ...).
    """
    credentials = config.tls.server_credentials()
    policy = auth_policy(config.auth_token_file, config.allowed_client_names)
    mtls_credentials = None
    if config.mtls_port:
        if not (config.tls.enabled and config.tls_ca):
            raise ValueError("--mtls-port needs --tls-cert, --tls-key and --tls-ca")
        mtls_credentials = config.mtls.server_credentials()
    if policy.allowed_clients and not (config.tls_client_auth or config.mtls_port):
        raise ValueError("--tls-allowed-clients needs --tls-client-auth or --mtls-port")
    return TransportSecurity(credentials, mtls_credentials, policy)


class ServiceHost:
    """Runs one ``ServiceApp`` on a grpc.aio server with health, reflection and metrics."""

    def __init__(self, app: ServiceApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.mtls_port = 0
        self._metrics: MetricsEndpoint | None = None
        self._health = health_aio.HealthServicer()
        self.readiness = Readiness(self._health, app.health_names, app.name)

    @property
    def address(self) -> str:
        """``host:port`` a local client can dial."""
        return dial_target(self.config.host, self.port)

    async def start(self) -> int:
        """Binds the port and starts serving health (NOT_SERVING) and reflection; returns the port.

        Certificates and the token file are read first: a wrong path fails start-up with a
        ValueError naming the flag, before anything listens.
        """
        security = transport_security(self.config)
        policy = security.policy
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ObservabilityInterceptor(self.app.name, access_log=self.config.access_log)
        ]
        if policy.active:  # inside the observability one: refusals are counted and logged
            interceptors.append(AuthInterceptor(policy))
        shedder = getattr(self.app, "shedder", None)
        if shedder is not None:  # outermost: a refused call costs no parsing, no logging
            on_arrival = getattr(self.app, "on_arrival", None)
            interceptors.insert(0, SheddingInterceptor(self.app.name, shedder, on_arrival))
        max_bytes = self.config.max_message_mb * 1024 * 1024
        receive_bytes = min(getattr(self.app, "max_receive_bytes", 0) or max_bytes, max_bytes)
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", receive_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs or None,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.app.register(server, self.readiness)
        reflection.enable_server_reflection(
            (
                *self.app.health_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        bind = f"{self.config.host}:{self.config.port}"
        if security.credentials is None:
            self.port = server.add_insecure_port(bind)
        else:
            self.port = server.add_secure_port(bind, security.credentials)
        if self.port == 0:
            raise OSError(f"could not bind {self.config.host}:{self.config.port}")
        if security.mtls_credentials is not None:
            self.mtls_port = server.add_secure_port(
                f"{self.config.host}:{self.config.mtls_port}", security.mtls_credentials
            )
            if self.mtls_port == 0:
                raise OSError(f"could not bind {self.config.host}:{self.config.mtls_port}")
        await self.readiness.set(False, "loading")
        await server.start()
        self._server = server
        if self.config.health_port:
            await self._start_health_server()
        self._metrics = start_metrics_endpoint(self.config.metrics_port, self.config.host)
        log.info(
            "listening",
            extra={
                "server": self.app.name,
                "port": self.port,
                "host": self.config.host,
                "transport": self.config.tls.describe(),
                "auth": "tokens" if policy.tokens is not None else "transport",
                "health_port": self.health_port or None,
                "mtls_port": self.mtls_port or None,
            },
        )
        return self.port

    async def _start_health_server(self) -> None:
        """A plaintext port with grpc.health.v1 only: the kubelet's gRPC probe cannot do TLS.

        It shares the health servicer, so it reports exactly what the main port reports, and
        it exposes nothing else (no reflection, no service API).
        """
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, health_server)
        self.health_port = health_server.add_insecure_port(
            f"{self.config.host}:{self.config.health_port}"
        )
        if self.health_port == 0:
            raise OSError(f"could not bind {self.config.host}:{self.config.health_port}")
        await health_server.start()
        self._health_server = health_server

    async def load(self) -> None:
        """Lets the app load and warm up; it reports SERVING itself when ready."""
        await self.app.start(self.readiness)

    async def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, in-flight RPCs get ``grace`` seconds, then resources are freed."""
        grace = self.config.grace_period_s if grace is None else grace
        await self.readiness.shutting_down()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        with contextlib.suppress(Exception):
            await self.app.stop()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        log.info("stopped", extra={"server": self.app.name})


async def serve(app: ServiceApp, config: ServerConfig) -> int:
    """Runs ``app`` until SIGTERM/SIGINT; returns the process exit code (0 on a clean stop)."""
    host = ServiceHost(app, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    loader = asyncio.create_task(host.load())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({loader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if loader.done() and loader.exception() is not None:
        exc = loader.exception()
        log.error(
            "start-up failed: %s",
            exc,
            exc_info=exc,
            extra={"server": app.name},
        )
        exit_code = 1
    elif not stop.is_set():
        log.info("ready", extra={"server": app.name, "port": host.port})
        await stop.wait()
    if not loader.done():
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loader
    stopper.cancel()
    log.info("shutting down", extra={"server": app.name, "grace_period_s": config.grace_period_s})
    await host.stop()
    return exit_code
