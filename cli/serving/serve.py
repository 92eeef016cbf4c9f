"""``xdrec serve {encoder,scorer,ranker,all}``: run one service, or all three as child processes.

Each service describes itself once with a ``ServiceLauncher`` (``services/<name>/main.py``: its
config dataclass, how to build its app); ``xdrec serve <name>`` adds that launcher's flags and
runs it exactly as ``python -m services.<name>`` does. Apps are imported lazily: ``xdrec --help``
and ``xdrec recommend`` do not pay for importing ONNX Runtime.
"""

from __future__ import annotations

import argparse
from functools import partial

from cli.serving import supervisor
from services.common.launch import ServiceLauncher
from services.encoder.main import LAUNCHER as ENCODER_LAUNCHER
from services.ranker.main import LAUNCHER as RANKER_LAUNCHER
from services.scorer.main import LAUNCHER as SCORER_LAUNCHER

LAUNCHERS: dict[str, ServiceLauncher] = {
    launcher.name: launcher for launcher in (ENCODER_LAUNCHER, SCORER_LAUNCHER, RANKER_LAUNCHER)
}


def _run(launcher: ServiceLauncher, prog: str, args: argparse.Namespace) -> int:
    return launcher.run(launcher.config_from_args(args), prog)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``serve`` and its per-service subcommands."""
    serve = subparsers.add_parser(
        "serve",
        help="run a gRPC service (encoder, scorer, ranker) or all three",
        description="Run one of the three gRPC services in the foreground, or all three as "
        "child processes. Every flag can also be set with an environment variable "
        "XDREC_<FLAG> (e.g. XDREC_MODEL_REPO=models).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        + "\n".join(f"  xdrec serve {name} {ln.example_args}" for name, ln in LAUNCHERS.items())
        + "\n  xdrec serve all --model-repo models --features artifacts/run/features.tsv",
    )
    services = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for name, launcher in LAUNCHERS.items():
        prog = f"xdrec serve {name}"
        parser = services.add_parser(name, help=launcher.summary, **launcher.parser_options(prog))
        launcher.add_arguments(parser)
        parser.set_defaults(handler=partial(_run, launcher, prog))
    supervisor.register(services)
