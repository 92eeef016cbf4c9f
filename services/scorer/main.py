"""Runs the scorer as a process: ``python -m services.scorer`` and ``xdrec serve scorer``.

The config comes from flags and ``XDREC_*`` variables; the shared bootstrap
(``services.common.server.serve``) runs it. Nothing here imports the ``xdrec`` command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.common.endpoints import SCORER
from services.common.launch import ServiceLauncher
from services.scorer.config import ScorerConfig

if TYPE_CHECKING:
    from services.scorer.app import ScorerApp


def build_app(config: ScorerConfig) -> ScorerApp:
    """Imports the app only now: ``--help`` should not pay for loading it (ONNX Runtime, grpc.aio)."""
    from services.scorer.app import ScorerApp

    return ScorerApp(config)


LAUNCHER = ServiceLauncher(
    endpoint=SCORER,
    summary="ONNX Runtime scorer: serves every model in the repository (also KServe v2 protocol)",
    config_cls=ScorerConfig,
    app_factory=build_app,
    example_args=(f"--model-repo models --port {SCORER.grpc_port}"),
)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parses ``argv`` (default: the process arguments) and serves until SIGTERM/SIGINT."""
    return LAUNCHER.main(argv, prog)


def main() -> None:
    sys.exit(run())
