"""Serving benchmark CLI: the same ONNX model and the same requests through every way of serving
it (in-process ONNX Runtime, the xdrec scorer with batching off and on, PyTorch eager, MLServer).
What is compared and how: ``bench/serving/__init__.py`` and bench/README.md.

    python bench/serving_benchmark.py                      # trains + exports a model if needed
    python bench/serving_benchmark.py --repo R --run RUN   # an existing repository and run
    python bench/serving_benchmark.py --quick              # smoke run (2 levels, 2 s each)
    python bench/serving_benchmark.py --realistic          # 256-d history tower, 500 candidates
    python bench/serving_benchmark.py --realistic --model-repo R   # another published model
    python bench/serving_benchmark.py --realistic --providers cuda # GPU (bench/gpu_serving.sh)

Writes ``<out>/serving.json``, ``serving.md`` and ``serving.png``. Loopback only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serving.model import REALISTIC_EPOCHS, REALISTIC_SETTINGS  # noqa: E402
from bench.serving.runner import run  # noqa: E402

DEFAULT_WORKDIR = ROOT / "artifacts" / "bench-serving"
DEFAULT_OUT = ROOT / "bench" / "results" / "serving"
ALL_SYSTEMS = ("ort-loop", "ort-pool", "scorer", "torch", "mlserver")
ALL_APIS = ("predict", "v2")
PROVIDERS = ("cpu", "cuda", "tensorrt")
# --realistic: what changes unless given explicitly (a model where ONNX Runtime work dominates)
REALISTIC = {
    "workdir": ROOT / "artifacts" / "bench-serving-realistic",
    "out": ROOT / "bench" / "results" / "serving" / "realistic",
    "candidates": 500,
    "concurrency": [1, 8, 64],
    "systems": ["ort-loop", "ort-pool", "scorer"],
    "apis": ["predict"],
    "train_epochs": REALISTIC_EPOCHS,
}


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or any(n < 1 or n > 1024 for n in levels):
        raise argparse.ArgumentTypeError("concurrency levels are integers in 1..1024")
    return levels


def parse_systems(text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown}; pick from {ALL_SYSTEMS}")
    return systems


def parse_apis(text: str) -> list[str]:
    apis = [s.strip() for s in text.split(",") if s.strip()]
    if not apis or any(a not in ALL_APIS for a in apis):
        raise argparse.ArgumentTypeError(f"apis are a comma-separated subset of {ALL_APIS}")
    return apis


def parse_provider(text: str) -> str:
    if text not in PROVIDERS:
        raise argparse.ArgumentTypeError(f"pick one of {PROVIDERS}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serving_benchmark.py",
        description="Same ONNX model, same requests: in-process ONNX Runtime vs the xdrec scorer "
        "(Predict, v2; batching off/on) vs a PyTorch-eager gRPC server vs MLServer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--repo",
        "--model-repo",
        dest="repo",
        type=Path,
        help="model repository (default: train + export one)",
    )
    p.add_argument("--run", type=Path, help="training run (model.pt for torch, features.tsv)")
    p.add_argument("--model", help="model name in the repository (default: the only one)")
    p.add_argument("--features", type=Path, help="features.tsv (default: the run's / repo's)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where to train")
    p.add_argument("--train-epochs", type=int, default=5, help="epochs when training here")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument("--systems", type=parse_systems, default=list(ALL_SYSTEMS))
    p.add_argument("--apis", type=parse_apis, default=list(ALL_APIS), help="scorer APIs")
    p.add_argument(
        "--realistic",
        action="store_true",
        help="a model worth measuring: without --repo, trains a 256-d history tower "
        f"({', '.join(REALISTIC_SETTINGS)}, {REALISTIC_EPOCHS} epochs, ML-100K) into "
        "artifacts/bench-serving-realistic; defaults become --candidates 500 (drawn with "
        "replacement when the catalogue is smaller) --concurrency 1,8,64 --systems "
        "ort-loop,ort-pool,scorer --apis predict --out bench/results/serving/realistic",
    )
    p.add_argument(
        "--providers",
        type=parse_provider,
        default="cpu",
        help="ONNX Runtime provider of in-process ORT and the scorer (tensorrt: FP16 kernels "
        "enabled); a GPU provider that is not usable is an error, never a silent CPU run",
    )
    p.add_argument("--concurrency", type=parse_levels, default=[1, 4, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    p.add_argument("--users", type=int, default=256, help="distinct requests (real users)")
    p.add_argument("--candidates", type=int, default=100, help="candidates per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="concurrent inference runs per server")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT / torch threads per run")
    p.add_argument("--mlserver-workers", type=int, default=2, help="MLServer parallel_workers")
    p.add_argument(
        "--scorer-access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the scorer's per-RPC JSON access log (the peers log nothing per request)",
    )
    p.add_argument(
        "--scorer-arg", action="append", default=[], help="extra scorer flag (repeatable)"
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of every call")
    p.add_argument("--check-requests", type=int, default=16, help="responses checked vs ORT")
    p.add_argument("--quick", action="store_true", help="smoke run: levels 1,16; 2 s; 0.5 s")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = build_parser().parse_args([])
    args.train_settings = ()
    if args.realistic:
        for name, value in REALISTIC.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
        args.train_settings = REALISTIC_SETTINGS
    if args.quick:
        if args.concurrency == defaults.concurrency:
            args.concurrency = [1, 16]
        if args.duration == defaults.duration:
            args.duration = 2.0
        if args.warmup == defaults.warmup:
            args.warmup = 0.5
    if args.duration <= 0 or args.duration > 600 or args.warmup < 0:
        print("error: --duration must be in (0, 600] s, --warmup >= 0", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
