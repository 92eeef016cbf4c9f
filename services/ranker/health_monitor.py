"""Keeps the ranker's health in step with what it can answer.

Why: the ranker degrades instead of failing (``services.ranker.fallback``): with the scorer down
it ranks the encoder's candidates by popularity, with the encoder down it ranks its cached
catalogue by popularity. So it reports SERVING while it can answer - the encoder serves, or the
scorer serves and a catalogue is held - and NOT_SERVING (refusing requests with UNAVAILABLE) only
when it cannot, e.g. both are down or the encoder never answered. What is degraded is said by the
``xdrec_ranker_dependency_up`` gauge, the health reason when not serving, and a log line on every
change. The encoder's feature store is a dependency of the same kind: while the encoder reports
it NOT_SERVING (health name ``FEATURE_STORE_HEALTH``) answers are flagged
``FALLBACK_FEATURES_UNAVAILABLE``; the ranker stays SERVING, sets the gauge
``{dependency="feature_store"}`` to 0, logs it as degraded and reports the same health name
NOT_SERVING itself, so one probe at the ranker tells whether answers are personal. While the encoder serves, the monitor keeps the newest catalogue fetched (at start-up and
whenever the encoder comes back), so the encoder-down fallback never starts empty.

Why the servicer reads ``DependencyHealth`` too: a dependency that is known to be down (or
restarting and not yet SERVING, when its calls may hang until the deadline) is not called at all;
the answer goes straight to the popularity fallback instead of holding an in-flight slot. While
one is down the monitor polls every ``DEGRADED_INTERVAL_S``, so a dependency that is back is used
again within about that long (the fast-recovery target is 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from prometheus_client import Gauge

from services.common.endpoints import FEATURE_STORE_HEALTH
from services.common.server import Readiness
from services.ranker.catalog import CatalogCache
from services.ranker.downstream import Downstream

log = logging.getLogger("xdrec.ranker.health")

DEPENDENCY_UP = Gauge(
    "xdrec_ranker_dependency_up",
    "1 while the ranker's dependency (encoder, scorer) answers its health check as SERVING; 0 "
    "means the ranker answers by popularity (degraded)",
    ["dependency"],
)


DEGRADED_INTERVAL_S = 0.1
"""Seconds between health checks while a dependency is down (fast recovery)."""


@dataclass
class DependencyHealth:
    """What the last health check said; the servicer skips a dependency that is down."""

    encoder_up: bool = True
    scorer_up: bool = True


class HealthMonitor:
    """Polls the encoder's and the scorer's health every ``interval`` seconds."""

    def __init__(
        self,
        encoder: Downstream,
        scorer: Downstream,
        catalogs: CatalogCache,
        readiness: Readiness,
        interval: float,
        health: DependencyHealth | None = None,
    ) -> None:
        self.health = health or DependencyHealth()
        self.encoder = encoder
        self.scorer = scorer
        self.catalogs = catalogs
        self.readiness = readiness
        self.interval = interval
        self.degraded: tuple[str, ...] = ()
        """Reasons of the dependencies that are down, as of the last check."""
        self._encoder_was_up = False
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> bool:
        """Checks both dependencies once and updates the readiness; returns whether the ranker
        can answer."""
        timeout = max(min(self.interval, 1.0), 0.1)
        (encoder_up, encoder_reason), (scorer_up, scorer_reason), store = await asyncio.gather(
            self.encoder.serving(timeout),
            self.scorer.serving(timeout),
            self.encoder.component_serving(FEATURE_STORE_HEALTH, timeout),
        )
        if encoder_up and (not self._encoder_was_up or self.catalogs.latest() is None):
            await self._refresh_catalog(timeout)
        self._encoder_was_up = encoder_up
        self.health.encoder_up, self.health.scorer_up = encoder_up, scorer_up
        DEPENDENCY_UP.labels(self.encoder.service).set(int(encoder_up))
        DEPENDENCY_UP.labels(self.scorer.service).set(int(scorer_up))
        store_reason = await self._feature_store(encoder_up and store is not False)
        degraded = tuple(
            reason for reason in (encoder_reason, store_reason, scorer_reason) if reason
        )
        if degraded != self.degraded:
            log.warning(
                "degraded" if degraded else "no longer degraded",
                extra={"server": "ranker", "reason": "; ".join(degraded)},
            )
            self.degraded = degraded
        can_answer = encoder_up or (scorer_up and self.catalogs.latest() is not None)
        reason = "; ".join(degraded)
        if not can_answer and not encoder_up and self.catalogs.latest() is None:
            reason += "; no catalogue held for the popularity fallback"
        await self.readiness.set(can_answer, reason)
        return can_answer

    async def _feature_store(self, store_up: bool) -> str:
        """Reports the encoder's feature store as the encoder does (up only while the encoder
        serves; an encoder without that health name counts as up); the degraded reason while
        the encoder serves but its store does not, else ""."""
        DEPENDENCY_UP.labels("feature_store").set(int(store_up))
        await self.readiness.set_component(FEATURE_STORE_HEALTH, store_up)
        if self.health.encoder_up and not store_up:
            return (
                f"feature store behind the encoder at {self.encoder.address} is NOT_SERVING "
                "(answers flagged FALLBACK_FEATURES_UNAVAILABLE)"
            )
        return ""

    async def _refresh_catalog(self, timeout: float) -> None:
        try:
            catalog = await self.catalogs.refresh(time.monotonic() + timeout)
        except Exception as exc:  # the next check tries again
            log.warning("could not fetch the catalogue from the encoder: %s", exc)
            return
        log.info(
            "catalogue held for the popularity fallback",
            extra={"model": catalog.name, "version": catalog.version},
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # keep monitoring whatever happens
                log.exception("health check of the downstream services failed")
            degraded = not (self.health.encoder_up and self.health.scorer_up)
            await asyncio.sleep(
                min(self.interval, DEGRADED_INTERVAL_S) if degraded else self.interval
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="downstream-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
