"""The load test against the real services, as CI runs it: budgets pass, and a broken budget
fails the run (exit 1), so a latency or error regression fails the build.

The three services run as `xdrec serve <component>` processes on free loopback ports with the
model repository from tests/fixtures/model_repo.py (``build_model_repo(root)``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.endpoints import free_loopback_port
from tests.fixtures.model_repo import build_model_repo

REPO = Path(__file__).resolve().parents[2]
LOADTEST = REPO / "bench" / "loadtest.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _model_repo(root: Path) -> tuple[Path, Path]:
    """(repository root, features.tsv) built by the shared fixture."""
    models = root / "models"
    models.mkdir(parents=True)
    return models, build_model_repo(models).features_path


@contextlib.contextmanager
def suite(tmp: Path) -> Iterator[tuple[int, Path]]:
    """Starts encoder, scorer and ranker; yields the ranker's port and the features file."""
    models, features = _model_repo(tmp / "data")
    ports = {c: free_loopback_port() for c in ("encoder", "scorer", "ranker")}
    common = {"XDREC_METRICS_PORT": "0", "XDREC_ACCESS_LOG": "false", "XDREC_LOG_LEVEL": "WARNING"}
    envs = {
        "encoder": {"XDREC_MODEL_REPO": str(models), "XDREC_FEATURES": str(features)},
        "scorer": {"XDREC_MODEL_REPO": str(models), "XDREC_PROVIDERS": "cpu"},
        "ranker": {
            "XDREC_ENCODER": f"127.0.0.1:{ports['encoder']}",
            "XDREC_SCORER": f"127.0.0.1:{ports['scorer']}",
        },
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
    xdrec = str(Path(sys.executable).parent / "xdrec")
    procs = []
    try:
        for component, env in envs.items():
            log = (tmp / f"{component}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [xdrec, "serve", component],
                    env={**base, **common, **env, "XDREC_PORT": str(ports[component])},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield ports["ranker"], features
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOADTEST), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_loadtest_budgets_against_the_real_services(tmp_path: Path) -> None:
    with suite(tmp_path) as (ranker_port, features):
        out = tmp_path / "loadtest.json"
        common = [
            "--target",
            f"127.0.0.1:{ranker_port}",
            "--features",
            str(features),
            "--wait-ready",
            "60",
            "--warmup",
            "1",
        ]
        started = time.monotonic()
        ok = _loadtest(
            *common,
            "--rate", "40", "--duration", "3",
            # generous budgets: shared CI machines drift; this catches breakage, not 10% slips
            "--p99-budget-ms", "1000", "--max-error-rate", "0",
            "--out", str(out),
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert time.monotonic() - started < 120
        result = json.loads(out.read_text())
        summary = result["summary"]
        assert result["passed"] is True
        assert summary["requests"] == 120 and summary["errors"] == 0
        assert set(summary["by_user_kind"]) == {"warm", "cold", "unknown"}
        assert summary["latency"]["p99_ms"] <= 1000
        assert "p50 ms" in ok.stdout and "budgets" in ok.stdout

        broken = _loadtest(*common, "--rate", "20", "--duration", "1", "--p99-budget-ms", "0.001")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "FAIL" in broken.stdout
