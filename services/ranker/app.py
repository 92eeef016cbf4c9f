"""Wires the ranker together: downstream clients, health monitor and the Recommend servicer."""

from __future__ import annotations

import grpc
from xdrec.ranker.v1 import ranker_pb2_grpc

from services.common.endpoints import RANKER
from services.common.server import Readiness
from services.ranker.config import RankerConfig
from services.ranker.downstream import EncoderClient, ScorerClient
from services.ranker.health_monitor import HealthMonitor
from services.ranker.ops import build_ranking_ops
from services.ranker.servicer import RankerServicer

RANKER_SERVICE = RANKER.health_name


class RankerApp:
    """The ranker as a ``ServiceApp``: SERVING exactly while encoder and scorer are."""

    name = "ranker"
    health_names = (RANKER_SERVICE,)

    def __init__(self, config: RankerConfig) -> None:
        build_ranking_ops(config.ranking_ops)  # fail fast on a typo
        downstream_tls = config.downstream_tls  # fail fast on unreadable certificate files
        self.downstream_credentials = (
            None if downstream_tls is None else downstream_tls.channel_credentials()
        )
        self.config = config
        self.encoder: EncoderClient | None = None
        self.scorer: ScorerClient | None = None
        self.monitor: HealthMonitor | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        # aio channels bind to the running event loop, which exists by now (server set-up).
        self.encoder = EncoderClient(self.config.encoder, self.downstream_credentials)
        self.scorer = ScorerClient(self.config.scorer, self.downstream_credentials)
        self.monitor = HealthMonitor(
            (self.encoder, self.scorer), readiness, self.config.health_interval_s
        )
        ranker_pb2_grpc.add_RankerServiceServicer_to_server(
            RankerServicer(self.config, self.encoder, self.scorer, readiness), server
        )

    async def start(self, readiness: Readiness) -> None:
        """Starts watching the downstream services; they decide when the ranker is SERVING."""
        assert self.monitor is not None, "register() runs before start()"
        await self.monitor.check_once()
        self.monitor.start()

    async def stop(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        for client in (self.encoder, self.scorer):
            if client is not None:
                await client.close()
