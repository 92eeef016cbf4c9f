"""Load shedding at the ranker: a bound on in-flight Recommends and on the time one may queue.

Why: without a bound, an overloaded ranker accepts everything, every request queues behind the
others until its deadline passes, and the work done for it is wasted (goodput collapses to a
fraction of capacity). With a bound, a request that cannot start within ``queue_budget_s`` is
refused at once with RESOURCE_EXHAUSTED - before any downstream call, within milliseconds - so
the caller can retry elsewhere or later, and the requests that are admitted finish in time.

The queue is FIFO: a slot freed by a finishing request goes to the oldest waiter. A waiter whose
budget (or the caller's deadline, whichever is first) runs out leaves the queue and is refused.

Two refinements make shedding cheap, which is what keeps goodput up at several times capacity:

* the budget counts from the request's *arrival* in Python (``ARRIVAL``, set at the server's
  edge by ``services.common.shedding``), not from when the servicer got round to it;
* ``refusal`` is asked at the edge, before the body is parsed: when the queue already holds
  as many requests as the slots can take within the budget (at the service time seen lately),
  a newcomer could only wait and be refused, so it is refused at once - no parsing, no
  interceptors, no timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator

from prometheus_client import Counter, Gauge

from services.common.errors import ResourceExhausted

IN_FLIGHT = Gauge("xdrec_ranker_in_flight", "Recommends admitted and not yet answered")
SHED = Counter(
    "xdrec_ranker_shed",
    "Recommends refused with RESOURCE_EXHAUSTED before any downstream call, by reason "
    "(queue_full: no slot and no queue budget; queue_budget: no slot within the budget)",
    ["reason"],
)

ARRIVAL: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrival", default=None)
"""When the current request reached Python (``time.monotonic()``); None = unknown (then the
queue budget counts from the admission call)."""

SERVICE_TIME_WEIGHT = 0.05
"""Weight of the newest slot hold time in the running average used by ``refusal``."""


LIMIT = Gauge(
    "xdrec_ranker_in_flight_limit",
    "the in-flight bound in force (below --max-in-flight while --latency-target-ms lowers it)",
)


class LatencyTarget:
    """An in-flight bound that follows a latency target (additive increase, multiplicative
    decrease, judged over short windows).

    Why: a fixed bound that is right for one machine is wrong for another - by Little's law an
    admitted request's latency is about ``in flight / throughput``, so 64 in flight on a ranker
    that completes 130 requests/s means half a second each. With a target, a window whose mean
    slot time is over it lowers the bound by ``decrease``; a window under it with the bound
    reached raises it by one, up to ``ceiling``. The bound never goes below ``floor``.
    """

    def __init__(
        self,
        target_s: float,
        floor: int,
        ceiling: int,
        window_s: float = 0.1,
        decrease: float = 0.9,
    ) -> None:
        self.target_s = target_s
        self.floor = max(min(floor, ceiling), 1)
        self.ceiling = ceiling
        self.window_s = window_s
        self.decrease = decrease
        self.limit = float(ceiling)
        self._sum = 0.0
        self._count = 0
        self._reached = False
        self._started = time.monotonic()
        LIMIT.set(self.limit)

    def sample(self, held_s: float, in_flight: int) -> None:
        """One request's slot time; ``in_flight`` counted it (whether the bound was reached)."""
        self._sum += held_s
        self._count += 1
        self._reached = self._reached or in_flight >= int(self.limit)
        now = time.monotonic()
        if now - self._started < self.window_s:
            return
        mean = self._sum / self._count
        if mean > self.target_s:
            self.limit = max(self.limit * self.decrease, float(self.floor))
        elif self._reached:
            self.limit = min(self.limit + 1.0, float(self.ceiling))
        LIMIT.set(self.limit)
        self._sum, self._count, self._reached, self._started = 0.0, 0, False, now


class Admission:
    """At most ``max_in_flight`` requests at a time; others wait up to ``queue_budget_s``.

    ``max_in_flight`` 0 admits everything (no shedding). With ``latency_target_s`` the bound in
    force (``limit``) follows that target between ``min_in_flight`` and ``max_in_flight``.
    """

    def __init__(
        self,
        max_in_flight: int,
        queue_budget_s: float,
        latency_target_s: float = 0.0,
        min_in_flight: int = 4,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.queue_budget_s = max(queue_budget_s, 0.0)
        self.target = (
            LatencyTarget(latency_target_s, min_in_flight, max_in_flight)
            if latency_target_s > 0 and max_in_flight > 0
            else None
        )
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.service_time_s = 0.0
        """Running average of how long a request holds its slot (0 = none seen yet)."""

    @property
    def limit(self) -> int:
        """The in-flight bound in force."""
        return self.max_in_flight if self.target is None else int(self.target.limit)

    def saturated(self) -> bool:
        """Every slot is taken (the ranker is the bottleneck, not a dependency)."""
        return self.max_in_flight > 0 and self.in_flight >= self.limit

    @property
    def queue_room(self) -> float:
        """How many waiters the slots can take within the queue budget, at the recent service
        time (infinite until a service time has been seen)."""
        if self.service_time_s <= 0:
            return float("inf")
        return self.limit * self.queue_budget_s / self.service_time_s

    def refusal(self) -> tuple[str, str] | None:
        """At the edge: refuse now when a newcomer could not get a slot within the budget."""
        if self.max_in_flight <= 0 or self.in_flight < self.limit:
            return None
        if len(self._waiters) < self.queue_room:
            return None
        SHED.labels("queue_full").inc()
        return (
            "queue_full",
            f"ranker overloaded: {self.in_flight} requests in flight (limit {self.limit}) "
            f"and {len(self._waiters)} queued; retry later",
        )

    def enter(self) -> None:
        """The edge's hook; slots are taken in ``slot`` (after validation)."""

    def leave(self) -> None:
        """The edge's hook; slots are freed in ``slot``."""

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Holds one in-flight slot for the body; RESOURCE_EXHAUSTED when none frees in time."""
        if self.max_in_flight > 0:
            await self._acquire(deadline)
        else:
            self.in_flight += 1
        IN_FLIGHT.set(self.in_flight)
        started = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - started
            self.service_time_s = (
                held
                if self.service_time_s <= 0
                else self.service_time_s + SERVICE_TIME_WEIGHT * (held - self.service_time_s)
            )
            if self.target is not None:
                self.target.sample(held, self.in_flight)
            self._release()

    async def _acquire(self, deadline: float) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        now = time.monotonic()
        arrival = ARRIVAL.get()
        waited = 0.0 if arrival is None else max(now - arrival, 0.0)
        wait = min(self.queue_budget_s - waited, deadline - now)
        if wait <= 0:
            SHED.labels("queue_full").inc()
            raise ResourceExhausted(
                f"ranker overloaded: {self.in_flight} requests in flight (limit "
                f"{self.limit}); retry later"
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot was handed over just as the budget ran out: keep it
            waiter.cancel()
            SHED.labels("queue_budget").inc()
            raise ResourceExhausted(
                f"ranker overloaded: no slot within the queue budget of "
                f"{self.queue_budget_s * 1000:.0f} ms ({self.limit} in flight); retry "
                "later"
            ) from None
        except asyncio.CancelledError:  # the caller went away: pass on a slot handed to us
            if waiter.done() and not waiter.cancelled():
                self._release()
            else:
                waiter.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self) -> None:
        """Hands the slot to the oldest live waiter (in_flight unchanged) or frees it; frees it
        when a lowered bound says there are too many in flight."""
        while self._waiters and self.in_flight <= self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
        IN_FLIGHT.set(self.in_flight)
