"""Starting one service as a process: typed config from flags + ``XDREC_*``, then the bootstrap.

Why here and not in the ``xdrec`` command: a service container (or ``python -m services.scorer``)
must start a service without importing the command line, which also carries training, export
and the demo. Each service describes itself once with a ``ServiceLauncher`` in its ``main``
module; ``python -m services.<name>`` and ``xdrec serve <name>`` both go through it, so the
flags, the help text and the start-up error handling are the same either way.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.config import ServerConfig, add_config_arguments, config_from_args
from services.common.endpoints import Endpoint
from services.common.logs import configure_logging
from services.common.signals import early_stop

LIFECYCLE_NOTE = (
    "Health stays NOT_SERVING until it has loaded and warmed up; SIGTERM/SIGINT drain in-flight "
    "requests within the grace period. Every flag can also be set with an environment variable "
    "XDREC_<FLAG> (e.g. XDREC_MODEL_REPO=models)."
)


@dataclass(frozen=True)
class ServiceLauncher:
    """How to configure and start one service."""

    endpoint: Endpoint
    summary: str
    """One line: what the service does (``--help``, ``xdrec serve --help``)."""
    config_cls: type[ServerConfig]
    app_factory: Callable[[Any], Any]
    """Builds the ``ServiceApp`` from the config; imports the app lazily, so ``--help`` and
    ``xdrec recommend`` do not pay for ONNX Runtime."""
    example_args: str
    """Flags of a typical invocation, shown after the command name in ``--help``."""

    @property
    def name(self) -> str:
        return self.endpoint.name

    def parser_options(self, prog: str) -> dict[str, Any]:
        """Description and example for an ``ArgumentParser`` / ``add_parser`` call."""
        return {
            "description": f"{self.summary}.\n{LIFECYCLE_NOTE}",
            "epilog": f"example:\n  {prog} {self.example_args}",
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        }

    def add_arguments(
        self, parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
    ) -> None:
        """One flag per config field, defaults from ``XDREC_*`` first."""
        add_config_arguments(parser, self.config_cls, environ=environ)

    def build_parser(self, prog: str) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=prog, **self.parser_options(prog))
        self.add_arguments(parser)
        return parser

    def config_from_args(self, args: argparse.Namespace) -> ServerConfig:
        return config_from_args(self.config_cls, args)

    def run(self, config: ServerConfig, prog: str) -> int:
        """Runs the service in this process until SIGTERM/SIGINT; returns the exit code."""
        # `xdrec serve <name>` comes here without the __main__ module: stop signals are
        # honoured during the imports and app construction too; ``serve`` then takes over.
        with early_stop():
            from services.common.server import serve, transport_security

            try:
                transport_security(config)  # certificates and tokens readable: fail before binding
                app = self.app_factory(config)
            except ValueError as exc:  # configuration errors: say what is wrong, no traceback
                raise SystemExit(f"{prog}: {exc}") from None
            configure_logging(self.name, config.log_level)
            return asyncio.run(serve(app, config))

    def main(self, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
        """Parses ``argv`` (default: ``sys.argv[1:]``) and runs the service."""
        prog = prog or f"python -m services.{self.name}"
        args = self.build_parser(prog).parse_args(argv)
        return self.run(self.config_from_args(args), prog)
