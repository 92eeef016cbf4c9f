#!/usr/bin/env python3
"""Fault drill: the three services as real processes, Recommends at a fixed rate, faults injected.

    python bench/fault_drill.py --model-repo models --features features.tsv --out drill.json

Phases, in order (each counts its answers by status and by fallback flag):

1. ``capacity``: closed loop with ``--concurrency`` requests in flight; capacity = normal
   (non-degraded) answers per second, measured in this run by the same generator processes
   that later overload it;
2. ``baseline``: open loop at ``--rate-share`` of capacity;
3. ``scorer_fault`` / ``encoder_fault``: the same rate; the service is killed with SIGKILL,
   stays down ``--down-s`` seconds, and is restarted on the same port; the phase ends
   ``--settle-s`` after it reports SERVING again. Recorded: failures by status (target 0: the
   ranker answers by popularity, flagged), and the time from the restarted service reporting
   SERVING to the ranker's first normal answer (target <= 1 s);
4. ``overload``: open loop at ``--overload`` x capacity; goodput = normal (not degraded) answers
   within the deadline per second (target >= 90% of capacity), p99 of the accepted (OK)
   requests within ``--p99-budget-ms``; the rest should be fast RESOURCE_EXHAUSTED.

All load comes from ``--generators`` separate processes per phase (``bench/drill_generator.py``;
with ``--split-cpus`` on CPUs of their own; a fault phase ends them with SIGUSR1 once the
restarted service has settled), each reporting its send lag, its sent rate and its CPU share: a run where the generators could not keep to the
schedule is marked ``generator_bound`` and its goodput is not a measure of the server. The
ranker's own counters (requests by status, shed by reason, breaker openings) are scraped from
its /metrics before and after the overload, so the server's view sits next to the client's.

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
import server_metrics  # noqa: E402 - the sibling bench/server_metrics.py

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
    generators: int = 1
    faults: bool = True
    max_generator_lag_ms: float = 50.0


@dataclass(frozen=True)
class Budgets:
    """What the drill must show (``--check``)."""

    max_failed_during_fault: int = 0
    max_recovery_s: float = 1.0
    min_goodput_share: float = 0.9
    p99_budget_ms: float = 500.0
    """p99 latency of the requests accepted (answered OK) at overload, sent to answered."""


# --- processes -----------------------------------------------------------------------------------


def cpu_split() -> tuple[set[int], set[int]]:
    """(services' CPUs, load generator's CPUs): halves of this process's CPUs (``--split-cpus``).

    Why optional: at 3x capacity the Python load generator spends CPU per request too; sharing
    cores it takes capacity from the services and, worse, its own queueing at the busiest moments
    looks like server latency. On separate CPUs each side's work is its own; capacity is then
    the services' capacity on their half, measured in the same run, so the goodput share stays
    a fair ratio. A generator that still falls behind shows it (``generator.send_lag_p99_ms``,
    ``generator_bound``). With one CPU (or no ``taskset``), both share everything.
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
    args: tuple[str, ...] = ()  # command-line flags after ``python -m services.<name>``
    cwd: Path | None = None  # the code to run (default: this checkout)
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
            [*pin, sys.executable, "-m", f"services.{self.name}", *self.args],
            cwd=self.cwd or ROOT,
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
        "XDREC_METRICS_PORT": str(free_loopback_port()),  # the server's own view of the overload
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


# --- load from separate generator processes ------------------------------------------------------

GENERATOR = HERE / "drill_generator.py"
START_MARGIN_S = 4.0
"""Seconds between launching the generator processes and their common start: time to import
gRPC, read the workload and connect (a process that is late anyway shows it in its lag)."""


async def generate(
    target: str,
    features: Path,
    config: DrillConfig,
    work_dir: Path,
    *,
    mode: str,
    duration_s: float,
    rate: float = 0.0,
    warmup_s: float = 0.0,
    start_at: float | None = None,
    stop: asyncio.Event | None = None,
    name: str = "",
) -> tuple[list[Answer], dict[str, Any]]:
    """Runs ``config.generators`` processes (``bench/drill_generator.py``) from one start instant;
    returns their answers and what the generators themselves managed (sent rate, lag, CPU).

    ``stop``: when set, the processes end early (SIGUSR1); ``duration_s`` is then an upper bound.
    """
    n = max(config.generators, 1)
    work_dir.mkdir(parents=True, exist_ok=True)
    if start_at is None:
        start_at = time.monotonic() + START_MARGIN_S + warmup_s
    name = name or mode
    procs = []
    for i in range(n):
        job = {
            "target": target,
            "features": str(features),
            "mode": mode,
            "rate": rate / n,
            "concurrency": max(config.concurrency // n, 1),
            "duration_s": duration_s,
            "start_at": start_at,
            "timeout_s": config.timeout_ms / 1000.0,
            "channels": max(config.channels // n, 1),
            "seed": i,
            "warmup_s": warmup_s,
        }
        job_path, out_path = work_dir / f"{name}-{i}.job.json", work_dir / f"{name}-{i}.out.json"
        job_path.write_text(json.dumps(job))
        log = (work_dir / f"{name}-{i}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(GENERATOR), str(job_path), str(out_path), stdout=log, stderr=log
        )
        procs.append((proc, out_path))
    if stop is not None:
        waiting = [asyncio.create_task(proc.wait()) for proc, _ in procs]
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({*waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for proc, _ in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGUSR1)
    answers: list[Answer] = []
    scheduled: list[float] = []
    stats = []
    for proc, out_path in procs:
        if await proc.wait() != 0:
            raise RuntimeError(f"load generator failed; see {out_path.with_suffix('.log')}")
        result = json.loads(out_path.read_text())
        for sched, sent, done, code, flag in result.pop("rows"):
            answers.append(Answer(sent, done, code, flag, ""))
            scheduled.append(sched)
        stats.append(result)
    lag_p99 = max((r["send_lag_ms"]["p99"] or 0.0) for r in stats)
    ran_s = max(r["wall_s"] for r in stats) if stop is not None else duration_s
    sent_per_s = sum(r["sent"] for r in stats) / max(ran_s, 1e-9)
    summary: dict[str, Any] = {
        "processes": n,
        "cpus": sorted(os.sched_getaffinity(0)),
        "sent_per_s": round(sent_per_s, 1),
        "send_lag_p99_ms": round(lag_p99, 2),
        "send_lag_max_ms": round(max((r["send_lag_ms"]["max"] or 0.0) for r in stats), 2),
        "cpu_share": [r["cpu_share"] for r in stats],
    }
    if mode == "open":
        summary["offered_per_s"] = round(rate, 1)
        summary["generator_bound"] = bool(
            lag_p99 > config.max_generator_lag_ms or sent_per_s < 0.95 * rate
        )
        late = [a.done - s for a, s in zip(answers, scheduled, strict=True) if a.code == "OK"]
        summary["ok_p99_from_schedule_ms"] = (
            round(loadtest.percentile(sorted(late), 99) * 1000, 2) if late else None
        )
    return answers, summary


def ranker_view(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any]:
    """What the ranker's own /metrics say happened between two scrapes."""
    changed = server_metrics.delta(before, after)

    def by(name: str, label: str, **match: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (sample, labels), value in changed.items():
            labels_d = dict(labels)
            if sample == name and value and all(labels_d.get(k) == v for k, v in match.items()):
                out[labels_d.get(label, "")] = int(out.get(labels_d.get(label, ""), 0) + value)
        return out

    return {
        "recommend_by_status": by(
            "xdrec_rpc_requests_total", "code", service="ranker", method="Recommend"
        ),
        "shed_at_edge": by("xdrec_shed_total", "reason", service="ranker"),
        "shed_by_reason": by("xdrec_ranker_shed_total", "reason"),
        "fallback_answers": by("xdrec_ranker_fallback_answers_total", "reason"),
        "breaker_opened": by("xdrec_ranker_breaker_transitions_total", "dependency", state="open"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_cpu(services: dict[str, ServiceProcess]) -> dict[str, float]:
    return {name: cpu_seconds(s.proc.pid) for name, s in services.items() if s.proc is not None}


def scrape_ranker(port: int) -> dict[Any, float]:
    try:
        return server_metrics.scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return {}


# --- the drill -----------------------------------------------------------------------------------


async def fault_phase(
    target: str,
    features: Path,
    service: ServiceProcess,
    rate: float,
    config: DrillConfig,
    say: Any,
    work_dir: Path,
) -> PhaseReport:
    """Kill -9, stay down, restart on the same port; under load at ``rate`` throughout (from the
    generator processes, ended once the restarted service has settled)."""
    done = asyncio.Event()
    marks: dict[str, float] = {}
    start_at = time.monotonic() + START_MARGIN_S

    async def inject() -> None:
        await asyncio.sleep(max(start_at - time.monotonic(), 0.0) + 0.5)
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

    injector = asyncio.create_task(inject())
    answers, gen = await generate(
        target,
        features,
        config,
        work_dir,
        mode="open",
        duration_s=600.0,
        rate=rate,
        start_at=start_at,
        stop=done,
        name=f"{service.name}_fault",
    )
    await injector
    started = start_at
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
        generator=gen,
        down_s=round(back - marks["killed"], 3),
        restart_to_serving_s=round(back - marks["restarted"], 3),
        recovery_s=None if first_normal is None else round(max(first_normal - back, 0.0), 3),
        answered_while_down=len(down),
        degraded_while_down=sum(1 for a in down if degraded(a)),
    )


async def drill(
    services: dict[str, ServiceProcess],
    features: Path,
    config: DrillConfig,
    say: Any,
    work_dir: Path,
    budgets: Budgets,
) -> dict[str, Any]:
    target = services["ranker"].address
    metrics_port = int(services["ranker"].env["XDREC_METRICS_PORT"])
    phases: list[PhaseReport] = []
    say(
        f"capacity: closed loop, {config.concurrency} in flight from {config.generators} "
        f"generator process(es), {config.capacity_s} s"
    )
    answers, gen = await generate(
        target, features, config, work_dir, mode="closed", duration_s=config.capacity_s,
        warmup_s=1.0,
    )  # fmt: skip
    phases.append(report("capacity", answers, config.capacity_s, generator=gen))
    capacity = phases[-1].normal_per_s
    rate = max(capacity * config.rate_share, 1.0)
    say(f"  capacity {capacity:.0f} normal answers/s; drill rate {rate:.0f}/s")

    if config.faults:
        say(f"baseline: {rate:.0f}/s for {config.baseline_s} s")
        answers, gen = await generate(
            target, features, config, work_dir, mode="open", duration_s=config.baseline_s,
            rate=rate, name="baseline",
        )  # fmt: skip
        phases.append(report("baseline", answers, config.baseline_s, generator=gen))
        for name in ("scorer", "encoder"):
            say(f"{name}_fault: {rate:.0f}/s, kill -9, {config.down_s} s down, restart")
            phases.append(
                await fault_phase(target, features, services[name], rate, config, say, work_dir)
            )
            last = phases[-1]
            say(
                f"  failed {last.failed} of {last.sent}; recovery "
                f"{last.extra['recovery_s']} s; fallbacks {last.by_fallback}"
            )

    over = capacity * config.overload
    say(f"overload: {over:.0f}/s ({config.overload}x capacity) for {config.overload_s} s")
    before, cpu_before = scrape_ranker(metrics_port), service_cpu(services)
    answers, gen = await generate(
        target, features, config, work_dir, mode="open", duration_s=config.overload_s, rate=over
    )
    server = ranker_view(before, scrape_ranker(metrics_port))
    # Each service's CPU share of the overload (seconds of CPU per second; generator start-up
    # included) and the machine's load: what the services could use, next to what they did.
    spent = service_cpu(services)
    window = config.overload_s + START_MARGIN_S
    server["cpu_share"] = {
        name: round((spent[name] - cpu_before.get(name, 0.0)) / window, 3) for name in spent
    }
    server["load_average_1m"] = os.getloadavg()[0]
    timeout_s = config.timeout_ms / 1000.0
    good = [
        a for a in answers if a.code == "OK" and not degraded(a) and a.done - a.sent <= timeout_s
    ]
    goodput = len(good) / config.overload_s
    phases.append(
        report(
            "overload",
            answers,
            config.overload_s,
            offered_per_s=round(over, 1),
            goodput_per_s=round(goodput, 1),
            goodput_share=round(goodput / capacity, 3) if capacity else None,
            generator=gen,
            server=server,
        )
    )
    last = phases[-1]
    say(
        f"  goodput {goodput:.0f}/s = {goodput / capacity:.0%} of capacity; p99 of accepted "
        f"{last.ok_p99_ms} ms (budget {budgets.p99_budget_ms:.0f}); statuses {last.by_status}"
    )
    say(
        f"  generator: sent {gen['sent_per_s']}/s of {gen['offered_per_s']}/s, send lag p99 "
        f"{gen['send_lag_p99_ms']} ms, CPU share {gen['cpu_share']}"
        + (" - GENERATOR-BOUND" if gen["generator_bound"] else "")
    )
    say(f"  ranker's view: {server}")
    return {"capacity_per_s": capacity, "rate_per_s": round(rate, 1), "phases": phases}


def check(result: dict[str, Any], budgets: Budgets) -> list[str]:
    """The budgets the drill missed (empty: all met)."""
    missed = []
    phases = {p.name: p for p in result["phases"]}
    for name in ("scorer_fault", "encoder_fault"):
        if name not in phases:  # --no-faults
            continue
        phase = phases[name]
        if phase.failed > budgets.max_failed_during_fault:
            missed.append(f"{name}: {phase.failed} failed requests {phase.by_status}")
        recovery = phase.extra["recovery_s"]
        if recovery is None or recovery > budgets.max_recovery_s:
            missed.append(f"{name}: recovery {recovery} s > {budgets.max_recovery_s} s")
    overload = phases["overload"]
    goodput, capacity = overload.extra["goodput_per_s"], result["capacity_per_s"]
    gen, server = overload.extra["generator"], overload.extra["server"]
    notes = []
    if gen["generator_bound"]:
        notes.append(
            f"GENERATOR-BOUND: the generator sent late (send lag p99 {gen['send_lag_p99_ms']} ms)"
            " or too few, so this run does not measure the server alone"
        )
    cpus = len(os.sched_getaffinity(0))
    if server.get("load_average_1m", 0.0) > cpus:
        used = sum(server.get("cpu_share", {}).values())
        notes.append(
            f"machine overloaded: load average {server['load_average_1m']:.1f} on {cpus} CPUs, "
            f"the three services got {used:.2f} CPU between them"
        )
    note = f" ({'; '.join(notes)})" if notes else ""
    if goodput < budgets.min_goodput_share * capacity:
        missed.append(
            f"overload: goodput {goodput}/s < {budgets.min_goodput_share:.0%} of capacity "
            f"{capacity}/s{note}"
        )
    p99 = overload.ok_p99_ms
    if p99 is not None and p99 > budgets.p99_budget_ms:
        missed.append(
            f"overload: p99 of accepted requests {p99} ms > {budgets.p99_budget_ms:.0f} ms{note}"
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
        "--generators",
        type=int,
        default=d.generators,
        help="load-generator processes for the capacity and overload phases",
    )
    p.add_argument(
        "--no-faults",
        action="store_true",
        help="skip the baseline and the two fault phases (capacity and overload only)",
    )
    p.add_argument(
        "--max-generator-lag-ms",
        type=float,
        default=d.max_generator_lag_ms,
        help="send lag p99 above which an overload run is marked generator-bound",
    )
    p.add_argument(
        "--p99-budget-ms",
        type=float,
        default=Budgets.p99_budget_ms,
        help="budget: p99 latency of the accepted requests at overload",
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
        generators=args.generators,
        faults=not args.no_faults,
        max_generator_lag_ms=args.max_generator_lag_ms,
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
    budgets = Budgets(min_goodput_share=args.min_goodput_share, p99_budget_ms=args.p99_budget_ms)
    with suite(args.model_repo, args.features, logs, config.ranker_flags, service_cpus) as services:
        result = asyncio.run(drill(services, args.features, config, say, logs / "load", budgets))
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
