"""Load shedding at the ranker: a bound on in-flight Recommends and on the time one may queue.

Why: without a bound, an overloaded ranker accepts everything, every request queues behind the
others until its deadline passes, and the work done for it is wasted (goodput collapses to a
fraction of capacity). With a bound, a request that cannot start within ``queue_budget_s`` is
refused at once with RESOURCE_EXHAUSTED - before any downstream call, within milliseconds - so
the caller can retry elsewhere or later, and the requests that are admitted finish in time.

The queue is FIFO: a slot freed by a finishing request goes to the oldest waiter. A waiter whose
budget (or the caller's deadline, whichever is first) runs out leaves the queue and is refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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


class Admission:
    """At most ``max_in_flight`` requests at a time; others wait up to ``queue_budget_s``.

    ``max_in_flight`` 0 admits everything (no shedding).
    """

    def __init__(self, max_in_flight: int, queue_budget_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.queue_budget_s = max(queue_budget_s, 0.0)
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Holds one in-flight slot for the body; RESOURCE_EXHAUSTED when none frees in time."""
        if self.max_in_flight > 0:
            await self._acquire(deadline)
        else:
            self.in_flight += 1
        IN_FLIGHT.set(self.in_flight)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, deadline: float) -> None:
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        wait = min(self.queue_budget_s, deadline - time.monotonic())
        if wait <= 0:
            SHED.labels("queue_full").inc()
            raise ResourceExhausted(
                f"ranker overloaded: {self.in_flight} requests in flight (limit "
                f"{self.max_in_flight}); retry later"
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
                f"{self.queue_budget_s * 1000:.0f} ms ({self.max_in_flight} in flight); retry "
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
        """Hands the slot to the oldest live waiter (in_flight unchanged) or frees it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
        IN_FLIGHT.set(self.in_flight)
