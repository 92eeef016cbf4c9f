"""Runs the encoder as a process: ``python -m services.encoder`` and ``xdrec serve encoder``.

The config comes from flags and ``XDREC_*`` variables; the shared bootstrap
(``services.common.server.serve``) runs it. Nothing here imports the ``xdrec`` command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.common.endpoints import ENCODER
from services.common.launch import ServiceLauncher
from services.encoder.config import EncoderConfig

if TYPE_CHECKING:
    from services.encoder.app import EncoderApp


def build_app(config: EncoderConfig) -> EncoderApp:
    """Imports the app only now: ``--help`` should not pay for loading it (ONNX Runtime, grpc.aio)."""
    from services.encoder.app import EncoderApp

    return EncoderApp(config)


LAUNCHER = ServiceLauncher(
    endpoint=ENCODER,
    summary="feature encoder: user histories + vocabularies -> model input tensors",
    config_cls=EncoderConfig,
    app_factory=build_app,
    example_args=(
        "--model-repo models --model ml100k-transfer --features artifacts/run/features.tsv "
        f"--port {ENCODER.grpc_port}"
    ),
)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parses ``argv`` (default: the process arguments) and serves until SIGTERM/SIGINT."""
    return LAUNCHER.main(argv, prog)


def main() -> None:
    sys.exit(run())
