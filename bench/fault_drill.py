#!/usr/bin/env python3
"""Fault drill: the three services as real processes, Recommends at a fixed rate, faults injected.

    python bench/fault_drill.py --model-repo models --features features.tsv --out drill.json

Phases, in order (each counts its answers by status and by fallback flag):

1. ``capacity``: closed loop with ``--concurrency`` requests in flight; capacity = normal
   (non-degraded) answers per second;
2. ``baseline``: open loop at ``--rate-share`` of capacity;
3. ``scorer_fault`` / ``encoder_fault``: the same rate; the service is killed with SIGKILL,
   stays down ``--down-s`` seconds, and is restarted on the same port; the phase ends
   ``--settle-s`` after it reports SERVING again. Recorded: failures by status (target 0: the
   ranker answers by popularity, flagged), and the time from the restarted service reporting
   SERVING to the ranker's first normal answer (target <= 1 s);
4. ``overload``: open loop at ``--overload`` x capacity; goodput = OK answers within the deadline
   per second (target >= 90% of capacity), the rest should be fast RESOURCE_EXHAUSTED.

The JSON report has every phase and a ``budgets`` section (``--check`` makes a missed budget exit
1). Load generation reuses ``bench/loadtest.py``'s workload (users and items from features.tsv).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import loadtest  # noqa: E402 - the sibling bench/loadtest.py

from services.common.endpoints import free_loopback_port  # noqa: E402

EXIT_OK, EXIT_BUDGET = 0, 1
HEALTH_NAMES = {
    "encoder": "xdrec.encoder.v1.EncoderService",
    "scorer": "xdrec.scorer.v1.ScorerService",
    "ranker": "xdrec.ranker.v1.RankerService",
}


@dataclass(frozen=True)
class DrillConfig:
    """How long each phase lasts and how hard it pushes (defaults: the full drill)."""

    capacity_s: float = 10.0
    concurrency: int = 32
    rate_share: float = 0.5
    baseline_s: float = 5.0
    down_s: float = 3.0
    settle_s: float = 3.0
    overload: float = 3.0
    overload_s: float = 10.0
    timeout_ms: float = 1000.0
    channels: int = 4
    ranker_flags: tuple[str, ...] = ()
    split_cpus: bool = False


@dataclass(frozen=True)
class Budgets:
    """What the drill must show (``--check``)."""

    max_failed_during_fault: int = 0
    max_recovery_s: float = 1.0
    min_goodput_share: float = 0.9


# --- processes -----------------------------------------------------------------------------------


def cpu_split() -> tuple[set[int], set[int]]:
    """(services' CPUs, load generator's CPUs): halves of this process's CPUs (``--split-cpus``).

    Why optional: at 3x capacity the Python load generator spends about as much CPU per request
    as the services; sharing cores it takes capacity from them, on half the cores it can fall
    behind (then requests wait in the client, which ``client_send_lag_p99_ms`` shows). Split only
    where the client's half clearly outruns the services' half. With one CPU (or no
    ``taskset``), both share everything.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def health(address: str, name: str, timeout: float = 0.5) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class ServiceProcess:
    """One service run as ``python -m services.<name>`` on a fixed loopback port."""

    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    cpus: set[int] | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"{self.name}.{self.starts}.log").open("wb")
        base = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
        pin = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        self.proc = subprocess.Popen(
            [*pin, sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env={
                **base,
                "XDREC_HOST": "127.0.0.1",
                "XDREC_PORT": str(self.port),
                "XDREC_METRICS_PORT": "0",
                "XDREC_ACCESS_LOG": "false",
                "XDREC_LOG_LEVEL": "WARNING",
                **self.env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_serving(self, timeout_s: float = 60.0) -> float:
        """Blocks until SERVING; returns the ``time.monotonic()`` instant it was seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see its log")
            if health(self.address, HEALTH_NAMES[self.name]):
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} at {self.address} not SERVING after {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye - what a crash or an OOM kill looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def suite(
    model_repo: Path,
    features: Path,
    log_dir: Path,
    ranker_flags: Sequence[str] = (),
    cpus: set[int] | None = None,
) -> Iterator[dict[str, ServiceProcess]]:
    """Encoder and scorer, then the ranker pointing at them; all SERVING; stopped on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_loopback_port() for name in HEALTH_NAMES}
    ranker_env = {
        "XDREC_ENCODER": f"127.0.0.1:{ports['encoder']}",
        "XDREC_SCORER": f"127.0.0.1:{ports['scorer']}",
    }
    for flag in ranker_flags:  # --max-in-flight=8 -> XDREC_MAX_IN_FLIGHT=8
        key, _, value = flag.lstrip("-").partition("=")
        ranker_env["XDREC_" + key.replace("-", "_").upper()] = value
    services = {
        "encoder": ServiceProcess(
            "encoder",
            ports["encoder"],
            {"XDREC_MODEL_REPO": str(model_repo), "XDREC_FEATURES": str(features)},
            log_dir,
            cpus,
        ),
        "scorer": ServiceProcess(
            "scorer",
            ports["scorer"],
            {"XDREC_MODEL_REPO": str(model_repo), "XDREC_PROVIDERS": "cpu"},
            log_dir,
            cpus,
        ),
        "ranker": ServiceProcess("ranker", ports["ranker"], ranker_env, log_dir, cpus),
    }
    try:
        for service in services.values():
            service.start()
        for service in services.values():
            service.wait_serving()
        yield services
    finally:
        for service in services.values():
            service.stop()


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float
    done: float
    code: str
    fallback: str
    kind: str


@dataclass
class PhaseReport:
    name: str
    duration_s: float
    sent: int
    by_status: dict[str, int]
    by_fallback: dict[str, int]
    failed: int
    ok_per_s: float
    normal_per_s: float
    ok_p50_ms: float | None
    ok_p99_ms: float | None
    shed_p99_ms: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def degraded(answer: Answer) -> bool:
    """An answer by popularity because a dependency could not answer (SCORER/ENCODER_...)."""
    return answer.fallback.endswith("_UNAVAILABLE")


def report(name: str, answers: list[Answer], duration_s: float, **extra: Any) -> PhaseReport:
    ok = sorted(a.done - a.sent for a in answers if a.code == "OK")
    shed = sorted(a.done - a.sent for a in answers if a.code == "RESOURCE_EXHAUSTED")
    normal = [a for a in answers if a.code == "OK" and not degraded(a)]

    def ms(values: list[float], q: float) -> float | None:
        return round(loadtest.percentile(values, q) * 1000.0, 2) if values else None

    return PhaseReport(
        name=name,
        duration_s=round(duration_s, 3),
        sent=len(answers),
        by_status=dict(Counter(a.code for a in answers)),
        by_fallback=dict(Counter(a.fallback for a in answers if a.code == "OK")),
        failed=sum(1 for a in answers if a.code != "OK"),
        ok_per_s=round(len(ok) / duration_s, 1) if duration_s > 0 else 0.0,
        normal_per_s=round(len(normal) / duration_s, 1) if duration_s > 0 else 0.0,
        ok_p50_ms=ms(ok, 50),
        ok_p99_ms=ms(ok, 99),
        shed_p99_ms=ms(shed, 99),
        extra=extra,
    )


class Driver:
    """Sends Recommends from the load test's workload and records every answer."""

    def __init__(self, target: str, features: Path, config: DrillConfig) -> None:
        import random

        self.ranker_pb2, ranker_grpc = loadtest.import_stubs()
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        self.channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(config.channels)
        ]
        self.stubs = [ranker_grpc.RankerServiceStub(c) for c in self.channels]
        self.workload = loadtest.Workload.from_features(features)
        self.mix = loadtest.TrafficMix()
        self.workload.check(self.mix)
        self.rng = random.Random(0)
        self.timeout_s = config.timeout_ms / 1000.0
        self.answers: list[Answer] = []
        self.send_lag_s: list[float] = []
        """Open loop: how late each request left versus its schedule (a lagging client measures
        itself, not the services)."""
        self._next = 0

    async def one(self) -> Answer:
        spec = self.workload.sample(self.rng, self.mix)
        stub = self.stubs[self._next % len(self.stubs)]
        self._next += 1
        request = self.ranker_pb2.RecommendRequest(
            user_id=spec.user_id, k=spec.k, candidate_item_ids=list(spec.candidates)
        )
        sent = time.monotonic()
        try:
            reply = await stub.Recommend(request, timeout=self.timeout_s)
            code, flag = "OK", self.ranker_pb2.Fallback.Name(reply.fallback)
        except grpc.aio.AioRpcError as exc:
            code, flag = exc.code().name, ""
        answer = Answer(sent, time.monotonic(), code, flag, spec.kind)
        self.answers.append(answer)
        return answer

    async def closed_loop(self, concurrency: int, duration_s: float) -> list[Answer]:
        start = len(self.answers)
        stop_at = time.monotonic() + duration_s

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await self.one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return self.answers[start:]

    async def open_loop(self, rate: float, until: asyncio.Event | float) -> list[Answer]:
        """Sends at ``rate`` per second until ``until`` (an event, or a duration in seconds)."""
        start_index = len(self.answers)
        started = time.monotonic()
        tasks: set[asyncio.Task[Answer]] = set()
        i = 0
        while True:
            now = time.monotonic()
            if isinstance(until, float) and now - started >= until:
                break
            if isinstance(until, asyncio.Event) and until.is_set():
                break
            due = started + i / rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            self.send_lag_s.append(now - due)
            task = asyncio.create_task(self.one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
        return self.answers[start_index:]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


# --- the drill -----------------------------------------------------------------------------------


async def fault_phase(
    driver: Driver, service: ServiceProcess, rate: float, config: DrillConfig, say: Any
) -> PhaseReport:
    """Kill -9, stay down, restart on the same port; under load at ``rate`` throughout."""
    done = asyncio.Event()
    marks: dict[str, float] = {}

    async def inject() -> None:
        await asyncio.sleep(0.5)
        marks["killed"] = time.monotonic()
        await asyncio.to_thread(service.kill)
        say(f"  {service.name} killed (SIGKILL)")
        await asyncio.sleep(config.down_s)
        service.start()
        marks["restarted"] = time.monotonic()
        marks["serving"] = await asyncio.to_thread(service.wait_serving)
        say(
            f"  {service.name} back: SERVING {marks['serving'] - marks['restarted']:.2f} s after start"
        )
        await asyncio.sleep(config.settle_s)
        done.set()

    started = time.monotonic()
    injector = asyncio.create_task(inject())
    answers = await driver.open_loop(rate, done)
    await injector
    back = marks["serving"]
    # recovery: from the restarted service reporting SERVING to the ranker's first normal
    # (not degraded) answer completed after that instant
    first_normal = min(
        (a.done for a in answers if a.done >= back and a.code == "OK" and not degraded(a)),
        default=None,
    )
    down = [a for a in answers if marks["killed"] <= a.sent < back]
    return report(
        f"{service.name}_fault",
        answers,
        time.monotonic() - started,
        down_s=round(back - marks["killed"], 3),
        restart_to_serving_s=round(back - marks["restarted"], 3),
        recovery_s=None if first_normal is None else round(max(first_normal - back, 0.0), 3),
        answered_while_down=len(down),
        degraded_while_down=sum(1 for a in down if degraded(a)),
    )


async def drill(
    services: dict[str, ServiceProcess], features: Path, config: DrillConfig, say: Any
) -> dict[str, Any]:
    driver = Driver(services["ranker"].address, features, config)
    phases: list[PhaseReport] = []
    try:
        say(f"capacity: closed loop, {config.concurrency} in flight, {config.capacity_s} s")
        await driver.closed_loop(config.concurrency, 1.0)  # warm-up, not counted
        answers = await driver.closed_loop(config.concurrency, config.capacity_s)
        phases.append(report("capacity", answers, config.capacity_s))
        capacity = phases[-1].normal_per_s
        rate = max(capacity * config.rate_share, 1.0)
        say(f"  capacity {capacity:.0f} normal answers/s; drill rate {rate:.0f}/s")

        say(f"baseline: {rate:.0f}/s for {config.baseline_s} s")
        answers = await driver.open_loop(rate, config.baseline_s)
        phases.append(report("baseline", answers, config.baseline_s))

        for name in ("scorer", "encoder"):
            say(f"{name}_fault: {rate:.0f}/s, kill -9, {config.down_s} s down, restart")
            phases.append(await fault_phase(driver, services[name], rate, config, say))
            last = phases[-1]
            say(
                f"  failed {last.failed} of {last.sent}; recovery {last.extra['recovery_s']} s; "
                f"fallbacks {last.by_fallback}"
            )

        over = capacity * config.overload
        say(f"overload: {over:.0f}/s ({config.overload}x capacity) for {config.overload_s} s")
        driver.send_lag_s.clear()
        answers = await driver.open_loop(over, config.overload_s)
        lag = sorted(driver.send_lag_s)
        phases.append(
            report(
                "overload",
                answers,
                config.overload_s,
                offered_per_s=round(over, 1),
                client_send_lag_p99_ms=round(loadtest.percentile(lag, 99) * 1000, 2)
                if lag
                else None,
            )
        )
        say(f"  goodput {phases[-1].ok_per_s:.0f}/s; statuses {phases[-1].by_status}")
    finally:
        await driver.close()
    return {"capacity_per_s": capacity, "rate_per_s": round(rate, 1), "phases": phases}


def check(result: dict[str, Any], budgets: Budgets) -> list[str]:
    """The budgets the drill missed (empty: all met)."""
    missed = []
    phases = {p.name: p for p in result["phases"]}
    for name in ("scorer_fault", "encoder_fault"):
        phase = phases[name]
        if phase.failed > budgets.max_failed_during_fault:
            missed.append(f"{name}: {phase.failed} failed requests {phase.by_status}")
        recovery = phase.extra["recovery_s"]
        if recovery is None or recovery > budgets.max_recovery_s:
            missed.append(f"{name}: recovery {recovery} s > {budgets.max_recovery_s} s")
    goodput, capacity = phases["overload"].ok_per_s, result["capacity_per_s"]
    if goodput < budgets.min_goodput_share * capacity:
        missed.append(
            f"overload: goodput {goodput}/s < {budgets.min_goodput_share:.0%} of capacity "
            f"{capacity}/s"
        )
    return missed


def build_parser() -> argparse.ArgumentParser:
    d = DrillConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-repo", type=Path, required=True, help="model repository root")
    p.add_argument("--features", type=Path, required=True, help="features.tsv (the workload)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--logs", type=Path, help="service logs (default: next to --out or ./drill)")
    p.add_argument("--capacity-s", type=float, default=d.capacity_s)
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--rate-share", type=float, default=d.rate_share, help="of capacity")
    p.add_argument("--baseline-s", type=float, default=d.baseline_s)
    p.add_argument("--down-s", type=float, default=d.down_s)
    p.add_argument("--settle-s", type=float, default=d.settle_s)
    p.add_argument("--overload", type=float, default=d.overload, help="x capacity")
    p.add_argument("--overload-s", type=float, default=d.overload_s)
    p.add_argument("--timeout-ms", type=float, default=d.timeout_ms)
    p.add_argument("--channels", type=int, default=d.channels)
    p.add_argument(
        "--ranker-flag",
        action="append",
        default=[],
        help="extra ranker flag as --name=value (repeatable), e.g. --ranker-flag=--max-in-flight=16",
    )
    p.add_argument(
        "--split-cpus",
        action="store_true",
        help="pin the services to one half of the CPUs and the load generator to the other",
    )
    p.add_argument(
        "--min-goodput-share",
        type=float,
        default=Budgets.min_goodput_share,
        help="budget: goodput at --overload x capacity as a share of capacity (the target: 0.9)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = DrillConfig(
        capacity_s=args.capacity_s,
        concurrency=args.concurrency,
        rate_share=args.rate_share,
        baseline_s=args.baseline_s,
        down_s=args.down_s,
        settle_s=args.settle_s,
        overload=args.overload,
        overload_s=args.overload_s,
        timeout_ms=args.timeout_ms,
        channels=args.channels,
        ranker_flags=tuple(args.ranker_flag),
        split_cpus=args.split_cpus,
    )
    logs = args.logs or ((args.out.parent / "logs") if args.out else Path("drill"))

    def say(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    started = time.monotonic()
    service_cpus, client_cpus = cpu_split() if config.split_cpus else (None, None)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
        say(
            f"services on CPUs {sorted(service_cpus or ())}, load generator on {sorted(client_cpus)}"
        )
    with suite(args.model_repo, args.features, logs, config.ranker_flags, service_cpus) as services:
        result = asyncio.run(drill(services, args.features, config, say))
    budgets = Budgets(min_goodput_share=args.min_goodput_share)
    missed = check(result, budgets)
    out = {
        "config": asdict(config),
        "budgets": asdict(budgets),
        "missed": missed,
        "wall_s": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
        **{**result, "phases": [asdict(p) for p in result["phases"]]},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        say(f"wrote {args.out}")
    say("budgets met" if not missed else "budgets MISSED: " + "; ".join(missed))
    return EXIT_BUDGET if (missed and args.check) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
