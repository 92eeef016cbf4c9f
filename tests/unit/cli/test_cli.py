"""The ``xdrec`` command: help, optional subcommands, JSON logs, and ``serve all`` for real."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2

from cli import main as cli
from cli.serving.recommend import format_table
from cli.serving.supervisor import ServeAllConfig, child_commands
from services.common.endpoints import free_loopback_ports
from services.common.logs import REQUEST_ID, JsonFormatter
from tests.fixtures.model_repo import BuiltRepo

ROOT = Path(__file__).resolve().parents[3]


def test_help_describes_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("serve", "recommend", "xdrec recommend --ranker"):
        assert word in text
    with pytest.raises(SystemExit):
        cli.main(["serve", "all", "--help"])
    text = capsys.readouterr().out
    assert "--encoder-port" in text and "XDREC_MODEL_REPO" in text and "example" in text


def test_serve_without_a_repository_explains_itself() -> None:
    with pytest.raises(SystemExit, match="--model-repo"):
        cli.main(["serve", "scorer", "--metrics-port", "0"])


def test_optional_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import torch_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        cli,
        "OPTIONAL_COMMANDS",
        (
            ("ghost", "no_such_package.command", "pip install x"),
            ("heavy", "needs_missing_dep", "pip install 'xdrec[train]'"),
        ),
    )
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert "ghost" not in choices  # module absent: no subcommand
    assert "heavy" in choices  # module present but a dependency missing: explained
    assert cli.main(["heavy"]) == 2
    assert "torch_that_is_not_installed" in capsys.readouterr().err


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord(
        "xdrec.test", logging.INFO, __file__, 1, "hello %s", ("world",), None
    )
    record.method = "Recommend"
    token = REQUEST_ID.set("rid-7")
    try:
        line = JsonFormatter("ranker").format(record)
    finally:
        REQUEST_ID.reset(token)
    payload = json.loads(line)
    assert payload["msg"] == "hello world" and payload["request_id"] == "rid-7"
    assert payload["service"] == "ranker" and payload["method"] == "Recommend"
    assert "\n" not in line


def test_recommend_table() -> None:
    response = ranker_pb2.RecommendResponse(
        items=[ranker_pb2.RankedItem(item_id="t01", title="Toy Story (1995)", score=0.25, rank=1)],
        model=tensor_pb2.ModelRef(name="m", version="3"),
        user_status=tensor_pb2.USER_STATUS_UNKNOWN,
        fallback=ranker_pb2.FALLBACK_POPULARITY,
        request_id="r",
    )
    text = format_table(response, "42")
    assert "model m version 3" in text and "UNKNOWN" in text and "fallback: popularity" in text
    assert "   1      0.2500  t01      Toy Story (1995)" in text


def test_child_commands_use_the_configured_ports() -> None:
    commands = child_commands(
        ServeAllConfig(model_repo="r", encoder_port=1, scorer_port=2, ranker_port=3, metrics=False)
    )
    assert commands["ranker"][commands["ranker"].index("--encoder") + 1] == "127.0.0.1:1"
    assert commands["scorer"][commands["scorer"].index("--port") + 1] == "2"
    assert "--metrics-port" in commands["encoder"]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_serve_all_then_recommend_then_sigterm(repo: BuiltRepo) -> None:
    encoder, scorer, ranker = free_loopback_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
    command = [
        sys.executable, "-m", "cli", "serve", "all",
        "--model-repo", str(repo.root), "--features", str(repo.features_path),
        "--encoder-port", str(encoder), "--scorer-port", str(scorer), "--ranker-port", str(ranker),
        "--no-metrics", "--grace-period-s", "1", "--log-level", "WARNING", "--start-timeout-s", "60",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once all three are SERVING
        assert line.startswith("serving:"), line
        result = subprocess.run(
            [sys.executable, "-m", "cli", "recommend", "--ranker", f"127.0.0.1:{ranker}",
             "--user", "warm", "-k", "3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"model tiny-xd version {repo.latest}" in result.stdout and "(WARM)" in result.stdout
        assert (
            len(
                [
                    ln
                    for ln in result.stdout.splitlines()
                    if ln.strip().startswith(("1 ", "2 ", "3 "))
                ]
            )
            == 3
        )
        bad = subprocess.run(
            [sys.executable, "-m", "cli", "recommend", "--ranker", f"127.0.0.1:{ranker}",
             "--user", "warm", "-k", "0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert bad.returncode == 1 and "INVALID_ARGUMENT: k:" in bad.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        returncode = process.wait(timeout=30)
    assert returncode == 0
    assert time.monotonic() - started < 15
