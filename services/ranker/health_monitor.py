"""Keeps the ranker's health in step with its downstream services.

Why: the ranker cannot answer a single request without the encoder and the scorer, so it reports
NOT_SERVING (and refuses requests with UNAVAILABLE) until both answer their health checks as
SERVING, and again whenever one of them goes away. A load balancer then routes around it instead
of collecting errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from services.common.server import Readiness
from services.ranker.downstream import Downstream

log = logging.getLogger("xdrec.ranker.health")


class HealthMonitor:
    """Polls the downstream health services every ``interval`` seconds."""

    def __init__(
        self, downstreams: Sequence[Downstream], readiness: Readiness, interval: float
    ) -> None:
        self.downstreams = downstreams
        self.readiness = readiness
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> bool:
        """Checks every downstream once and updates the readiness; returns whether all serve."""
        timeout = max(min(self.interval, 1.0), 0.1)
        results = await asyncio.gather(*(d.serving(timeout) for d in self.downstreams))
        reasons = [reason for ok, reason in results if not ok]
        await self.readiness.set(not reasons, "; ".join(reasons))
        return not reasons

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # keep monitoring whatever happens
                log.exception("health check of the downstream services failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="downstream-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
