"""The ``xdrec`` command: one entry point for training, export, serving and asking for items.

Subcommands register themselves (each module exposes ``register(subparsers)``). ``serve`` and
``recommend`` are always there (``cli.serving``), and so is ``features`` (``cli.features``: the
Redis feature store's bulk loader and export); ``train``, ``export`` and ``demo`` live in
``trainer.command``, ``export.command`` and ``cli.demo`` and are added only when those modules
exist, so the serving CLI works in a container that carries no training code; if such a module
exists but a dependency of it is missing, the subcommand is still listed and says which package
to install. Nothing here imports torch.
"""

from __future__ import annotations

import sys

from services.common.signals import install_early_stop

# `xdrec serve <service>` is PID 1 in the serving image: a SIGTERM during the imports below must
# stop it at once (the server's own handlers take over once it runs). Only for one service: `serve
# all` supervises children and other commands keep Ctrl-C's usual meaning.
if sys.argv[1:2] == ["serve"] and sys.argv[2:3] in (["encoder"], ["scorer"], ["ranker"]):
    install_early_stop()

import argparse  # noqa: E402
import importlib  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from cli import features  # noqa: E402
from cli.serving import recommend, serve  # noqa: E402
from services.common.endpoints import RANKER  # noqa: E402

# (subcommand, module providing register(subparsers), what to install when a dependency is missing)
OPTIONAL_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("train", "trainer.command", "pip install 'xdrec[train]'"),
    ("export", "export.command", "pip install 'xdrec[train]'"),
    ("distill", "trainer.distillation.command", "pip install 'xdrec[train]'"),
    ("demo", "cli.demo", "pip install 'xdrec[train]'"),
)

EPILOG = f"""\
typical session:
  xdrec demo                                        # train, export, serve, recommend, shut down
  xdrec serve all --model-repo models --features artifacts/run/features.tsv
  xdrec recommend --ranker localhost:{RANKER.grpc_port} --user 196 -k 10

Run `xdrec <command> --help` for the options of a command. Every `serve` option can also be set
with an environment variable XDREC_<OPTION>, e.g. XDREC_MODEL_REPO=models.
"""


def _is_module_or_parent(missing: str | None, module: str) -> bool:
    parts = module.split(".")
    return missing in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _register_unavailable(
    subparsers: argparse._SubParsersAction, name: str, missing: str, hint: str
) -> None:
    parser = subparsers.add_parser(name, help=f"(unavailable: needs {missing}; {hint})")

    def explain(_args: argparse.Namespace) -> int:
        print(f"xdrec {name} needs the Python package '{missing}': {hint}", file=sys.stderr)
        return 2

    parser.set_defaults(handler=explain)


def register_optional(subparsers: argparse._SubParsersAction) -> None:
    """Adds train / export / distill / demo when their modules exist."""
    for name, module_name, hint in OPTIONAL_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if _is_module_or_parent(exc.name, module_name):
                continue  # not written (or not packaged) here: no such subcommand
            _register_unavailable(subparsers, name, exc.name or "?", hint)
            continue
        module.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The full ``xdrec`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="xdrec",
        description="Cross-domain transfer-learning recommenders: train on a source domain, "
        "transfer to a thin target domain, export to ONNX and serve over gRPC.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_optional(subparsers)
    serve.register(subparsers)
    recommend.register(subparsers)
    features.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xdrec`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
