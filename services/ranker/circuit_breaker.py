"""Circuit breakers for dependencies that are up but slow: stop waiting for them for a while.

Why: the health monitor only knows whether the encoder and the scorer answer their health
checks. A dependency that is SERVING but slow (a saturated scorer, a slow feature store, a noisy
neighbour) passes every health check while each Recommend waits on it until the fallback
reserve of its deadline and only then answers by popularity: the caller waits, an in-flight
slot is held, and the slow dependency gets yet more work. A breaker notices the pattern (most
recent calls slower than ``slow_call_s``, unavailable or timed out) and *opens*: for ``open_s``
seconds the ranker does not call that dependency and answers by popularity at once, flagged
exactly as when it is down (``FALLBACK_SCORER_UNAVAILABLE`` / ``FALLBACK_ENCODER_UNAVAILABLE``). Then it is
*half-open*: ``half_open_probes`` real calls go through; if they are fast and succeed it closes
(normal service), otherwise it opens again for another cool-down.

Why the ranker's own lag matters: latency is measured in the ranker's event loop, so when the
ranker itself is behind (its loop runs callbacks late: overload, CPU starvation), every call
looks slow and every deadline looks missed - the fault is the ranker's, not the dependency's.
While ``LoopLag`` says the loop is more than half the slow-call threshold late, a call's
latency and its DEADLINE_EXCEEDED are not held against the dependency (UNAVAILABLE still is:
the dependency could not be reached). The same holds while the ranker's own in-flight bound is
full (``saturated``): then the dependency is slow because the ranker keeps it busy with every
request it may, and opening would only swap personal answers for popularity ones in a cycle
(open, idle dependency, probe, full again). Overload is the admission's job.

States, outcomes and transitions are metrics (``xdrec_ranker_breaker_*``) and every transition
is a log line. The breaker is plain bookkeeping (``allow`` before a call, ``record`` after);
``through`` wraps one downstream call with both, which is all the servicer does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from prometheus_client import Counter, Gauge

from services.common.errors import ServiceError, Unavailable

R = TypeVar("R")

log = logging.getLogger("xdrec.ranker.breaker")

BREAKER_STATE = Gauge(
    "xdrec_ranker_breaker_state",
    "circuit breaker of a dependency: 0 closed (calls go through), 1 open (answered by "
    "popularity without calling), 2 half-open (probing)",
    ["dependency"],
)
BREAKER_TRANSITIONS = Counter(
    "xdrec_ranker_breaker_transitions",
    "circuit breaker state changes, by dependency and new state",
    ["dependency", "state"],
)
LOOP_LAG = Gauge(
    "xdrec_ranker_loop_lag_seconds",
    "how late the ranker's event loop runs a timer (smoothed): the ranker's own backlog",
)
BREAKER_SHORT_CIRCUITED = Counter(
    "xdrec_ranker_breaker_short_circuited",
    "calls not made because the dependency's breaker was open (answered by popularity)",
    ["dependency"],
)


COUNTED_FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Statuses of a call that count against its dependency (besides slowness)."""


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens and how it recovers (flags ``--breaker-*`` of the ranker)."""

    slow_call_s: float = 0.25
    """A call slower than this counts as a failure even when it succeeds."""
    window: int = 20
    """Outcomes remembered (the most recent calls)."""
    min_calls: int = 10
    """Outcomes needed in the window before the breaker may open."""
    failure_ratio: float = 0.5
    """Share of slow or failed calls in the window that opens the breaker."""
    open_s: float = 2.0
    """Cool-down: seconds the dependency is not called once open."""
    half_open_probes: int = 1
    """Calls let through when the cool-down is over; all must be fast and succeed to close."""

    @property
    def enabled(self) -> bool:
        return self.window > 0 and self.min_calls > 0 and self.open_s > 0


class LoopLag:
    """Measures how late the event loop wakes a sleeping task (a smoothed overshoot)."""

    def __init__(self, interval_s: float = 0.05, weight: float = 0.3) -> None:
        self.interval_s = interval_s
        self.weight = weight
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval_s)
            over = max(time.monotonic() - started - self.interval_s, 0.0)
            self.lag_s += self.weight * (over - self.lag_s)
            LOOP_LAG.set(self.lag_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class CircuitBreaker:
    """One dependency's breaker. Not thread-safe: the ranker runs on one event loop."""

    def __init__(
        self,
        dependency: str,
        settings: BreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        loop_lag: LoopLag | None = None,
        saturated: Callable[[], bool] | None = None,
    ) -> None:
        self.dependency = dependency
        self.settings = settings
        self._clock = clock
        self.loop_lag = loop_lag
        self.saturated = saturated
        self.state = State.CLOSED
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=max(settings.window, 1))
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        BREAKER_STATE.labels(dependency).set(State.CLOSED)

    def allow(self) -> bool:
        """Whether to call the dependency now; False = answer by popularity without calling.

        A True in HALF_OPEN hands out a probe: the caller must ``record`` its outcome."""
        if not self.settings.enabled or self.state == State.CLOSED:
            return True
        if self.state == State.OPEN:
            if self._clock() - self._opened_at < self.settings.open_s:
                BREAKER_SHORT_CIRCUITED.labels(self.dependency).inc()
                return False
            self._move(State.HALF_OPEN, "cool-down over: probing")
            self._probes_out = self._probes_ok = 0
        if self._probes_out < self.settings.half_open_probes:
            self._probes_out += 1
            return True
        BREAKER_SHORT_CIRCUITED.labels(self.dependency).inc()
        return False

    @property
    def lagging(self) -> bool:
        """The ranker itself is the bottleneck (its loop runs late, or its in-flight bound is
        full): latencies and timeouts say nothing about the dependency then."""
        lag = self.loop_lag.lag_s if self.loop_lag is not None else 0.0
        return lag > self.settings.slow_call_s / 2 or (
            self.saturated is not None and self.saturated()
        )

    def record(self, elapsed_s: float, failed: bool, timed_out: bool = False) -> None:
        """The outcome of one call that ``allow`` let through.

        ``failed``: it ended with UNAVAILABLE or DEADLINE_EXCEEDED (``through``); a slow
        answer counts as a failure too.
        ``timed_out``: the failure was DEADLINE_EXCEEDED. While the ranker itself lags, slowness
        and timeouts are not held against the dependency."""
        if not self.settings.enabled:
            return
        if self.lagging:
            bad = failed and not timed_out
        else:
            bad = failed or elapsed_s > self.settings.slow_call_s
        if self.state == State.HALF_OPEN:
            if bad:
                self._open(f"probe {'failed' if failed else 'slow'} ({elapsed_s * 1000:.0f} ms)")
                return
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_probes:
                self._outcomes.clear()
                self._move(State.CLOSED, f"probe answered in {elapsed_s * 1000:.0f} ms")
            return
        if self.state == State.OPEN:  # a call let through before the breaker opened
            return
        self._outcomes.append(bad)
        if len(self._outcomes) >= self.settings.min_calls:
            share = sum(self._outcomes) / len(self._outcomes)
            if share >= self.settings.failure_ratio:
                self._open(
                    f"{share:.0%} of the last {len(self._outcomes)} calls slower than "
                    f"{self.settings.slow_call_s * 1000:.0f} ms or failed"
                )

    def cancel_probe(self) -> None:
        """A probe handed out by ``allow`` ended without an outcome (the caller went away)."""
        if self.state == State.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._outcomes.clear()
        self._move(State.OPEN, reason)

    def _move(self, state: State, reason: str) -> None:
        self.state = state
        BREAKER_STATE.labels(self.dependency).set(state)
        BREAKER_TRANSITIONS.labels(self.dependency, state.name.lower()).inc()
        (log.warning if state == State.OPEN else log.info)(
            "circuit breaker %s",
            state.name.lower().replace("_", "-"),
            extra={"dependency": self.dependency, "reason": reason},
        )


async def through(breaker: CircuitBreaker, call: Callable[[], Awaitable[R]]) -> R:
    """Makes ``call`` unless ``breaker`` is open, and records its outcome.

    Open: UNAVAILABLE at once (a degrading status: the servicer answers by popularity).
    UNAVAILABLE, DEADLINE_EXCEEDED and slow answers count against the dependency. Not counted:
    client errors, cancelled calls (the caller left) and RESOURCE_EXHAUSTED - a shedding
    dependency refuses at once (no waiting to save), and a request refused for its own size
    must not let one caller open the breaker for everyone.
    """
    if not breaker.allow():
        raise Unavailable(
            f"{breaker.dependency}: circuit breaker open (recent calls slower than "
            f"{breaker.settings.slow_call_s * 1000:.0f} ms or failing); not called for up to "
            f"{breaker.settings.open_s:.1f} s"
        )
    started = time.monotonic()
    try:
        result = await call()
    except ServiceError as exc:
        timed_out = exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
        failed = exc.code in COUNTED_FAILURES
        breaker.record(time.monotonic() - started, failed=failed, timed_out=timed_out)
        raise
    except asyncio.CancelledError:
        breaker.cancel_probe()
        raise
    except Exception:  # e.g. the scorer does not serve that version: no fault of its speed
        breaker.record(time.monotonic() - started, failed=False)
        raise
    breaker.record(time.monotonic() - started, failed=False)
    return result
