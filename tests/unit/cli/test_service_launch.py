"""One service, two ways to start it: ``python -m services.<name>`` and ``xdrec serve <name>``,
both through the service's own launcher; names, ports and the dial rule from one table."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from xdrec.encoder.v1 import encoder_pb2
from xdrec.kserve.v2 import grpc_service_pb2
from xdrec.ranker.v1 import ranker_pb2
from xdrec.scorer.v1 import scorer_pb2

from cli import main as cli
from cli.serving.serve import LAUNCHERS
from cli.serving.supervisor import ServeAllConfig, child_commands
from services.common.endpoints import ENDPOINTS, dial_address, dial_target
from services.encoder.config import EncoderConfig
from services.ranker.config import RankerConfig
from services.scorer.config import ScorerConfig

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = {"encoder": EncoderConfig, "scorer": ScorerConfig, "ranker": RankerConfig}


def test_the_endpoint_table_is_the_documented_contract() -> None:
    table = {name: (e.grpc_port, e.metrics_port, e.health_names) for name, e in ENDPOINTS.items()}
    assert table == {
        "encoder": (50051, 9091, ("xdrec.encoder.v1.EncoderService",)),
        "scorer": (
            50052,
            9092,
            ("xdrec.scorer.v1.ScorerService", "inference.GRPCInferenceService"),
        ),
        "ranker": (50053, 9093, ("xdrec.ranker.v1.RankerService",)),
    }
    descriptors = {
        "encoder": encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"],
        "scorer": scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"],
        "ranker": ranker_pb2.DESCRIPTOR.services_by_name["RankerService"],
    }
    for name, descriptor in descriptors.items():
        assert ENDPOINTS[name].health_name == descriptor.full_name
    v2 = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    assert ENDPOINTS["scorer"].health_names[1] == v2


@pytest.mark.parametrize(
    ("bind", "dial"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("[::]", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("localhost", "localhost"),
    ],
)
def test_a_wildcard_bind_address_is_dialled_on_loopback(bind: str, dial: str) -> None:
    assert dial_address(bind) == dial
    assert dial_target(bind, 7) == f"{dial}:7"


def test_service_configs_default_to_the_table() -> None:
    for name, config_cls in CONFIGS.items():
        config = config_cls()
        assert (config.port, config.metrics_port) == (
            ENDPOINTS[name].grpc_port,
            ENDPOINTS[name].metrics_port,
        )
        assert config.host == "127.0.0.1"  # loopback unless told otherwise (the chart binds all)
    ranker = RankerConfig()
    assert (ranker.encoder, ranker.scorer) == ("localhost:50051", "localhost:50052")
    assert ServeAllConfig().ports() == {n: e.grpc_port for n, e in ENDPOINTS.items()}


def test_serve_all_dials_wildcard_binds_on_loopback_and_starts_services_without_the_cli() -> None:
    commands = child_commands(ServeAllConfig(model_repo="r", host="0.0.0.0"))
    ranker = commands["ranker"]
    assert ranker[ranker.index("--encoder") + 1] == "127.0.0.1:50051"
    assert ranker[ranker.index("--scorer") + 1] == "127.0.0.1:50052"
    for name, command in commands.items():
        assert command[1:3] == ["-m", f"services.{name}"]
        assert command[command.index("--host") + 1] == "0.0.0.0"


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_xdrec_serve_and_python_m_take_the_same_flags() -> None:
    parser = cli.build_parser()
    for name, launcher in LAUNCHERS.items():
        via_cli = _subparser(parser, "serve", name)
        direct = launcher.build_parser(f"python -m services.{name}")
        flags = {o for a in via_cli._actions for o in a.option_strings}
        assert flags == {o for a in direct._actions for o in a.option_strings}
        assert "--model-repo" in flags or name == "ranker"


@pytest.mark.parametrize("name", ["encoder", "scorer", "ranker"])
def test_python_m_service_help(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"services.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m services.{name}" in result.stdout
    assert "XDREC_PORT" in result.stdout and f"python -m services.{name} --" in result.stdout


def test_python_m_service_explains_a_configuration_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.scorer", "--metrics-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "python -m services.scorer: the scorer needs --model-repo" in result.stderr
    assert "Traceback" not in result.stderr
