"""``xdrec serve {encoder,scorer,ranker,all}``: run one service, or all three as child processes.

Each service is described once by a ``ServiceSpec`` (its config dataclass and how to build its
app); the flags of ``xdrec serve <service>`` are generated from the config dataclass, so a new
setting is one new field. Apps are imported lazily: ``xdrec --help`` and ``xdrec recommend`` do
not pay for importing ONNX Runtime.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from dataclasses import dataclass

from services.common.config import ServerConfig, add_config_arguments, config_from_args
from services.common.logs import configure_logging
from services.encoder.config import EncoderConfig
from services.ranker.config import RankerConfig
from services.scorer.config import ScorerConfig


@dataclass(frozen=True)
class ServiceSpec:
    """How to configure and start one service."""

    name: str
    summary: str
    config_cls: type[ServerConfig]
    app_path: str  # "module:Class", imported only when the service starts
    example: str


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "encoder",
            "feature encoder: user histories + vocabularies -> model input tensors",
            EncoderConfig,
            "services.encoder.app:EncoderApp",
            "xdrec serve encoder --model-repo models --model ml100k-transfer "
            "--features artifacts/run/features.tsv --port 50051",
        ),
        ServiceSpec(
            "scorer",
            "ONNX Runtime scorer: serves every model in the repository (also KServe v2 protocol)",
            ScorerConfig,
            "services.scorer.app:ScorerApp",
            "xdrec serve scorer --model-repo models --port 50052",
        ),
        ServiceSpec(
            "ranker",
            "public Recommend API: calls encoder then scorer, ranks, filters, falls back",
            RankerConfig,
            "services.ranker.app:RankerApp",
            "xdrec serve ranker --encoder localhost:50051 --scorer localhost:50052 --port 50053",
        ),
    )
}


def build_app(spec: ServiceSpec, config: ServerConfig):  # noqa: ANN201 - returns a ServiceApp
    """Imports and instantiates the service's app class."""
    module_name, class_name = spec.app_path.split(":")
    return getattr(importlib.import_module(module_name), class_name)(config)


def run_service(spec: ServiceSpec, config: ServerConfig) -> int:
    """Runs one service in this process until SIGTERM/SIGINT; returns the exit code."""
    from services.common.server import serve

    try:
        app = build_app(spec, config)
    except ValueError as exc:  # configuration errors: say what is wrong, no traceback
        raise SystemExit(f"xdrec serve {spec.name}: {exc}") from None
    configure_logging(spec.name, config.log_level)
    return asyncio.run(serve(app, config))


def _run_from_args(args: argparse.Namespace) -> int:
    spec: ServiceSpec = args.service_spec
    return run_service(spec, config_from_args(spec.config_cls, args))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``serve`` and its per-service subcommands."""
    from services import supervisor

    serve = subparsers.add_parser(
        "serve",
        help="run a gRPC service (encoder, scorer, ranker) or all three",
        description="Run one of the three gRPC services in the foreground, or all three as "
        "child processes. Every flag can also be set with an environment variable "
        "XDREC_<FLAG> (e.g. XDREC_MODEL_REPO=models).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        + "\n".join(f"  {spec.example}" for spec in SERVICES.values())
        + "\n  xdrec serve all --model-repo models --features artifacts/run/features.tsv",
    )
    services = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for spec in SERVICES.values():
        parser = services.add_parser(
            spec.name,
            help=spec.summary,
            description=f"{spec.summary}.\nHealth stays NOT_SERVING until it has loaded and "
            "warmed up; SIGTERM/SIGINT drain in-flight requests within the grace period.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"example:\n  {spec.example}",
        )
        add_config_arguments(parser, spec.config_cls)
        parser.set_defaults(handler=_run_from_args, service_spec=spec)
    supervisor.register(services)
