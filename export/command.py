"""``xdrec export``: publish a training run into the model repository."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained run to ONNX, check parity, publish a new model version",
        description="Exports the run's model to ONNX with dynamic axes, checks the graph against "
        "PyTorch on real users, and publishes <repo>/<name>/<next version>/ atomically.",
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="training run directory (xdrec train --out)"
    )
    parser.add_argument("--repo", type=Path, required=True, help="model repository root")
    parser.add_argument(
        "--name", help="model name in the repository (default: the experiment name)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |torch - onnx| score difference (default 1e-4)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--variant",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="graph to publish: fp32 (default), fp16 (GPU; FP32 inputs/outputs) or int8 (CPU, "
        "dynamic quantisation); a variant is published as the next version of the same model, "
        "with exporter.variant and its drift against FP32 on real users in the manifest",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from export.exporter import ExportOptions, export_run
    from export.parity import ParityError

    try:
        export_run(
            ExportOptions(
                args.run, args.repo, args.name, args.opset, args.tolerance, variant=args.variant
            )
        )
    except (FileNotFoundError, ParityError, ValueError) as error:
        print(f"xdrec export: {error}")
        return 2
    return 0
