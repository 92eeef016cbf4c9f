#!/usr/bin/env python3
"""The serving benchmark on a GPU: CUDA (FP32 graph) and TensorRT (FP16 graph), figures to JSON.

    python bench/gpu_serving.py --check          # which GPU providers are usable here, and why not
    python bench/gpu_serving.py                  # both runs on the realistic model (trains it once)
    python bench/gpu_serving.py --model-repo R --features F [--fp16-repo R16]
    python bench/gpu_serving.py --skip-missing   # CPU-only machine: say what is missing, exit 0

For each provider it runs ``bench/serving_benchmark.py --realistic --providers P`` (in-process ONNX
Runtime and the scorer, batching off and on, at 1/8/64 in flight) and writes
``<out>/<cuda|tensorrt-fp16>/serving.{json,md,png}`` plus ``<out>/gpu_serving.json`` (the provider
probe, each run's headline figures). The FP16 graph comes from the project's exporter
(``xdrec export --variant fp16``, FP32 inputs and outputs) into a repository of its own; the
scorer serves it with ``--providers tensorrt`` exactly as a GPU deployment would.

Unchanged on a GPU machine with the project's venv (``onnxruntime-gpu`` is its ONNX Runtime; the
CUDA / cuDNN / TensorRT libraries come from the image or the nvidia-* wheels, see
services/scorer/providers.py). On a machine without them it names each missing provider and the
reason, and exits 3 (0 with ``--skip-missing``). CI stays CPU-only: nothing here runs in tests
except the refusal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXIT_OK, EXIT_USAGE, EXIT_MISSING = 0, 2, 3
DEFAULT_OUT = ROOT / "bench" / "results" / "serving-gpu"
REALISTIC_WORKDIR = ROOT / "artifacts" / "bench-serving-realistic"
RUNS = (  # (name, provider, graph)
    ("cuda", "cuda", "fp32"),
    ("tensorrt-fp16", "tensorrt", "fp16"),
)


def probe_providers() -> dict[str, dict[str, Any]]:
    """The scorer's own probe (services/scorer/providers.py) for each GPU provider."""
    from services.scorer.providers import CUDA, TENSORRT, probe

    return {
        name: {"provider": full, "usable": result.usable, "reason": result.reason}
        for name, full in (("cuda", CUDA), ("tensorrt", TENSORRT))
        for result in [probe(full)]
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpu_serving.py",
        description="Serving benchmark with the CUDA and TensorRT (FP16) providers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--check", action="store_true", help="only report which providers are usable")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="run what is usable and exit 0 when a provider is missing (default: exit 3)",
    )
    p.add_argument("--model-repo", type=Path, help="FP32 repository (default: realistic model)")
    p.add_argument("--features", type=Path, help="features.tsv of --model-repo")
    p.add_argument("--run", type=Path, help="training run to export the FP16 graph from")
    p.add_argument("--fp16-repo", type=Path, help="a repository already holding the FP16 graph")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="pass --quick to the serving benchmark")
    p.add_argument(
        "--cpu-rehearsal",
        action="store_true",
        help="run every step (FP16 export, both runs) with the CPU provider instead: proves the "
        "pipeline on a machine without a GPU; the figures are not GPU figures",
    )
    p.add_argument(
        "--bench-arg", action="append", default=[], help="extra serving_benchmark flag (repeatable)"
    )
    return p


def fp16_repository(args: argparse.Namespace) -> Path | None:
    """--fp16-repo, or one exported once from the training run; None when there is no run."""
    if args.fp16_repo:
        return args.fp16_repo.resolve()
    run = args.run or (None if args.model_repo else REALISTIC_WORKDIR / "run")
    if run is None or not (Path(run) / "model.pt").exists():
        return None
    repo = Path(run).resolve().parent / "repo-fp16"
    if not repo.exists() or not any(repo.iterdir()):
        subprocess.run(
            [sys.executable, "-m", "cli", "export", "--run", str(run), "--repo", str(repo)]
            + ["--variant", "fp16"],
            check=True,
            cwd=ROOT,
            timeout=1800,
        )
    return repo


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("system", "api", "concurrency", "throughput_rps", "p50_ms", "p99_ms")
    return [
        {k: lv[k] for k in keys} | {"x_throughput_vs_ort": lv["x_throughput_vs_ort"]}
        for lv in result["levels"]
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.model_repo) != bool(args.features) and not args.run:
        print("error: --model-repo needs --features (or --run)", file=sys.stderr)
        return EXIT_USAGE
    providers = probe_providers()
    missing = {k: v for k, v in providers.items() if not v["usable"]}
    if args.cpu_rehearsal:
        missing = {}
    for info in providers.values():
        state = "usable" if info["usable"] else "MISSING"
        print(f"{info['provider']}: {state} ({info['reason']})")
    if args.check:
        return EXIT_MISSING if missing else EXIT_OK
    if missing:
        names = ", ".join(v["provider"] for v in missing.values())
        if not args.skip_missing:
            print(
                f"error: {names} not usable on this machine; the GPU serving benchmark needs a "
                "GPU with the CUDA (and TensorRT) libraries. --skip-missing runs what is usable.",
                file=sys.stderr,
            )
            return EXIT_MISSING
        print(f"note: skipping {names} (--skip-missing)")

    from bench import serving_benchmark

    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "providers": providers,
        "cpu_rehearsal": args.cpu_rehearsal,
        "runs": {},
        "skipped": {},
    }
    for name, provider, graph in RUNS:
        if provider in missing:
            summary["skipped"][name] = missing[provider]["reason"]
            continue
        repo = args.model_repo if graph == "fp32" else fp16_repository(args)
        if graph == "fp16" and repo is None:
            summary["skipped"][name] = "no FP16 graph: pass --fp16-repo or --run"
            print(f"note: {name} skipped: {summary['skipped'][name]}")
            continue
        provider = "cpu" if args.cpu_rehearsal else provider
        bench = ["--realistic", "--providers", provider, "--out", str(args.out / name)]
        if repo is not None:
            bench += ["--repo", str(repo)]
        if args.features:
            bench += ["--features", str(args.features)]
        elif repo is not None and graph == "fp16":
            bench += ["--features", str(Path(repo).parent / "run" / "features.tsv")]
        if graph == "fp16":
            bench += ["--scorer-arg=--variant=fp16"]
        bench += ["--quick"] if args.quick else []
        bench += args.bench_arg
        print(f"== {name}: serving_benchmark.py {' '.join(bench)}", flush=True)
        code = serving_benchmark.main(bench)
        if code != 0:
            summary["runs"][name] = {"exit_status": code}
            continue
        result = json.loads((args.out / name / "serving.json").read_text())
        summary["runs"][name] = {
            "graph": graph,
            "ort_providers_used": result["settings"].get("ort_providers_used"),
            "levels": headline(result),
        }
    (args.out / "gpu_serving.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {args.out}/gpu_serving.json")
    if not summary["runs"]:
        print("note: nothing was measured (no usable GPU provider)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
