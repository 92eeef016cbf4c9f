#!/usr/bin/env python3
"""Load test for the xdrec serving suite, driven through the public ranker (Recommend).

    python bench/loadtest.py --target 127.0.0.1:50053 --features artifacts/demo/features.tsv \
        --rate 100 --duration 30 --p99-budget-ms 100 --max-error-rate 0.001 --out result.json
    python bench/loadtest.py --target 127.0.0.1:50053 --features features.tsv \
        --find-max-rate --p99-budget-ms 50

Traffic is realistic for this product: a configurable mix of warm users (they have target-domain
rows in features.tsv), cold-start users (source-domain rows only) and users unknown to both
domains (random ids), with and without explicit candidate lists.

Why open loop by default: a closed-loop generator (N workers, each waiting for its reply before
sending the next request) slows down exactly when the server does, so a stall hides most of the
requests that would have arrived during it (coordinated omission) and the percentiles look far
better than what users see. Here requests are scheduled at fixed times (rate R: request i is due
at i/R, or Poisson arrivals), sent whether or not earlier ones have returned, and latency is
measured from the *intended* send time, so any delay - in the server or in this client - counts.
Closed loop (`--mode closed --concurrency N`) is available for capacity-style runs.

Why our own generator and not locust: locust's gRPC support is a thin example wrapped around
gevent (which must monkey-patch grpcio and does not mix with grpc.aio), it measures from the
actual send time (coordinated omission), and it adds gevent and Flask to the environment. A few
hundred lines of asyncio + grpc.aio give open-loop scheduling, per-class statistics and budgets.

Independence: this script does not import the services' code; it speaks the public proto
(`xdrec.ranker.v1`, the generated stubs, taken from services/protogen when the project is not
installed) plus grpc.health.v1, like any client.

Only loopback targets are allowed unless --allow-remote is given: load tests against other
machines must be deliberate.

Exit status: 0 all budgets met; 1 a budget was broken (or no rate passed in --find-max-rate);
2 usage error (including a refused non-loopback target); 3 the target never became ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import math
import random
import socket
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RANKER_HEALTH = "xdrec.ranker.v1.RankerService"
USER_KINDS = ("warm", "cold", "unknown")
EXIT_OK, EXIT_BUDGET, EXIT_USAGE, EXIT_NOT_READY = 0, 1, 2, 3


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficMix:
    """What one request looks like; shares are normalised, so 6/3/1 equals 0.6/0.3/0.1."""

    warm: float = 0.6
    cold: float = 0.3
    unknown: float = 0.1
    candidate_share: float = 0.3  # share of requests that carry an explicit candidate list
    candidates: int = 50  # candidate ids per such request
    k: int = 10

    def weights(self) -> tuple[float, float, float]:
        total = self.warm + self.cold + self.unknown
        if total <= 0 or min(self.warm, self.cold, self.unknown) < 0:
            raise ValueError("the user mix needs non-negative shares with a positive sum")
        return (self.warm / total, self.cold / total, self.unknown / total)


@dataclass(frozen=True)
class LoadConfig:
    """How load is generated (one run, or one step of --find-max-rate)."""

    target: str
    mode: Literal["open", "closed"] = "open"
    rate: float = 50.0  # open loop: requests per second
    arrivals: Literal["uniform", "poisson"] = "uniform"
    concurrency: int = 8  # closed loop: requests in flight
    duration_s: float = 30.0  # measured time, after the warm-up
    warmup_s: float = 2.0  # sent but excluded from the statistics
    timeout_ms: float = 2000.0  # per-request deadline
    channels: int = 2  # separate HTTP/2 connections, used round robin
    max_outstanding: int = 10_000  # open loop: beyond this the client is saturated
    seed: int = 0


@dataclass(frozen=True)
class Budgets:
    """Limits that make the run fail (exit 1); None means not checked."""

    p99_ms: float | None = None
    max_error_rate: float | None = None


# --- workload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestSpec:
    kind: str  # warm / cold / unknown
    user_id: str
    candidates: tuple[str, ...]
    k: int


@dataclass(frozen=True)
class Workload:
    """Users and items from the feature snapshot (features.tsv, docs/architecture.md)."""

    warm_users: tuple[str, ...]
    cold_users: tuple[str, ...]
    items: tuple[str, ...]  # target-domain item ids, for candidate lists

    @classmethod
    def from_features(cls, path: Path | None) -> Workload:
        """Warm = has target rows; cold = source rows only. No file: only unknown users."""
        if path is None:
            return cls((), (), ())
        target_users: set[str] = set()
        source_users: set[str] = set()
        items: dict[str, None] = {}
        with path.open(encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
            try:
                user_col, domain_col, item_col = (
                    header.index("user_id"),
                    header.index("domain"),
                    header.index("item_id"),
                )
            except ValueError:
                raise ValueError(
                    f"{path}: expected a header with user_id, domain, item_id; got {header}"
                ) from None
            for line in fh:
                cols = line.rstrip("\r\n").split("\t")
                if len(cols) <= max(user_col, domain_col, item_col):
                    continue
                if cols[domain_col] == "target":
                    target_users.add(cols[user_col])
                    items[cols[item_col]] = None
                else:
                    source_users.add(cols[user_col])
        return cls(
            warm_users=tuple(sorted(target_users)),
            cold_users=tuple(sorted(source_users - target_users)),
            items=tuple(items),
        )

    def check(self, mix: TrafficMix) -> None:
        """Refuses a mix the data cannot serve (e.g. cold users asked for, none in the file)."""
        weights = dict(zip(USER_KINDS, mix.weights(), strict=True))
        if weights["warm"] > 0 and not self.warm_users:
            raise ValueError("the mix asks for warm users but the features file has none")
        if weights["cold"] > 0 and not self.cold_users:
            raise ValueError("the mix asks for cold-start users but the features file has none")
        if mix.candidate_share > 0 and mix.candidates > 0 and not self.items:
            raise ValueError("candidate lists need target items from a features file")

    def sample(self, rng: random.Random, mix: TrafficMix) -> RequestSpec:
        kind = rng.choices(USER_KINDS, weights=mix.weights())[0]
        if kind == "warm":
            user = rng.choice(self.warm_users)
        elif kind == "cold":
            user = rng.choice(self.cold_users)
        else:
            user = f"loadtest-unknown-{rng.getrandbits(48):012x}"
        candidates: tuple[str, ...] = ()
        if self.items and mix.candidates > 0 and rng.random() < mix.candidate_share:
            candidates = tuple(rng.sample(self.items, min(mix.candidates, len(self.items))))
        return RequestSpec(kind=kind, user_id=user, candidates=candidates, k=mix.k)


# --- scheduling --------------------------------------------------------------------------------


def arrival_offsets(
    rate: float, duration_s: float, arrivals: str = "uniform", rng: random.Random | None = None
) -> Iterator[float]:
    """Intended send times (seconds from the start) of an open-loop run.

    uniform: i / rate exactly (no drift from summing floats); poisson: exponential gaps with
    mean 1 / rate, the arrival process of many independent users.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if arrivals == "uniform":
        for i in range(math.ceil(rate * duration_s)):
            offset = i / rate
            if offset >= duration_s:
                return
            yield offset
    elif arrivals == "poisson":
        rng = rng or random.Random(0)
        t = rng.expovariate(rate)
        while t < duration_s:
            yield t
            t += rng.expovariate(rate)
    else:
        raise ValueError(f"unknown arrival process {arrivals!r}")


# --- statistics --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values: the smallest value with at least q% of the
    samples at or below it. Never interpolates, so p99 is a latency that was actually observed.
    """
    if not sorted_values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, latencies_s: Sequence[float]) -> LatencySummary:
        values = sorted(latencies_s)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            count=len(values),
            p50_ms=percentile(values, 50) * 1e3,
            p95_ms=percentile(values, 95) * 1e3,
            p99_ms=percentile(values, 99) * 1e3,
            max_ms=values[-1] * 1e3,
            mean_ms=sum(values) / len(values) * 1e3,
        )


@dataclass(frozen=True)
class GroupSummary:
    requests: int
    errors: int
    error_rate: float
    latency: LatencySummary


class Recorder:
    """Collects one outcome per request: cheap appends while running, statistics at the end.

    Latency covers every completed request, errors included (a DEADLINE_EXCEEDED took its time);
    errors are budgeted separately through the error rate.
    """

    def __init__(self, warmup_s: float) -> None:
        self.warmup_s = warmup_s
        self.offsets = array("d")  # intended send time, s from start
        self.latencies = array("d")  # s, from the intended send time
        self.lags = array("d")  # s the client sent late (its own saturation)
        self.codes: list[str] = []
        self.kinds: list[str] = []
        self.with_candidates: list[bool] = []
        self.sent = 0
        self.window: list[float] = []  # latencies completed since the last progress line
        self.window_errors = 0

    def record(
        self, offset: float, spec: RequestSpec, latency: float, code: str, lag: float = 0.0
    ) -> None:
        self.offsets.append(offset)
        self.latencies.append(latency)
        self.lags.append(lag)
        self.codes.append(code)
        self.kinds.append(spec.kind)
        self.with_candidates.append(bool(spec.candidates))
        self.window.append(latency)
        if code != "OK":
            self.window_errors += 1

    def take_window(self) -> tuple[list[float], int]:
        window, errors = self.window, self.window_errors
        self.window, self.window_errors = [], 0
        return window, errors

    def measured(self) -> list[int]:
        return [i for i, off in enumerate(self.offsets) if off >= self.warmup_s]

    def group(self, indices: Sequence[int]) -> GroupSummary:
        errors = sum(1 for i in indices if self.codes[i] != "OK")
        n = len(indices)
        return GroupSummary(
            requests=n,
            errors=errors,
            error_rate=errors / n if n else 0.0,
            latency=LatencySummary.of([self.latencies[i] for i in indices]),
        )


@dataclass(frozen=True)
class RunSummary:
    mode: str
    target: str
    target_rate: float | None
    concurrency: int | None
    duration_s: float
    warmup_s: float
    requests: int
    ok: int
    errors: int
    error_rate: float
    throughput_rps: float  # completed requests per second in the measured window
    latency: LatencySummary
    errors_by_code: dict[str, int]
    by_user_kind: dict[str, GroupSummary]
    by_candidates: dict[str, GroupSummary]
    client_send_lag_p99_ms: float  # > a few ms: the generator itself was the bottleneck
    timeline: list[dict[str, Any]] = field(default_factory=list)


def summarize(rec: Recorder, cfg: LoadConfig, timeline: list[dict[str, Any]]) -> RunSummary:
    idx = rec.measured()
    overall = rec.group(idx)
    codes = Counter(rec.codes[i] for i in idx if rec.codes[i] != "OK")
    lags = sorted(rec.lags[i] for i in idx)
    return RunSummary(
        mode=cfg.mode,
        target=cfg.target,
        target_rate=cfg.rate if cfg.mode == "open" else None,
        concurrency=cfg.concurrency if cfg.mode == "closed" else None,
        duration_s=cfg.duration_s,
        warmup_s=cfg.warmup_s,
        requests=overall.requests,
        ok=overall.requests - overall.errors,
        errors=overall.errors,
        error_rate=overall.error_rate,
        throughput_rps=overall.requests / cfg.duration_s if cfg.duration_s > 0 else 0.0,
        latency=overall.latency,
        errors_by_code=dict(sorted(codes.items())),
        by_user_kind={
            kind: rec.group([i for i in idx if rec.kinds[i] == kind])
            for kind in USER_KINDS
            if any(rec.kinds[i] == kind for i in idx)
        },
        by_candidates={
            label: rec.group([i for i in idx if rec.with_candidates[i] == flag])
            for label, flag in (("with candidates", True), ("without candidates", False))
            if any(rec.with_candidates[i] == flag for i in idx)
        },
        client_send_lag_p99_ms=(percentile(lags, 99) * 1e3) if lags else 0.0,
        timeline=timeline,
    )


def check_budgets(summary: RunSummary, budgets: Budgets) -> list[str]:
    """Human-readable violations; empty when every budget holds."""
    violations = []
    if summary.requests == 0:
        violations.append("no request completed in the measured window")
    if budgets.p99_ms is not None and not summary.latency.p99_ms <= budgets.p99_ms:
        violations.append(f"p99 {summary.latency.p99_ms:.1f} ms > budget {budgets.p99_ms:g} ms")
    if budgets.max_error_rate is not None and summary.error_rate > budgets.max_error_rate:
        violations.append(
            f"error rate {summary.error_rate:.4%} > budget {budgets.max_error_rate:.4%} "
            f"({summary.errors_by_code})"
        )
    return violations


# --- running -----------------------------------------------------------------------------------

Sender = Callable[[RequestSpec], Awaitable[str]]  # returns "OK" or a gRPC status code name


async def run_load(
    cfg: LoadConfig,
    send: Sender,
    next_request: Callable[[], RequestSpec],
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[Recorder, list[dict[str, Any]]]:
    """Runs warm-up + duration in the configured mode; returns the outcomes and a timeline."""
    loop = asyncio.get_running_loop()
    rec = Recorder(cfg.warmup_s)
    total_s = cfg.warmup_s + cfg.duration_s
    start = loop.time() + 0.01
    inflight: set[asyncio.Task[None]] = set()
    timeline: list[dict[str, Any]] = []

    async def one(spec: RequestSpec, intended: float, lag: float) -> None:
        try:
            code = await send(spec)
        except Exception as exc:  # a bug in a sender must not silently stop the run
            code = f"CLIENT_ERROR:{type(exc).__name__}"
        rec.record(intended - start, spec, loop.time() - intended, code, lag)

    async def open_loop() -> None:
        rng = random.Random(cfg.seed + 1)
        for n, offset in enumerate(arrival_offsets(cfg.rate, total_s, cfg.arrivals, rng)):
            intended = start + offset
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif n % 64 == 0:
                await asyncio.sleep(0)  # behind schedule: still let replies be processed
            spec = next_request()
            rec.sent += 1
            if len(inflight) >= cfg.max_outstanding:
                rec.record(offset, spec, loop.time() - intended, "CLIENT_SATURATED")
                continue
            task = asyncio.create_task(one(spec, intended, max(0.0, loop.time() - intended)))
            inflight.add(task)
            task.add_done_callback(inflight.discard)

    async def closed_loop() -> None:
        end = start + total_s

        async def worker() -> None:
            while (now := loop.time()) < end:
                spec = next_request()
                rec.sent += 1
                await one(spec, now, 0.0)

        await asyncio.sleep(max(0.0, start - loop.time()))
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))

    async def ticker() -> None:
        second = 0
        while True:
            second += 1
            await asyncio.sleep(max(0.0, start + second - loop.time()))
            window, errors = rec.take_window()
            values = sorted(window)
            point = {
                "t_s": second,
                "sent": rec.sent,
                "completed": len(values),
                "errors": errors,
                "inflight": len(inflight),
                "p50_ms": percentile(values, 50) * 1e3 if values else None,
                "p99_ms": percentile(values, 99) * 1e3 if values else None,
            }
            timeline.append(point)
            if progress:
                phase = "warm-up" if second <= cfg.warmup_s else "measure"
                p50 = f"{point['p50_ms']:7.1f}" if values else "      -"
                p99 = f"{point['p99_ms']:7.1f}" if values else "      -"
                progress(
                    f"[{second:4d}s {phase:7s}] sent {rec.sent:7d}  done/s {len(values):6d}  "
                    f"err/s {errors:4d}  inflight {len(inflight):5d}  p50 {p50} ms  p99 {p99} ms"
                )

    tick = asyncio.create_task(ticker())
    try:
        await (open_loop() if cfg.mode == "open" else closed_loop())
        if inflight:  # replies still due: each ends by its deadline at the latest
            _, late = await asyncio.wait(set(inflight), timeout=cfg.timeout_ms / 1e3 + 5)
            for task in late:
                task.cancel()
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
    return rec, timeline


def import_stubs() -> tuple[Any, Any]:
    """The ranker's generated stubs: installed `xdrec` package, else the repository's copy."""
    try:
        from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "protogen"))
        from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
    return ranker_pb2, ranker_pb2_grpc


class RankerClient:
    """grpc.aio channels to the ranker (separate connections, used round robin)."""

    def __init__(self, target: str, channels: int, timeout_s: float) -> None:
        import grpc

        self._grpc = grpc
        self.ranker_pb2, ranker_pb2_grpc = import_stubs()
        # A local subchannel pool per channel gives each its own TCP connection, so load is not
        # serialised through one HTTP/2 connection and one server thread.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        self.channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, channels))
        ]
        self.stubs = [ranker_pb2_grpc.RankerServiceStub(c) for c in self.channels]
        self.timeout_s = timeout_s
        self._next = 0

    async def wait_ready(self, timeout_s: float) -> str | None:
        """None when the ranker reports SERVING in time, else why not."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(self.channels[0])
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=RANKER_HEALTH), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return None
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except self._grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= deadline:
                return last
            await asyncio.sleep(0.5)

    async def send(self, spec: RequestSpec) -> str:
        stub = self.stubs[self._next % len(self.stubs)]
        self._next += 1
        request = self.ranker_pb2.RecommendRequest(
            user_id=spec.user_id, k=spec.k, candidate_item_ids=list(spec.candidates)
        )
        try:
            await stub.Recommend(
                request,
                timeout=self.timeout_s,
                metadata=(("x-request-id", f"loadtest-{uuid.uuid4().hex[:16]}"),),
            )
        except self._grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


# --- safety ------------------------------------------------------------------------------------


def target_host(target: str) -> str | None:
    """The host part of a gRPC target; None for unix sockets (always local)."""
    t = target.strip()
    if t.startswith(("unix:", "unix-abstract:")):
        return None
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:", "passthrough:///"):
        if t.startswith(scheme):
            t = t[len(scheme) :]
            break
    t = t.split(",")[0]  # ipv4:a:1,b:2 lists: the first is checked, all are below
    if t.startswith("["):
        return t[1 : t.index("]")]
    if t.count(":") == 1:
        return t.rsplit(":", 1)[0]
    return t  # bare host, or a bare IPv6 address


def is_loopback_target(target: str) -> bool:
    """True when every address the target resolves to is a loopback address."""
    hosts = []
    t = target.strip()
    if t.startswith(("ipv4:", "ipv6:")):
        body = t.split(":", 1)[1]
        hosts = [target_host(part) for part in body.split(",")]
    else:
        hosts = [target_host(t)]
    for host in hosts:
        if host is None:
            continue
        if not host:
            return False
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = {info[4][0] for info in infos}
        if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return False
    return True


# --- reporting ---------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "      -" if math.isnan(value) else f"{value:7.1f}"


def format_summary(s: RunSummary, violations: list[str], budgets: Budgets) -> str:
    how = (
        f"open loop at {s.target_rate:g} req/s"
        if s.mode == "open"
        else f"closed loop with {s.concurrency} in flight"
    )
    lines = [
        f"== xdrec load test: {how}, {s.duration_s:g} s measured (+{s.warmup_s:g} s warm-up), "
        f"target {s.target}",
        f"{'':20s} {'requests':>9s} {'errors':>7s} {'err %':>7s} {'p50 ms':>7s} {'p95 ms':>7s} "
        f"{'p99 ms':>7s} {'max ms':>7s}",
    ]

    def row(label: str, g: GroupSummary) -> str:
        lat = g.latency
        return (
            f"{label:20s} {g.requests:9d} {g.errors:7d} {g.error_rate * 100:7.2f} "
            f"{_fmt(lat.p50_ms)} {_fmt(lat.p95_ms)} {_fmt(lat.p99_ms)} {_fmt(lat.max_ms)}"
        )

    lines.append(row("all", GroupSummary(s.requests, s.errors, s.error_rate, s.latency)))
    for kind, g in s.by_user_kind.items():
        lines.append(row(f"  {kind} users", g))
    for label, g in s.by_candidates.items():
        lines.append(row(f"  {label}", g))
    lines.append(f"throughput: {s.throughput_rps:.1f} req/s completed")
    errors = ", ".join(f"{k} {v}" for k, v in s.errors_by_code.items()) or "none"
    lines.append(f"errors by status: {errors}")
    if s.client_send_lag_p99_ms > 5:
        lines.append(
            f"warning: the generator sent late (p99 lag {s.client_send_lag_p99_ms:.1f} ms): "
            "it is near its own limit; latencies include that lag"
        )
    checks = []
    if budgets.p99_ms is not None:
        checks.append(f"p99 <= {budgets.p99_ms:g} ms")
    if budgets.max_error_rate is not None:
        checks.append(f"error rate <= {budgets.max_error_rate:.4%}")
    if checks:
        verdict = "PASS" if not violations else "FAIL: " + "; ".join(violations)
        lines.append(f"budgets ({', '.join(checks)}): {verdict}")
    return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """dataclasses -> dicts, NaN -> None (JSON has no NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


# --- command line ------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """`warm=0.6,cold=0.3,unknown=0.1` -> shares."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in USER_KINDS:
            raise argparse.ArgumentTypeError(f"expected warm=..,cold=..,unknown=.., got {text!r}")
        out[name] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadtest.py",
        description="Open-loop (default) or closed-loop load test of the xdrec ranker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", default="127.0.0.1:50053", help="ranker address HOST:PORT")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    p.add_argument("--features", type=Path, help="features.tsv: warm/cold users, target items")
    p.add_argument(
        "--mix", type=parse_mix, default={}, help="user shares, e.g. warm=6,cold=3,unknown=1"
    )
    p.add_argument("--candidate-share", type=float, default=TrafficMix.candidate_share)
    p.add_argument("--candidates", type=int, default=TrafficMix.candidates, help="ids per list")
    p.add_argument("-k", type=int, default=TrafficMix.k, help="items requested")
    p.add_argument("--mode", choices=("open", "closed"), default="open")
    p.add_argument("--rate", type=float, default=LoadConfig.rate, help="open loop: requests/s")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default=LoadConfig.arrivals)
    p.add_argument("--concurrency", type=int, default=LoadConfig.concurrency, help="closed loop")
    p.add_argument("--duration", type=float, default=LoadConfig.duration_s, help="measured s")
    p.add_argument("--warmup", type=float, default=LoadConfig.warmup_s, help="unmeasured s first")
    p.add_argument("--timeout-ms", type=float, default=LoadConfig.timeout_ms, help="deadline")
    p.add_argument("--channels", type=int, default=LoadConfig.channels, help="connections")
    p.add_argument("--max-outstanding", type=int, default=LoadConfig.max_outstanding)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-ready", type=float, default=30.0, help="s to wait for SERVING")
    p.add_argument("--p99-budget-ms", type=float, help="fail when p99 latency exceeds this")
    p.add_argument("--max-error-rate", type=float, help="fail above this error share (0..1)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")
    p.add_argument(
        "--metrics",
        default="",
        help="comma-separated /metrics URLs of the services (e.g. http://127.0.0.1:9091/metrics,...): "
        "report what the servers saw during the run",
    )
    sweep = p.add_argument_group("--find-max-rate: highest rate with p99 under budget, no errors")
    sweep.add_argument("--find-max-rate", action="store_true")
    sweep.add_argument("--start-rate", type=float, default=20.0)
    sweep.add_argument("--max-rate", type=float, default=20_000.0)
    sweep.add_argument("--step-factor", type=float, default=1.5, help="rate multiplier per step")
    sweep.add_argument("--step-duration", type=float, default=10.0, help="measured s per step")
    sweep.add_argument("--refine", type=int, default=2, help="bisection steps after a failure")
    return p


async def _run(args: argparse.Namespace) -> int:
    out = sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    mix = TrafficMix(candidate_share=args.candidate_share, candidates=args.candidates, k=args.k)
    if args.mix:  # kinds left out of an explicit --mix get no traffic
        mix = dataclasses.replace(mix, **{k: args.mix.get(k, 0.0) for k in USER_KINDS})
    elif args.features is None:
        mix = dataclasses.replace(mix, warm=0.0, cold=0.0, unknown=1.0, candidate_share=0.0)
        say("note: no --features file: every request is for an unknown user, no candidate lists")
    try:
        workload = Workload.from_features(args.features)
        workload.check(mix)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    budgets = Budgets(p99_ms=args.p99_budget_ms, max_error_rate=args.max_error_rate)
    base = LoadConfig(
        target=args.target,
        mode=args.mode,
        rate=args.rate,
        arrivals=args.arrivals,
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_ms=args.timeout_ms,
        channels=args.channels,
        max_outstanding=args.max_outstanding,
        seed=args.seed,
    )
    rng = random.Random(args.seed)
    client = RankerClient(args.target, args.channels, args.timeout_ms / 1e3)
    try:
        why = await client.wait_ready(args.wait_ready)
        if why is not None:
            print(f"error: {args.target} is not SERVING {RANKER_HEALTH}: {why}", file=sys.stderr)
            return EXIT_NOT_READY
        say(
            f"workload: {len(workload.warm_users)} warm, {len(workload.cold_users)} cold users, "
            f"{len(workload.items)} target items; mix {mix}"
        )

        async def one_run(cfg: LoadConfig) -> RunSummary:
            rec, timeline = await run_load(
                cfg,
                client.send,
                lambda: workload.sample(rng, mix),
                progress=None if args.quiet else say,
            )
            return summarize(rec, cfg, timeline)

        metrics_urls = [u for u in args.metrics.split(",") if u]
        before = scrape_all(metrics_urls)
        if not args.find_max_rate:
            summary = await one_run(base)
            violations = check_budgets(summary, budgets)
            say(format_summary(summary, violations, budgets))
            result = {
                "config": base,
                "mix": mix,
                "budgets": budgets,
                "summary": summary,
                "violations": violations,
                "passed": not violations,
            }
            code = EXIT_OK if not violations else EXIT_BUDGET
        else:
            result, code = await find_max_rate(args, base, budgets, one_run, say)
            result["mix"] = mix
        if metrics_urls:
            server_metrics = _server_metrics()
            server_side = server_metrics.summarize(
                server_metrics.delta(before, scrape_all(metrics_urls))
            )
            say(server_metrics.format_summary(server_side))
            result["server_metrics"] = server_side
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
            say(f"results written to {args.out}")
        return code
    finally:
        await client.close()


def _server_metrics():  # noqa: ANN202 - the sibling module bench/server_metrics.py
    """Imported on demand so the load test runs without prometheus_client unless --metrics."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import server_metrics

    return server_metrics


def scrape_all(urls: list[str]) -> dict:
    """Samples of every endpoint merged (their label sets differ by ``service``)."""
    server_metrics = _server_metrics()
    samples: dict = {}
    for url in urls:
        try:
            samples.update(server_metrics.scrape(url))
        except OSError as exc:
            print(f"warning: could not scrape {url}: {exc}", file=sys.stderr)
    return samples


async def find_max_rate(
    args: argparse.Namespace,
    base: LoadConfig,
    budgets: Budgets,
    one_run: Callable[[LoadConfig], Awaitable[RunSummary]],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], int]:
    """Geometric steps up until p99 > budget or any error, then bisection between the last
    passing and the first failing rate. "Sustained" = a whole step of --step-duration passes.
    """
    assert budgets.p99_ms is not None, "checked in main()"
    step_budgets = Budgets(p99_ms=budgets.p99_ms, max_error_rate=0.0)
    steps: list[dict[str, Any]] = []

    async def attempt(rate: float) -> bool:
        cfg = dataclasses.replace(base, mode="open", rate=rate, duration_s=args.step_duration)
        say(f"-- step: {rate:.1f} req/s for {args.step_duration:g} s")
        summary = await one_run(cfg)
        violations = check_budgets(summary, step_budgets)
        say(format_summary(summary, violations, step_budgets))
        steps.append({"rate": rate, "passed": not violations, "summary": summary})
        return not violations

    best: float | None = None
    failed: float | None = None
    rate = args.start_rate
    while rate <= args.max_rate:
        if await attempt(rate):
            best = rate
            rate *= args.step_factor
        else:
            failed = rate
            break
    if best is not None and failed is not None:
        low, high = best, failed
        for _ in range(args.refine):
            mid = (low + high) / 2
            if await attempt(mid):
                low = best = mid
            else:
                high = mid
    if best is None:
        say(f"== no rate passed: even {args.start_rate:g} req/s broke the budget")
    else:
        say(
            f"== highest sustained rate: {best:.1f} req/s with p99 <= {budgets.p99_ms:g} ms "
            "and no errors"
        )
    result = {
        "config": base,
        "budgets": step_budgets,
        "max_sustained_rate": best,
        "first_failing_rate": failed,
        "steps": steps,
        "passed": best is not None,
    }
    return result, EXIT_OK if best is not None else EXIT_BUDGET


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.allow_remote and not is_loopback_target(args.target):
        print(
            f"error: refusing to load-test {args.target!r}: not a loopback address. "
            "Pass --allow-remote if you really mean to load another machine.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for name in ("rate", "duration", "timeout_ms", "step_factor"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return EXIT_USAGE
    if args.find_max_rate and args.step_factor <= 1:
        print("error: --step-factor must be above 1", file=sys.stderr)
        return EXIT_USAGE
    if args.find_max_rate and args.p99_budget_ms is None:
        print("error: --find-max-rate needs --p99-budget-ms", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
