"""Finding one target's capacity: a closed-loop probe, open-loop steps up, bisection, and a step
at half the capacity; CPU per request of every process around each step.

Why start from a probe: the ceiling and a Recommend differ by an order of magnitude; climbing from
a fixed rate would spend most of the run far below either. Why CPU per request: on a shared
machine the ratio of capacities says how much slower, the CPU milliseconds per request of each
service say where the time goes (what is left to cut).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench import loadtest
from bench.capacity.traffic import CapacitySpec
from bench.serving.measure import machine_busy_s, process_tree_cpu_s


@dataclass(frozen=True)
class SearchConfig:
    """How a capacity is searched (``bench/capacity_benchmark.py`` flags of the same names)."""

    p99_budget_ms: float = 50.0
    probe_s: float = 3.0  # closed-loop probe length
    probe_concurrency: int = 32
    start_share: float = 0.4  # first open-loop rate = this x the probe's throughput
    step_factor: float = 1.25  # rate multiplier per step up
    refine: int = 3  # bisection steps between the last pass and the first failure
    step_s: float = 6.0  # measured seconds per step
    warmup_s: float = 2.0  # unmeasured seconds before each step
    timeout_ms: float = 1000.0  # deadline of every call
    channels: int = 2  # HTTP/2 connections
    max_steps_up: int = 25  # a bound on the climb besides the failing step
    max_steps_down: int = 4  # when the first step fails: halve the rate up to this many times
    half_rate_check: bool = True  # one more step at half the capacity (the low-load p99)
    idle_s: float = 2.0  # seconds without load before the probe: each process's idle CPU
    retries: int = 1  # a failed step is measured again this many times; the last attempt counts


Sender = Callable[[CapacitySpec], Awaitable[str]]


class CpuMeter:
    """CPU seconds of named processes (and the generator, and the machine) between two marks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def mark(self) -> dict[str, float]:
        marks = {name: process_tree_cpu_s(pid) for name, pid in self.pids.items()}
        marks["generator"] = time.process_time()
        marks["machine"] = machine_busy_s()
        return marks

    @staticmethod
    def per_request(
        before: dict[str, float], after: dict[str, float], requests: int, seconds: float
    ) -> dict[str, Any]:
        n = max(1, requests)
        spent = {name: after[name] - before[name] for name in before}
        own = sum(v for k, v in spent.items() if k != "machine")
        return {
            "cpu_ms_per_request": {
                k: round(v * 1e3 / n, 3) for k, v in spent.items() if k != "machine"
            },
            "other_cpu_cores": round(max(0.0, spent["machine"] - own) / seconds, 2),
        }


async def idle_cpu(meter: CpuMeter, seconds: float) -> dict[str, float]:
    """CPU cores each process uses with no load (health checks, polling, timers): at low rates
    this is a visible part of the CPU per request, which includes it."""
    import asyncio

    if seconds <= 0:
        return {}
    before = meter.mark()
    await asyncio.sleep(seconds)
    after = meter.mark()
    return {
        name: round((after[name] - before[name]) / seconds, 3)
        for name in before
        if name not in ("machine", "generator")
    }


def step_row(summary: loadtest.RunSummary, passed: bool, cpu: dict[str, Any]) -> dict[str, Any]:
    lat = summary.latency
    return {
        "rate": summary.target_rate,
        "passed": passed,
        "throughput_rps": round(summary.throughput_rps, 1),
        "requests": summary.requests,
        "errors": summary.errors,
        "errors_by_code": summary.errors_by_code,
        "p50_ms": lat.p50_ms,
        "p95_ms": lat.p95_ms,
        "p99_ms": lat.p99_ms,
        "max_ms": lat.max_ms,
        "client_send_lag_p99_ms": round(summary.client_send_lag_p99_ms, 2),
        "by_user_kind": {
            k: {"requests": g.requests, "errors": g.errors, "p99_ms": g.latency.p99_ms}
            for k, g in summary.by_user_kind.items()
        },
        **cpu,
    }


async def find_capacity(
    name: str,
    send: Sender,
    next_request: Callable[[], CapacitySpec],
    config: SearchConfig,
    meter: CpuMeter,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Idle CPU, probe, climb, bisect (``loadtest.find_max_rate``), then the half-rate step."""
    idle = await idle_cpu(meter, config.idle_s)
    base = loadtest.LoadConfig(
        target=name,
        mode="closed",
        concurrency=config.probe_concurrency,
        duration_s=config.probe_s,
        warmup_s=0.5,
        timeout_ms=config.timeout_ms,
        channels=config.channels,
    )
    rec, _ = await loadtest.run_load(base, send, next_request)
    probe = loadtest.summarize(rec, base, [])
    start = max(1.0, config.start_share * probe.throughput_rps)
    say(
        f"== {name}: closed-loop probe {probe.throughput_rps:.0f} req/s "
        f"({config.probe_concurrency} in flight, {probe.errors} errors); open-loop steps from "
        f"{start:.0f} req/s x{config.step_factor:g}"
    )
    rows: list[dict[str, Any]] = []
    budgets = loadtest.Budgets(p99_ms=config.p99_budget_ms, max_error_rate=0.0)

    async def measure_step(cfg: loadtest.LoadConfig) -> tuple[loadtest.RunSummary, bool]:
        before = meter.mark()
        rec, timeline = await loadtest.run_load(cfg, send, next_request)
        after = meter.mark()
        summary = loadtest.summarize(rec, cfg, timeline)
        passed = not loadtest.check_budgets(summary, budgets)
        cpu = CpuMeter.per_request(before, after, len(rec.latencies), cfg.duration_s + cfg.warmup_s)
        rows.append(step_row(summary, passed, cpu))
        lat = summary.latency
        say(
            f"   {name:28s} {cfg.rate:8.1f} req/s  p50 {lat.p50_ms:7.2f}  p99 {lat.p99_ms:7.2f} ms"
            f"  errors {summary.errors:5d}  {'pass' if passed else 'FAIL'}"
            + (f"  {summary.errors_by_code}" if summary.errors else "")
            + f"  (other processes {cpu['other_cpu_cores']:.2f} cores)"
        )
        return summary, passed

    async def one_run(cfg: loadtest.LoadConfig) -> loadtest.RunSummary:
        """One step; a failed step is measured again up to ``config.retries`` times (a burst of
        other work on a shared machine must not end the climb), the last attempt counts."""
        cfg = dataclasses.replace(cfg, warmup_s=config.warmup_s)
        summary, passed = await measure_step(cfg)
        for _ in range(config.retries if not passed else 0):
            rows[-1]["superseded"] = True
            summary, passed = await measure_step(cfg)
            if passed:
                break
        return summary

    args = argparse.Namespace(
        start_rate=start,
        max_rate=start * config.step_factor ** (config.max_steps_up - 1) * 1.0001,
        step_factor=config.step_factor,
        step_duration=config.step_s,
        refine=config.refine,
    )
    result, _ = await loadtest.find_max_rate(
        args, dataclasses.replace(base, mode="open"), budgets, one_run, lambda _line: None
    )
    best = result["max_sustained_rate"]
    for i in range(config.max_steps_down if best is None else 0):
        rate = start / 2 ** (i + 1)  # even the first step failed: halve until one passes
        summary = await one_run(
            dataclasses.replace(base, mode="open", rate=rate, duration_s=config.step_s)
        )
        if rows[-1]["passed"]:
            best = summary.target_rate
            break
    half = None
    if config.half_rate_check and best:
        await one_run(
            dataclasses.replace(base, mode="open", rate=best / 2, duration_s=config.step_s)
        )
        half = rows.pop()
    say(
        f"== {name}: capacity "
        + (f"{best:.0f} req/s" if best else "none (even the first step failed)")
        + (f"; p99 at half of it {half['p99_ms']:.2f} ms" if half else "")
    )
    return {
        "idle_cpu_cores": idle,
        "probe": {
            "concurrency": config.probe_concurrency,
            "seconds": config.probe_s,
            "throughput_rps": round(probe.throughput_rps, 1),
            "errors": probe.errors,
        },
        "capacity_rps": round(best, 1) if best else None,
        "first_failing_rate": result["first_failing_rate"],
        "steps": sorted(rows, key=lambda r: r["rate"]),
        "at_capacity": next(
            (r for r in rows if best and math.isclose(r["rate"], best) and r["passed"]), None
        ),
        "retried_steps": sum(1 for r in rows if r.get("superseded")),
        "half_capacity": half,
    }
