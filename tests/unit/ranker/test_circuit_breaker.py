"""The circuit breaker's bookkeeping on a fake clock: when it opens, what it refuses, how it
recovers (the end-to-end behaviour with a real slow scorer: tests/integration/test_circuit_breaker.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.ranker.circuit_breaker import (
    BreakerSettings,
    CircuitBreaker,
    LoopLag,
    State,
    through,
)

SETTINGS = BreakerSettings(
    slow_call_s=0.1, window=10, min_calls=4, failure_ratio=0.5, open_s=1.0, half_open_probes=2
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(
    name: str = "scorer", settings: BreakerSettings = SETTINGS, lag: LoopLag | None = None
) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(name, settings, clock, loop_lag=lag), clock


def test_it_opens_when_most_recent_calls_are_slow_or_fail() -> None:
    b, _ = breaker()
    for _ in range(3):
        assert b.allow()
        b.record(0.5, failed=False)  # slow but answered
    assert b.state == State.CLOSED  # fewer than min_calls outcomes
    b.record(0.01, failed=True)
    assert b.state == State.OPEN
    assert not b.allow()


def test_fast_successes_keep_it_closed() -> None:
    b, _ = breaker()
    for i in range(30):
        b.record(0.5 if i % 4 == 3 else 0.01, failed=False)  # a quarter slow: under the ratio
    assert b.state == State.CLOSED and b.allow()


def test_after_the_cool_down_probes_decide() -> None:
    b, clock = breaker("encoder")
    for _ in range(4):
        b.record(1.0, failed=False)
    assert b.state == State.OPEN
    clock.now += 0.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow() and b.state == State.HALF_OPEN
    assert b.allow()  # two probes
    assert not b.allow()  # no more while probing
    b.record(0.01, failed=False)
    assert b.state == State.HALF_OPEN  # one of two probes back
    b.record(0.01, failed=False)
    assert b.state == State.CLOSED and b.allow()
    assert REGISTRY.get_sample_value("xdrec_ranker_breaker_state", {"dependency": "encoder"}) == 0


def test_a_slow_probe_opens_it_again_for_another_cool_down() -> None:
    b, clock = breaker("slowpoke")
    for _ in range(4):
        b.record(0.01, failed=True)
    clock.now += 1.1
    assert b.allow()
    b.record(0.3, failed=False)
    assert b.state == State.OPEN
    assert REGISTRY.get_sample_value("xdrec_ranker_breaker_state", {"dependency": "slowpoke"}) == 1
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.6
    assert b.allow()


def test_a_cancelled_probe_is_handed_out_again() -> None:
    b, clock = breaker(settings=BreakerSettings(min_calls=1, window=1, open_s=1.0))
    b.record(0.01, failed=True)
    clock.now += 1.1
    assert b.allow()
    assert not b.allow()
    b.cancel_probe()
    assert b.allow()


def test_min_calls_zero_turns_it_off() -> None:
    b, _ = breaker(settings=BreakerSettings(min_calls=0))
    for _ in range(50):
        b.record(5.0, failed=True)
    assert b.state == State.CLOSED and b.allow()


def test_through_short_circuits_and_judges_only_degrading_failures() -> None:
    b, _ = breaker("through", BreakerSettings(window=2, min_calls=2, failure_ratio=1.0, open_s=60))
    calls = 0

    async def failing(exc: Exception):
        nonlocal calls
        calls += 1
        raise exc

    async def scenario() -> None:
        for _ in range(3):  # a client error says nothing about the dependency's health
            with pytest.raises(InvalidArgument):
                await through(b, lambda: failing(InvalidArgument("k", "bad")))
        for _ in range(3):  # nor does a fast refusal (shedding, or a request over a limit)
            with pytest.raises(ResourceExhausted):
                await through(b, lambda: failing(ResourceExhausted("too many candidates")))
        assert b.state == State.CLOSED
        for _ in range(2):
            with pytest.raises(DeadlineExceeded):
                await through(b, lambda: failing(DeadlineExceeded("too slow")))
        assert b.state == State.OPEN
        with pytest.raises(Unavailable, match="through: circuit breaker open"):
            await through(b, lambda: failing(AssertionError("must not be called")))

    asyncio.run(scenario())
    assert calls == 8


def test_the_rankers_own_lag_is_not_held_against_the_dependency() -> None:
    lag = LoopLag()
    b, _ = breaker("lagging", BreakerSettings(slow_call_s=0.1, window=4, min_calls=4), lag=lag)
    lag.lag_s = 0.2  # the ranker's loop runs 200 ms late: every call looks slow
    for _ in range(10):
        b.record(0.5, failed=False)
        b.record(0.9, failed=True, timed_out=True)
    assert b.state == State.CLOSED
    for _ in range(4):  # the dependency itself says it cannot answer: that still counts
        b.record(0.01, failed=True)
    assert b.state == State.OPEN


def test_loop_lag_measures_a_blocked_loop() -> None:
    async def scenario() -> float:
        lag = LoopLag(interval_s=0.01, weight=1.0)
        lag.start()
        await asyncio.sleep(0.03)
        time.sleep(0.1)  # block the loop
        await asyncio.sleep(0.005)
        measured = lag.lag_s
        await lag.stop()
        return measured

    assert asyncio.run(scenario()) >= 0.05


def test_slowness_while_the_rankers_slots_are_full_is_not_held_against_the_dependency() -> None:
    full = True
    b = CircuitBreaker(
        "saturated", BreakerSettings(slow_call_s=0.1, window=4, min_calls=4), saturated=lambda: full
    )
    for _ in range(10):
        b.record(0.5, failed=False)
    assert b.state == State.CLOSED
    full = False
    for _ in range(4):
        b.record(0.5, failed=False)
    assert b.state == State.OPEN
