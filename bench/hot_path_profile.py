#!/usr/bin/env python3
"""Hot-path profile of the serving suite: CPU per Recommend per service, py-spy flame graphs and
top-N tables, and Recommend capacity, for the code BEFORE and AFTER a change, in one run.

    python bench/hot_path_profile.py --model-repo artifacts/demo/repo \
        --features artifacts/demo/run/features.tsv --before-ref main --out docs/results/profiles

For each variant (``before``: the code of ``--before-ref``, exported with ``git archive``;
``after``: this checkout with ``--after-ranker-args``) it starts the encoder, scorer and ranker
as separate processes on free loopback ports and drives them with the project's own load
generator (``bench/loadtest.py``: open loop, the realistic mix of warm/cold/unknown users with and
without candidate lists) at one fixed rate:

1. **CPU cost**: process CPU seconds (``/proc/<pid>/stat`` utime + stime) of each service during
   the measured window divided by the Recommends answered, and the RPCs each service served per
   Recommend (the services' own Prometheus counters);
2. **profile**: the same load again with ``py-spy record --nonblocking --format raw`` attached to
   each service; written as a flame graph SVG per service and a top-N markdown table
   (``bench/flamegraph.py``);
3. **capacity** (``--capacity``): the highest open-loop rate with p99 <= ``--p99-budget-ms`` and no
   errors (``loadtest.find_max_rate``), and the same for a trivial grpc.aio unary call (health
   Check on a server with no interceptors: the ceiling of this generator on this machine), so
   that each Recommend figure comes with its ceiling from the same run.

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
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        for name in SERVICES:
            self.ports[name] = free_port()
            self.metrics[name] = free_port()
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
        port = free_port()
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

    async def variant(self, variant: Variant) -> dict[str, Any]:
        suite = Suite(variant, self.config, self.out / "logs")
        suite.start()
        client = lt.RankerClient(suite.target, 2, 2.0)
        try:
            why = await client.wait_ready(120)
            if why is not None:
                raise RuntimeError(f"{variant.name}: ranker not SERVING: {why}")
            self.say(f"== {variant.name}: suite up ({variant.code_root})")
            await self.run_once(client, self.load_config(suite.target, self.config.rate, 3.0))
            cost = await self.cpu_cost(suite, client)
            self.say(
                "  cpu ms/Recommend: "
                + ", ".join(f"{n} {cost['cpu_ms_per_recommend'][n]:.3f}" for n in SERVICES)
                + f"; p50 {cost['latency']['p50_ms']:.1f} ms p99 {cost['latency']['p99_ms']:.1f} ms"
            )
            profiles = await self.profile(suite, client, variant)
            result = {
                "code": str(variant.code_root),
                "ranker_args": list(variant.ranker_args),
                **cost,
                "profiles": profiles,
            }
            if self.config.capacity:
                result["capacity"] = await self.capacity(client, suite.target, variant.name)
            return result
        finally:
            await client.close()
            suite.stop()

    async def cpu_cost(self, suite: Suite, client: lt.RankerClient) -> dict[str, Any]:
        cfg = self.load_config(suite.target, self.config.rate, self.config.duration_s)
        cfg = dataclasses.replace(cfg, warmup_s=0.0)
        before_m = lt.scrape_all(suite.metrics_urls)
        before = suite.cpu()
        started = time.monotonic()
        summary = await self.run_once(client, cfg)
        elapsed = time.monotonic() - started
        after = suite.cpu()
        rpcs = rpc_counts(server_metrics.delta(before_m, lt.scrape_all(suite.metrics_urls)))
        answered = summary.ok
        return {
            "rate": self.config.rate,
            "duration_s": self.config.duration_s,
            "recommends_ok": answered,
            "errors": summary.errors,
            "latency": dataclasses.asdict(summary.latency),
            "cpu_s": {n: after[n] - before[n] for n in SERVICES},
            "cpu_ms_per_recommend": {
                n: 1000 * (after[n] - before[n]) / max(answered, 1) for n in SERVICES
            },
            "cpu_share_of_a_core": {n: (after[n] - before[n]) / elapsed for n in SERVICES},
            "rpcs_per_recommend": {
                service: {m: c / max(answered, 1) for m, c in methods.items()}
                for service, methods in rpcs.items()
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
                            "--nonblocking",
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
            cfg = self.load_config(suite.target, self.config.rate, float(duration))
            await self.run_once(client, dataclasses.replace(cfg, warmup_s=0.0))
            written = {}
            for name, (raw, spy) in spies.items():
                _, err = await asyncio.to_thread(spy.communicate)
                if spy.returncode != 0 or not raw.exists():
                    raise RuntimeError(f"py-spy on the {name}: {err.decode()[-500:]}")
                title = f"{name} ({variant.name}), {self.config.rate:g} Recommend/s"
                stacks = flamegraph.render(raw, folder / f"{name}.svg", title)
                (folder / f"{name}.md").write_text(
                    flamegraph.top_n_markdown(title, stacks, self.config.top), encoding="utf-8"
                )
                written[name] = str((folder / f"{name}.svg").relative_to(self.out))
        return written


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """after / before of the figures that compare (same run)."""
    before, after = results["variants"]["before"], results["variants"]["after"]
    out: dict[str, Any] = {
        "cpu_ms_per_recommend_after_over_before": {
            n: after["cpu_ms_per_recommend"][n] / before["cpu_ms_per_recommend"][n]
            for n in SERVICES
            if before["cpu_ms_per_recommend"][n]
        }
    }
    total = {
        v: sum(results["variants"][v]["cpu_ms_per_recommend"].values()) for v in ("before", "after")
    }
    out["total_cpu_ms_per_recommend"] = total
    out["total_after_over_before"] = total["after"] / total["before"] if total["before"] else None
    ceiling = results.get("ceiling", {}).get("max_sustained_rate")
    for v in ("before", "after"):
        rate = results["variants"][v].get("capacity", {}).get("max_sustained_rate")
        if rate is not None and ceiling:
            out[f"{v}_capacity_over_ceiling"] = rate / ceiling
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
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    bench = Bench(config, args.out)
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in dataclasses.asdict(config).items()},
        "before_ref": args.before_ref,
        "machine": f"{os.cpu_count()} CPUs",
        "variants": {},
    }
    with before_tree(args.before_ref) as old:
        variants = [
            Variant("before", old, tuple(args.before_ranker_args.split())),
            Variant("after", ROOT, tuple(args.after_ranker_args.split())),
        ]
        for variant in variants:
            results["variants"][variant.name] = await bench.variant(variant)
    if config.capacity:
        results["ceiling"] = await bench.ceiling()
        bench.say(f"== trivial-call ceiling: {results['ceiling']['max_sustained_rate']} req/s")
    results["ratios"] = ratios(results)
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
    p.add_argument("--capacity", action="store_true", help="also find the max rates (slow)")
    p.add_argument("--p99-budget-ms", type=float, default=BenchConfig.p99_budget_ms)
    p.add_argument("--start-rate", type=float, default=BenchConfig.start_rate)
    p.add_argument("--step-duration", type=float, default=BenchConfig.step_duration_s)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "profiles")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
