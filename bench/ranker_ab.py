#!/usr/bin/env python3
"""Interleaved A/B of ranker variants at fixed load: which one is faster, on a shared machine.

Why not the capacity benchmark: it measures one variant after the other, each with its own rate
search, so a burst of other work during one variant's turn decides the comparison (on this
2-core machine shared with training runs, one variant's capacity came out at a quarter of the
next one's in the same run). Here every variant's stack (encoder, scorer, ranker) is up at once
and each load level is measured for every variant in turn, round after round, so background
load hits all variants alike; the summary gives each variant's median over the rounds and its
ratio to the baseline (the first variant).

    python bench/ranker_ab.py --variant default= --variant plain=--coalesce=false \\
        --rates 150,300 --closed 32 --rounds 5
    python bench/ranker_ab.py --variant before= --variant-ref before=main --variant after=

Levels: ``--rates`` are open-loop steps (requests/s at fixed intended send times; latency from
the intended send time), ``--closed`` are closed-loop steps (that many requests in flight:
throughput at saturation). Traffic: the capacity benchmark's mix (``bench/capacity/traffic.py``).
Per step: p50/p95/p99, errors by status, throughput, CPU ms per request of every process and of
the generator, other processes' CPU, and the ranker's coalescing metrics (batches, Recommends per
batch, share of Recommends that waited for company and mean wait per Recommend). ``--variant-ref
NAME=REF`` runs that variant's ranker from the code of git ``REF`` (``git archive``); its
encoder and scorer stay this checkout's. Writes ``<out>/ranker_ab.json`` and ``ranker_ab.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fault_drill, loadtest  # noqa: E402
from bench.capacity.search import CpuMeter  # noqa: E402
from bench.capacity.traffic import (  # noqa: E402
    CapacityMix,
    Channels,
    build_requests,
    recommend_sender,
    request_source,
)
from bench.capacity_benchmark import parse_variant, route_flags  # noqa: E402
from bench.hot_path_profile import export_ref  # noqa: E402
from bench.serving.model import ensure_model  # noqa: E402
from services.common.endpoints import free_loopback_ports  # noqa: E402

DEFAULT_WORKDIR = ROOT / "artifacts" / "bench-serving"
DEFAULT_OUT = ROOT / "bench" / "results" / "ranker_ab"
RANKER_METRICS = (
    "xdrec_ranker_coalesced_batch_size_count",
    "xdrec_ranker_coalesced_batch_size_sum",
    "xdrec_ranker_coalesce_wait_seconds_count",
    "xdrec_ranker_coalesce_wait_seconds_sum",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ranker_ab.py",
        description="Ranker variants side by side at fixed load, interleaved rounds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        required=True,
        help="NAME=FLAGS (repeatable; the first is the baseline): ranker flags; scorer:FLAG / "
        "encoder:FLAG go to those services; env:VAR=VALUE sets a variable of the ranker's "
        "environment (e.g. env:XDREC_COALESCE_MAX_WAIT_MS=1)",
    )
    p.add_argument(
        "--variant-ref",
        action="append",
        default=[],
        help="NAME=GITREF: that variant's ranker runs the code of GITREF",
    )
    p.add_argument("--rates", default="", help="open-loop rates, req/s, comma-separated")
    p.add_argument("--closed", default="", help="closed-loop in-flight counts, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--step-s", type=float, default=5.0, help="measured seconds per step")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured seconds per step")
    p.add_argument("--timeout-ms", type=float, default=2000.0, help="deadline per call")
    p.add_argument("--channels", type=int, default=2, help="HTTP/2 connections per step")
    p.add_argument("--repo", type=Path, help="model repository (default: train + export one)")
    p.add_argument("--features", type=Path, help="features.tsv (default: the run's / repo's)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where to train")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument("--seed", type=int, default=0)
    return p


def levels(args: argparse.Namespace) -> list[tuple[str, float]]:
    """("open", rate) and ("closed", in flight) steps, in the order given."""
    out = [("open", float(r)) for r in args.rates.split(",") if r.strip()]
    out += [("closed", float(int(c))) for c in args.closed.split(",") if c.strip()]
    return out


def check_args(args: argparse.Namespace) -> str | None:
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        return f"--variant names must differ: {names}"
    try:
        steps = levels(args)
    except ValueError as exc:
        return f"--rates / --closed: {exc}"
    if not steps:
        return "give at least one level: --rates and/or --closed"
    if any(value <= 0 for _, value in steps):
        return "--rates and --closed must be positive"
    if args.rounds < 1 or args.step_s <= 0 or args.warmup_s < 0:
        return "--rounds must be >= 1, --step-s positive, --warmup-s >= 0"
    for item in args.variant_ref:
        name, sep, ref = item.partition("=")
        if not sep or not ref or name not in names:
            return f"--variant-ref expects NAME=GITREF for a --variant NAME, got {item!r}"
    return None


def scrape(port: int) -> dict[str, float]:
    """The ranker's coalescing counters (absent ones: not reported by that code)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in RANKER_METRICS:
            values[name] = float(value)
    return values


class VariantStack:
    """One variant's encoder, scorer and ranker as processes."""

    def __init__(
        self,
        name: str,
        flags: tuple[str, ...],
        repo: Path,
        features: Path,
        logs: Path,
        code_root: Path | None,
    ) -> None:
        self.name = name
        env = dict(f[4:].split("=", 1) for f in flags if f.startswith("env:"))
        routed = route_flags([f for f in flags if not f.startswith("env:")])
        logs.mkdir(parents=True, exist_ok=True)
        encoder, scorer, ranker, self.metrics_port = free_loopback_ports(4)
        self.procs = {
            "encoder": fault_drill.ServiceProcess(
                "encoder",
                encoder,
                {"XDREC_MODEL_REPO": str(repo), "XDREC_FEATURES": str(features)},
                logs,
                args=tuple(routed["encoder"]),
            ),
            "scorer": fault_drill.ServiceProcess(
                "scorer",
                scorer,
                {"XDREC_MODEL_REPO": str(repo), "XDREC_PROVIDERS": "cpu"},
                logs,
                args=tuple(routed["scorer"]),
            ),
            "ranker": fault_drill.ServiceProcess(
                "ranker",
                ranker,
                {
                    "XDREC_ENCODER": f"127.0.0.1:{encoder}",
                    "XDREC_SCORER": f"127.0.0.1:{scorer}",
                    "XDREC_METRICS_PORT": str(self.metrics_port),
                    **env,
                },
                logs,
                args=tuple(routed["ranker"]),
                cwd=code_root,
            ),
        }

    @property
    def address(self) -> str:
        return self.procs["ranker"].address

    def pids(self) -> dict[str, int]:
        return {n: p.proc.pid for n, p in self.procs.items() if p.proc is not None}


@contextlib.contextmanager
def running(stacks: list[VariantStack]) -> Iterator[None]:
    try:
        for stack in stacks:
            for proc in stack.procs.values():
                proc.start()
        for stack in stacks:
            for proc in stack.procs.values():
                proc.wait_serving(timeout_s=120.0)
        yield
    finally:
        for stack in stacks:
            for proc in stack.procs.values():
                proc.stop()


def measure(
    stack: VariantStack, mode: str, value: float, specs: list, args: argparse.Namespace
) -> dict[str, Any]:
    """One step of one variant: latency, throughput, CPU per request, coalescing figures."""
    cfg = loadtest.LoadConfig(
        target=stack.name,
        mode=mode,  # type: ignore[arg-type]
        rate=value,
        concurrency=int(value),
        duration_s=args.step_s,
        warmup_s=args.warmup_s,
        timeout_ms=args.timeout_ms,
        channels=args.channels,
        seed=args.seed,
    )

    async def go() -> tuple[loadtest.Recorder, list[dict[str, Any]]]:
        channels = Channels(stack.address, args.channels)
        try:
            send = recommend_sender(channels, args.timeout_ms / 1e3)
            return await loadtest.run_load(cfg, send, request_source(specs))
        finally:
            await channels.close()

    meter = CpuMeter(stack.pids())
    counters_before, cpu_before = scrape(stack.metrics_port), meter.mark()
    recorder, timeline = asyncio.run(go())
    cpu_after, counters_after = meter.mark(), scrape(stack.metrics_port)
    summary = loadtest.summarize(recorder, cfg, timeline)
    requests = max(len(recorder.latencies), 1)
    cpu = CpuMeter.per_request(cpu_before, cpu_after, requests, args.step_s + args.warmup_s)

    def delta(name: str) -> float | None:
        if name not in counters_after:
            return None
        return counters_after[name] - counters_before.get(name, 0.0)

    batches, members = (delta(f"xdrec_ranker_coalesced_batch_size_{s}") for s in ("count", "sum"))
    waited, wait_s = (delta(f"xdrec_ranker_coalesce_wait_seconds_{s}") for s in ("count", "sum"))
    lat = summary.latency
    return {
        "variant": stack.name,
        "mode": mode,
        "level": value,
        "throughput_rps": round(summary.throughput_rps, 1),
        "p50_ms": round(lat.p50_ms, 2),
        "p95_ms": round(lat.p95_ms, 2),
        "p99_ms": round(lat.p99_ms, 2),
        "errors": summary.errors,
        "errors_by_code": dict(summary.errors_by_code),
        **cpu,
        "batches": batches,
        "mean_batch": round(members / batches, 2) if batches and members else None,
        "waited_share": round(waited / requests, 3) if waited is not None else None,
        "mean_wait_ms": round(wait_s * 1e3 / requests, 3) if wait_s is not None else None,
        "load_average": os.getloadavg()[0],
    }


def summarise(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Median over rounds per (level, variant), and ratios to the baseline's medians."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["level"], row["variant"]), []).append(row)
    table = []
    for (mode, level, variant), group in groups.items():
        entry: dict[str, Any] = {"mode": mode, "level": level, "variant": variant}
        entry["rounds"] = len(group)
        for key in ("throughput_rps", "p50_ms", "p99_ms", "mean_wait_ms", "waited_share"):
            values = [g[key] for g in group if g[key] is not None]
            entry[key] = round(statistics.median(values), 3) if values else None
        batches = [g["mean_batch"] for g in group if g["mean_batch"] is not None]
        entry["mean_batch"] = round(statistics.median(batches), 2) if batches else None
        entry["errors"] = sum(g["errors"] for g in group)
        cpu_keys = group[0]["cpu_ms_per_request"]
        entry["cpu_ms_per_request"] = {
            k: round(statistics.median(g["cpu_ms_per_request"][k] for g in group), 3)
            for k in cpu_keys
        }
        entry["other_cpu_cores"] = round(statistics.median(g["other_cpu_cores"] for g in group), 2)
        table.append(entry)
    base = {(e["mode"], e["level"]): e for e in table if e["variant"] == baseline}
    for entry in table:
        ref = base.get((entry["mode"], entry["level"]))
        for key in ("throughput_rps", "p50_ms", "p99_ms"):
            entry[f"{key}_x_baseline"] = (
                round(entry[key] / ref[key], 3) if ref and ref[key] and entry[key] else None
            )
    return table


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['title']}",
        "",
        f"Medians over {result['settings']['rounds']} interleaved rounds; ratios to "
        f"`{result['baseline']}`. Load average {result['machine']['load_average_before']} "
        f"before, {result['machine']['load_average_after']} after.",
        "",
        "| load | variant | req/s | p50 ms | p99 ms | p99 x base | waited | mean wait ms | "
        "per batch | CPU ms/request | other cores | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["summary"]:
        load = f"{e['level']:g} req/s" if e["mode"] == "open" else f"{e['level']:g} in flight"
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in e["cpu_ms_per_request"].items())
        waited = "-" if e["waited_share"] is None else f"{e['waited_share']:.1%}"
        mean_wait = "-" if e["mean_wait_ms"] is None else f"{e['mean_wait_ms']:.3f}"
        lines.append(
            f"| {load} | {e['variant']} | {e['throughput_rps']:.0f} | {e['p50_ms']:.2f} | "
            f"{e['p99_ms']:.2f} | {e['p99_ms_x_baseline'] or '-'} | {waited} | {mean_wait} | "
            f"{e['mean_batch'] or '-'} | {cpu} | {e['other_cpu_cores']} | {e['errors']} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    subject = ensure_model(
        repo=args.repo,
        run=None,
        workdir=args.workdir,
        model=None,
        features=args.features,
        train_epochs=5,
    )
    specs = build_requests(subject.features, CapacityMix(), seed=args.seed)
    refs = dict(item.split("=", 1) for item in args.variant_ref)
    steps = levels(args)
    rows: list[dict[str, Any]] = []
    load_before = list(os.getloadavg())
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        code_roots = {
            name: export_ref(ref, Path(cleanup.enter_context(_tempdir(name))))
            for name, ref in refs.items()
        }
        stacks = [
            VariantStack(
                name,
                flags,
                subject.repo,
                subject.features,
                args.out / "logs" / name,
                code_roots.get(name),
            )
            for name, flags in args.variant
        ]
        print(
            f"== ranker A/B: {[s.name for s in stacks]} ({subject.model}); levels {steps}; "
            f"{args.rounds} rounds of {args.step_s:g} s (+{args.warmup_s:g} s); load average "
            f"{load_before}",
            flush=True,
        )
        with running(stacks):
            for round_no in range(args.rounds):
                for mode, value in steps:
                    for stack in stacks:
                        row = measure(stack, mode, value, specs, args)
                        row["round"] = round_no
                        rows.append(row)
                        print(progress_line(row), flush=True)
    baseline = args.variant[0][0]
    return {
        "title": f"ranker A/B at fixed load: {subject.model}",
        "model": {"repo": str(subject.repo), "model": subject.model},
        "baseline": baseline,
        "settings": {
            "variants": {name: list(flags) for name, flags in args.variant},
            "variant_refs": refs,
            "levels": steps,
            "rounds": args.rounds,
            "step_s": args.step_s,
            "warmup_s": args.warmup_s,
            "timeout_ms": args.timeout_ms,
            "channels": args.channels,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "summary": summarise(rows, baseline),
        "rows": rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


@contextlib.contextmanager
def _tempdir(name: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix=f"xdrec-ab-{name}-") as tmp:
        yield tmp


def progress_line(row: dict[str, Any]) -> str:
    load = f"{row['level']:g}/s" if row["mode"] == "open" else f"{row['level']:g} in flight"
    coalescing = (
        f"  batch {row['mean_batch']}  waited {row['waited_share']:.0%} "
        f"mean wait {row['mean_wait_ms']:.3f} ms"
        if row["waited_share"] is not None and row["mean_batch"] is not None
        else ""
    )
    cpu = " ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_request"].items())
    return (
        f"   r{row['round']} {load:>14s} {row['variant']:>10s}  {row['throughput_rps']:6.0f} "
        f"req/s  p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}"
        f"{coalescing}  CPU ms/req {cpu}  other {row['other_cpu_cores']:.2f} cores"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    args.out = args.out.resolve()
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranker_ab.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "ranker_ab.md").write_text(text)
    print("\n" + text + f"written: {args.out}/ranker_ab.json, ranker_ab.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
