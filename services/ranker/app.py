"""Wires the ranker together: downstream clients, health monitor and the Recommend servicer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from xdrec.ranker.v1 import ranker_pb2_grpc

from services.common.endpoints import RANKER
from services.common.server import Readiness
from services.common.tls import CERT_RELOADS, FileWatch, TlsConfig, check_key_pair
from services.ranker.admission import ARRIVAL, Admission
from services.ranker.circuit_breaker import LoopLag
from services.ranker.config import RankerConfig
from services.ranker.downstream import EncoderClient, Reconnect, ScorerClient
from services.ranker.health_monitor import DependencyHealth, HealthMonitor
from services.ranker.ops import build_ranking_ops
from services.ranker.servicer import RankerServicer

RANKER_SERVICE = RANKER.health_name

log = logging.getLogger("xdrec.ranker")


class RankerApp:
    """The ranker as a ``ServiceApp``: SERVING while it can answer, degraded or not (see
    ``services.ranker.health_monitor``)."""

    name = "ranker"
    health_names = (RANKER_SERVICE,)

    def __init__(self, config: RankerConfig) -> None:
        build_ranking_ops(config.ranking_ops)  # fail fast on a typo
        downstream_tls = config.downstream_tls  # fail fast on unreadable certificate files
        self.downstream_tls = downstream_tls
        self.downstream_credentials = (
            None if downstream_tls is None else downstream_tls.channel_credentials()
        )
        self._cert_watcher: asyncio.Task[None] | None = None
        self.loop_lag: LoopLag | None = None
        self.config = config
        # The admission bound is asked at the server's edge too (``shedder``): refused before
        # the body is parsed when the queue is already longer than its budget can drain.
        self.admission = Admission(
            config.max_in_flight,
            config.queue_budget_ms / 1000.0,
            config.latency_target_ms / 1000.0,
            config.min_in_flight,
        )
        self.shedder = self.admission
        self.encoder: EncoderClient | None = None
        self.scorer: ScorerClient | None = None
        self.monitor: HealthMonitor | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        # aio channels bind to the running event loop, which exists by now (server set-up).
        reconnect = Reconnect(
            initial_backoff_ms=self.config.reconnect_initial_backoff_ms,
            max_backoff_ms=self.config.reconnect_max_backoff_ms,
            min_connect_timeout_ms=self.config.reconnect_min_connect_timeout_ms,
        )
        self.encoder = EncoderClient(self.config.encoder, self.downstream_credentials, reconnect)
        self.scorer = ScorerClient(self.config.scorer, self.downstream_credentials, reconnect)
        health = DependencyHealth()
        servicer = RankerServicer(
            self.config, self.encoder, self.scorer, readiness, health, self.admission
        )
        self.loop_lag = servicer.loop_lag
        self.monitor = HealthMonitor(
            self.encoder,
            self.scorer,
            servicer.catalogs,
            readiness,
            self.config.health_interval_s,
            health,
        )
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(servicer, server)

    @staticmethod
    def on_arrival(instant: float) -> None:
        """The edge tells each admitted call when it reached Python: the queue budget counts
        from there."""
        ARRIVAL.set(instant)

    async def start(self, readiness: Readiness) -> None:
        """Fetches the catalogue and starts watching the downstream services; what they can
        answer decides when the ranker is SERVING."""
        assert self.monitor is not None, "register() runs before start()"
        await self.monitor.check_once()
        self.monitor.start()
        if self.loop_lag is not None:
            self.loop_lag.start()
        if self.downstream_tls is not None:
            self._cert_watcher = asyncio.create_task(
                self._follow_certificates(self.downstream_tls), name="downstream-certificates"
            )

    async def _follow_certificates(self, tls: TlsConfig) -> None:
        """Rebuilds the encoder and scorer channels when the ranker's client certificate or the
        CA bundle it trusts changes on disk (cert-manager renews Secrets in place): new calls
        then handshake with the new files; calls in flight finish on the old channel."""
        watch = FileWatch(tls.files)
        while True:
            await asyncio.sleep(watch.interval_s)
            if not watch.changed():
                continue
            try:
                credentials = tls.channel_credentials()
                if tls.cert:
                    check_key_pair(tls.cert, tls.key, tls.flag_prefix)
            except ValueError as exc:  # half-written: keep the current channels, retry
                CERT_RELOADS.labels("client", "kept_previous").inc()
                log.warning("keeping the previous downstream certificates: %s", exc)
                continue
            watch.accept()
            grace = self.config.default_timeout_s
            await asyncio.gather(
                *(c.reopen(credentials, grace) for c in (self.encoder, self.scorer) if c)
            )
            self.downstream_credentials = credentials
            CERT_RELOADS.labels("client", "ok").inc()
            log.info("downstream channels rebuilt with renewed certificate files")

    async def stop(self) -> None:
        if self.loop_lag is not None:
            await self.loop_lag.stop()
        if self._cert_watcher is not None:
            self._cert_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cert_watcher
        if self.monitor is not None:
            await self.monitor.stop()
        for client in (self.encoder, self.scorer):
            if client is not None:
                await client.close()
