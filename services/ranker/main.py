"""Runs the ranker as a process: ``python -m services.ranker`` and ``xdrec serve ranker``.

The config comes from flags and ``XDREC_*`` variables; the shared bootstrap
(``services.common.server.serve``) runs it. Nothing here imports the ``xdrec`` command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.common.endpoints import ENCODER, RANKER, SCORER
from services.common.launch import ServiceLauncher
from services.ranker.config import RankerConfig

if TYPE_CHECKING:
    from services.ranker.app import RankerApp


def build_app(config: RankerConfig) -> RankerApp:
    """Imports the app only now: ``--help`` should not pay for loading it (ONNX Runtime, grpc.aio)."""
    from services.ranker.app import RankerApp

    return RankerApp(config)


LAUNCHER = ServiceLauncher(
    endpoint=RANKER,
    summary="public Recommend API: calls encoder then scorer, ranks, filters, falls back",
    config_cls=RankerConfig,
    app_factory=build_app,
    example_args=(
        f"--encoder localhost:{ENCODER.grpc_port} --scorer localhost:{SCORER.grpc_port} "
        f"--port {RANKER.grpc_port}"
    ),
)


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parses ``argv`` (default: the process arguments) and serves until SIGTERM/SIGINT."""
    return LAUNCHER.main(argv, prog)


def main() -> None:
    sys.exit(run())
