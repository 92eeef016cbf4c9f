#!/usr/bin/env python3
"""Hot-path profile of the serving suite: CPU per Recommend per service, py-spy flame graphs and
top-N tables, and Recommend capacity, for the code BEFORE and AFTER a change, in one run.

    python bench/hot_path_profile.py --model-repo artifacts/demo/repo \
        --features artifacts/demo/run/features.tsv --before-ref main --out docs/results/profiles

For each variant (``before``: the code of ``--before-ref``, exported with ``git archive``;
``after``: this checkout with ``--after-ranker-args``) it starts the encoder, scorer and ranker
as separate processes on free loopback ports and drives them with the project's own load
generator (``bench/loadtest.py``: the realistic mix of warm/cold/unknown users with and without
candidate lists):

1. **fixed rate** (open loop, ``--rate``): per Recommend answered, the process CPU seconds of each
   service (``/proc/<pid>/stat`` utime + stime) and the RPCs it served (its own Prometheus
   counters), and the latency;
2. **saturated** (closed loop, ``--concurrency`` in flight): the same figures when the suite is
   busy, which is where coalescing batches (at a moderate rate most requests find nothing in
   flight and go alone), and the throughput;
3. **profile** (first round only): the saturated load again with ``py-spy record --nonblocking
   --format raw`` attached to each service; a flame graph SVG per service and a top-N markdown
   table (``bench/flamegraph.py``);
4. **capacity** (``--capacity``): the highest open-loop rate with p99 <= ``--p99-budget-ms`` and no
   errors (``loadtest.find_max_rate``), and once per run the same for a trivial grpc.aio unary call
   (health Check on a server with no interceptors: the ceiling of this generator on this
   machine), so that each Recommend figure has its ceiling from the same run.

``--rounds`` pairs (before, then after) are run and the after/before ratios reported per round and
as their median: on a shared machine one pair alone can be off by tens of percent.

Variants run one after the other on the same machine in the same run: compare them as ratios.
Writes ``<out>/hot_path.json``, ``<out>/<variant>/<service>.svg`` and ``<out>/top.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import flamegraph  # noqa: E402
import loadtest as lt  # noqa: E402
import server_metrics  # noqa: E402

from services.common.endpoints import free_loopback_ports  # noqa: E402

SERVICES = ("encoder", "scorer", "ranker")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

TRIVIAL_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""
"""A grpc.aio server with the health service only and no interceptors: the ceiling call."""


@dataclass(frozen=True)
class Variant:
    """One version of the code under test."""

    name: str
    code_root: Path
    ranker_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchConfig:
    """What one run measures (flags of the same names)."""

    model_repo: Path
    features: Path
    rate: float = 150.0
    duration_s: float = 20.0
    warmup_s: float = 3.0
    p99_budget_ms: float = 50.0
    capacity: bool = False
    start_rate: float = 100.0
    step_factor: float = 1.4
    step_duration_s: float = 8.0
    refine: int = 2
    top: int = 20
    py_spy_rate: int = 97
    concurrency: int = 48
    rounds: int = 2
    native: bool = False


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def export_ref(ref: str, dest: Path) -> Path:
    """The tree of git ``ref`` (committed files only) unpacked under ``dest``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@dataclass
class Suite:
    """The three services of one variant as processes."""

    variant: Variant
    config: BenchConfig
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(self.variant.code_root),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
        }
        ports = free_loopback_ports(2 * len(SERVICES))
        for i, name in enumerate(SERVICES):
            self.ports[name], self.metrics[name] = ports[2 * i], ports[2 * i + 1]
        common = ("--host", "127.0.0.1", "--log-level", "WARNING")
        args = {
            "encoder": (
                "--model-repo",
                str(self.config.model_repo),
                "--features",
                str(self.config.features),
            ),
            "scorer": (
                "--model-repo",
                str(self.config.model_repo),
                "--providers",
                "cpu",
                "--intra-op-threads",
                "1",
            ),
            "ranker": (
                "--encoder",
                f"127.0.0.1:{self.ports['encoder']}",
                "--scorer",
                f"127.0.0.1:{self.ports['scorer']}",
                *self.variant.ranker_args,
            ),
        }
        for name in SERVICES:
            log = (self.logs / f"{self.variant.name}-{name}.log").open("w")
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    f"services.{name}",
                    *common,
                    "--port",
                    str(self.ports[name]),
                    "--metrics-port",
                    str(self.metrics[name]),
                    *args[name],
                ],
                cwd=self.variant.code_root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports['ranker']}"

    @property
    def metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.metrics[n]}/metrics" for n in SERVICES]

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(proc.pid) for name, proc in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rpc_counts(samples: dict) -> dict[str, dict[str, float]]:
    """RPCs served per service and method (any status)."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in samples.items():
        if name == "xdrec_rpc_requests_total" and value:
            label = dict(labels)
            per = out.setdefault(label["service"], {})
            per[label["method"]] = per.get(label["method"], 0.0) + value
    return out


class HealthSender:
    """The trivial call: health Check on a server with no interceptors."""

    def __init__(self, target: str, channels: int, timeout_s: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._grpc = grpc
        self._request = health_pb2.HealthCheckRequest()
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        self.channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(channels)
        ]
        self.stubs = [health_pb2_grpc.HealthStub(c) for c in self.channels]
        self.timeout_s = timeout_s
        self._next = 0

    async def send(self, spec: lt.RequestSpec) -> str:
        stub = self.stubs[self._next % len(self.stubs)]
        self._next += 1
        try:
            await stub.Check(self._request, timeout=self.timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class Bench:
    """Runs the phases for each variant (module docstring)."""

    def __init__(self, config: BenchConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.workload = lt.Workload.from_features(config.features)
        self.mix = lt.TrafficMix()
        self.rng = random.Random(0)

    def say(self, line: str) -> None:
        print(line, flush=True)

    def load_config(self, target: str, rate: float, duration_s: float) -> lt.LoadConfig:
        return lt.LoadConfig(
            target=target,
            rate=rate,
            duration_s=duration_s,
            warmup_s=self.config.warmup_s,
            timeout_ms=2000.0,
            channels=2,
        )

    async def run_once(self, sender: Any, cfg: lt.LoadConfig) -> lt.RunSummary:
        rec, timeline = await lt.run_load(
            cfg, sender.send, lambda: self.workload.sample(self.rng, self.mix)
        )
        return lt.summarize(rec, cfg, timeline)

    async def capacity(self, sender: Any, target: str, label: str) -> dict[str, Any]:
        args = argparse.Namespace(
            start_rate=self.config.start_rate,
            max_rate=20_000.0,
            step_factor=self.config.step_factor,
            step_duration=self.config.step_duration_s,
            refine=self.config.refine,
        )
        base = self.load_config(target, self.config.start_rate, self.config.step_duration_s)
        budgets = lt.Budgets(p99_ms=self.config.p99_budget_ms, max_error_rate=0.0)

        def say(line: str) -> None:
            if line.startswith(("-- step", "==")):
                self.say(f"  [{label}] {line}")

        result, _ = await lt.find_max_rate(
            args, base, budgets, lambda cfg: self.run_once(sender, cfg), say
        )
        steps = [
            {
                "rate": s["rate"],
                "passed": s["passed"],
                "p99_ms": s["summary"].latency.p99_ms,
                "errors": s["summary"].errors,
            }
            for s in result["steps"]
        ]
        return {"max_sustained_rate": result["max_sustained_rate"], "steps": steps}

    async def ceiling(self) -> dict[str, Any]:
        (port,) = free_loopback_ports(1)
        proc = subprocess.Popen(
            [sys.executable, "-c", TRIVIAL_SERVER, f"127.0.0.1:{port}"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        sender = HealthSender(f"127.0.0.1:{port}", 2, 2.0)
        try:
            for _ in range(100):
                if await sender.send(lt.RequestSpec("warm", "", (), 1)) == "OK":
                    break
                await asyncio.sleep(0.1)
            return await self.capacity(sender, f"127.0.0.1:{port}", "trivial")
        finally:
            await sender.close()
            proc.terminate()
            proc.wait(10)

    async def variant(self, variant: Variant, profile: bool) -> dict[str, Any]:
        suite = Suite(variant, self.config, self.out / "logs")
        suite.start()
        client = lt.RankerClient(suite.target, 2, 2.0)
        try:
            why = await client.wait_ready(120)
            if why is not None:
                raise RuntimeError(f"{variant.name}: ranker not SERVING: {why}")
            self.say(f"== {variant.name}: suite up ({variant.code_root})")
            await self.run_once(client, self.load_config(suite.target, self.config.rate, 3.0))
            fixed = await self.measured(
                suite,
                client,
                self.load_config(suite.target, self.config.rate, self.config.duration_s),
            )
            self.say(f"  fixed rate {self.config.rate:g}/s: {brief(fixed)}")
            saturated = await self.measured(
                suite,
                client,
                dataclasses.replace(
                    self.load_config(suite.target, 0.0, self.config.duration_s),
                    mode="closed",
                    concurrency=self.config.concurrency,
                ),
            )
            self.say(f"  closed loop, {self.config.concurrency} in flight: {brief(saturated)}")
            result = {
                "code": str(variant.code_root),
                "ranker_args": list(variant.ranker_args),
                "fixed_rate": fixed,
                "saturated": saturated,
            }
            if profile:
                result["profiles"] = await self.profile(suite, client, variant)
            if self.config.capacity:
                result["capacity"] = await self.capacity(client, suite.target, variant.name)
            return result
        finally:
            await client.close()
            suite.stop()

    async def measured(self, suite: Suite, client: lt.RankerClient, cfg: lt.LoadConfig) -> dict:
        """One measured window: latency, throughput, and per Recommend answered the CPU each
        service spent (``/proc``) and the RPCs it served (its Prometheus counters)."""
        cfg = dataclasses.replace(cfg, warmup_s=0.0)
        before_m = lt.scrape_all(suite.metrics_urls)
        before = suite.cpu()
        started = time.monotonic()
        summary = await self.run_once(client, cfg)
        elapsed = time.monotonic() - started
        after = suite.cpu()
        rpcs = rpc_counts(server_metrics.delta(before_m, lt.scrape_all(suite.metrics_urls)))
        answered = max(summary.ok, 1)
        return {
            "mode": cfg.mode,
            "rate": cfg.rate if cfg.mode == "open" else None,
            "concurrency": cfg.concurrency if cfg.mode == "closed" else None,
            "duration_s": cfg.duration_s,
            "recommends_ok": summary.ok,
            "errors": summary.errors,
            "throughput_rps": summary.throughput_rps,
            "latency": dataclasses.asdict(summary.latency),
            "cpu_s": {n: after[n] - before[n] for n in SERVICES},
            "cpu_ms_per_recommend": {n: 1000 * (after[n] - before[n]) / answered for n in SERVICES},
            "cpu_ms_per_recommend_total": 1000
            * sum(after[n] - before[n] for n in SERVICES)
            / answered,
            "cpu_share_of_a_core": {n: (after[n] - before[n]) / elapsed for n in SERVICES},
            "rpcs_per_recommend": {
                service: {m: c / answered for m, c in sorted(methods.items()) if m != "Check"}
                for service, methods in sorted(rpcs.items())
            },
        }

    async def profile(
        self, suite: Suite, client: lt.RankerClient, variant: Variant
    ) -> dict[str, str]:
        folder = self.out / variant.name
        folder.mkdir(parents=True, exist_ok=True)
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        duration = int(self.config.duration_s)
        spies = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, proc in suite.procs.items():
                raw = Path(tmp) / f"{name}.txt"
                spies[name] = (
                    raw,
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "--pid",
                            str(proc.pid),
                            "--duration",
                            str(duration),
                            "--rate",
                            str(self.config.py_spy_rate),
                            # native stacks need the process paused per sample
                            *(["--native"] if self.config.native else ["--nonblocking"]),
                            "--format",
                            "raw",
                            "-o",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
            await asyncio.sleep(1.0)  # py-spy attached
            cfg = self.load_config(suite.target, 0.0, float(duration))
            cfg = dataclasses.replace(
                cfg, warmup_s=0.0, mode="closed", concurrency=self.config.concurrency
            )
            await self.run_once(client, cfg)
            written = {}
            for name, (raw, spy) in spies.items():
                _, err = await asyncio.to_thread(spy.communicate)
                if spy.returncode != 0 or not raw.exists():
                    raise RuntimeError(f"py-spy on the {name}: {err.decode()[-500:]}")
                title = f"{name} ({variant.name}), {self.config.concurrency} Recommends in flight"
                stacks = flamegraph.render(raw, folder / f"{name}.svg", title)
                (folder / f"{name}.md").write_text(
                    flamegraph.top_n_markdown(title, stacks, self.config.top), encoding="utf-8"
                )
                written[name] = str((folder / f"{name}.svg").relative_to(self.out))
        return written


def brief(window: dict[str, Any]) -> str:
    cpu = ", ".join(f"{n} {window['cpu_ms_per_recommend'][n]:.3f}" for n in SERVICES)
    lat = window["latency"]
    return (
        f"{window['throughput_rps']:.0f} req/s, cpu ms/Recommend {cpu} "
        f"(total {window['cpu_ms_per_recommend_total']:.3f}); p50 {lat['p50_ms']:.1f} ms "
        f"p99 {lat['p99_ms']:.1f} ms; errors {window['errors']}"
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ratios(rounds: list[dict[str, Any]], ceiling: float | None) -> dict[str, Any]:
    """after / before per round (each round ran both variants back to back), and their
    median: the machine is shared, so a single pair can be off by tens of percent."""
    out: dict[str, Any] = {}
    for phase, figure in (
        ("fixed_rate", "cpu_ms_per_recommend_total"),
        ("saturated", "cpu_ms_per_recommend_total"),
        ("saturated", "throughput_rps"),
    ):
        per_round = [r["after"][phase][figure] / r["before"][phase][figure] for r in rounds]
        out[f"{phase}.{figure}.after_over_before"] = {
            "per_round": per_round,
            "median": median(per_round),
        }
    for service in SERVICES:
        per_round = [
            r["after"]["saturated"]["cpu_ms_per_recommend"][service]
            / r["before"]["saturated"]["cpu_ms_per_recommend"][service]
            for r in rounds
        ]
        out[f"saturated.cpu_ms_per_recommend.{service}.after_over_before"] = median(per_round)
    if ceiling:
        for v in ("before", "after"):
            rates = [r[v].get("capacity", {}).get("max_sustained_rate") for r in rounds]
            rates = [x for x in rates if x]
            if rates:
                out[f"{v}.capacity_over_ceiling"] = median(rates) / ceiling
    return out


def write_top(out: Path, variants: list[str]) -> None:
    parts = ["# Hot-path profiles (py-spy, top functions by self time)\n"]
    for v in variants:
        parts.append(f"\n## {v}\n")
        for name in SERVICES:
            table = out / v / f"{name}.md"
            if table.exists():
                parts.append("\n" + table.read_text(encoding="utf-8"))
    (out / "top.md").write_text("".join(parts), encoding="utf-8")


@contextlib.contextmanager
def before_tree(ref: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xdrec-before-") as tmp:
        yield export_ref(ref, Path(tmp))


async def main_async(args: argparse.Namespace) -> int:
    config = BenchConfig(
        model_repo=args.model_repo.resolve(),
        features=args.features.resolve(),
        rate=args.rate,
        duration_s=args.duration,
        capacity=args.capacity,
        p99_budget_ms=args.p99_budget_ms,
        start_rate=args.start_rate,
        step_duration_s=args.step_duration,
        concurrency=args.concurrency,
        rounds=args.rounds,
        native=args.native,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    bench = Bench(config, args.out)
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
        "before_ref": args.before_ref,
        "before_commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", args.before_ref],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip(),
        "after_commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip(),
        "machine": f"{os.cpu_count()} CPUs",
        "rounds": [],
    }
    with before_tree(args.before_ref) as old:
        variants = [
            Variant("before", old, tuple(args.before_ranker_args.split())),
            Variant("after", ROOT, tuple(args.after_ranker_args.split())),
        ]
        if config.capacity:
            results["ceiling"] = await bench.ceiling()
            bench.say(f"== trivial-call ceiling: {results['ceiling']['max_sustained_rate']} req/s")
        for index in range(config.rounds):
            bench.say(f"== round {index + 1}/{config.rounds}")
            results["rounds"].append(
                {v.name: await bench.variant(v, profile=index == 0) for v in variants}
            )
    ceiling = results.get("ceiling", {}).get("max_sustained_rate")
    results["ratios"] = ratios(results["rounds"], ceiling)
    (args.out / "hot_path.json").write_text(json.dumps(results, indent=2) + "\n")
    write_top(args.out, [v.name for v in variants])
    bench.say(json.dumps(results["ratios"], indent=2))
    bench.say(f"written to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repo", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True, help="features.tsv of the model")
    p.add_argument("--before-ref", default="main", help="git ref of the BEFORE code")
    p.add_argument("--before-ranker-args", default="", help="extra ranker flags, BEFORE")
    p.add_argument("--after-ranker-args", default="--coalesce", help="extra ranker flags, AFTER")
    p.add_argument("--rate", type=float, default=BenchConfig.rate, help="fixed Recommend/s")
    p.add_argument("--duration", type=float, default=BenchConfig.duration_s, help="s per phase")
    p.add_argument("--concurrency", type=int, default=BenchConfig.concurrency, help="saturated")
    p.add_argument("--rounds", type=int, default=BenchConfig.rounds, help="before/after pairs")
    p.add_argument("--capacity", action="store_true", help="also find the max rates (slow)")
    p.add_argument("--native", action="store_true", help="py-spy --native: C/Cython frames too")
    p.add_argument("--p99-budget-ms", type=float, default=BenchConfig.p99_budget_ms)
    p.add_argument("--start-rate", type=float, default=BenchConfig.start_rate)
    p.add_argument("--step-duration", type=float, default=BenchConfig.step_duration_s)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "profiles")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
