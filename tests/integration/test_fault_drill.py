"""The fault drill's short form, as CI runs it: real service processes, kill -9 and restart of the
encoder and of the scorer under load, then 3x capacity.

Budgets (``bench/fault_drill.py --check``): 0 failed valid Recommends while one dependency is
down (every degraded answer flagged), the ranker's first normal answer <= 1 s after the restarted
dependency reports SERVING, and at 3x capacity the excess is shed (RESOURCE_EXHAUSTED) while
valid requests are still answered.

Why no goodput share here: CI has two cores shared by the three services and this Python load
generator, which at 3x load spends about as much CPU per request as the services, so goodput is
bounded by the generator, not the ranker (runs here: 50-73% of capacity, the ranker's own metrics
showing almost nothing in flight). The full drill keeps the 90% target (``--min-goodput-share``
default) and reports it (docs/results/drill/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.model_repo import build_model_repo

REPO = Path(__file__).resolve().parents[2]
DRILL = REPO / "bench" / "fault_drill.py"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]
CI_GOODPUT_SHARE = 0.0  # not measurable on two shared cores: see the module docstring
CI_P99_BUDGET_MS = 60_000.0  # likewise: the generator's and the services' CPU share decide it
CI_RATE_SHARE = 0.3
"""Load during the faults as a share of capacity. The drill's capacity now comes from a separate,
lighter generator process and reads higher (here 240-430/s against 220-280/s from the old
in-process one), so 0.5 of it is more absolute load than before; on two shared cores a
restarting scorer (ONNX Runtime start-up and warm-up) then starves the other services and
requests time out or are shed for CPU, which is not what this test is about. 0.3 keeps the
absolute load of the old form (about 70-130/s)."""


def test_short_fault_drill_meets_its_budgets(tmp_path: Path) -> None:
    built = build_model_repo(tmp_path / "models")
    out = tmp_path / "drill.json"
    run = subprocess.run(
        [
            sys.executable,
            str(DRILL),
            "--model-repo",
            str(built.root),
            "--features",
            str(built.features_path),
            "--out",
            str(out),
            "--capacity-s",
            "3",
            "--baseline-s",
            "1",
            "--down-s",
            "1",
            "--settle-s",
            "1",
            "--overload-s",
            "3",
            "--rate-share",
            str(CI_RATE_SHARE),
            "--min-goodput-share",
            str(CI_GOODPUT_SHARE),
            "--p99-budget-ms",
            str(CI_P99_BUDGET_MS),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["missed"] == []
    phases = {p["name"]: p for p in report["phases"]}
    for fault, flag in (
        ("scorer_fault", "FALLBACK_SCORER_UNAVAILABLE"),
        ("encoder_fault", "FALLBACK_ENCODER_UNAVAILABLE"),
    ):
        phase = phases[fault]
        assert phase["failed"] == 0, phase["by_status"]
        assert phase["by_fallback"].get(flag, 0) > 0  # the fault was seen, and flagged
        assert phase["extra"]["degraded_while_down"] > 0
        assert phase["extra"]["recovery_s"] is not None and phase["extra"]["recovery_s"] <= 1.0
    overload = phases["overload"]
    assert overload["by_status"].get("OK", 0) > 0  # valid requests still answered
    assert overload["by_status"].get("RESOURCE_EXHAUSTED", 0) > 0  # the excess was shed
    # How fast a refusal is, is asserted server-side in tests/unit/ranker/test_admission.py: seen from
    # this Python client at 3x load it includes the client's own queueing (client_send_lag_p99_ms).
