"""Smoke test of bench/serving_benchmark.py (and the bench/serving package behind it) so the
script cannot rot: the fixture repository, short levels, only the in-process ONNX Runtime and
scorer paths (no training, no side venvs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serving.measure import percentile  # noqa: E402
from tests.fixtures.model_repo import build_model_repo  # noqa: E402
from tests.fixtures.scripts import load_script  # noqa: E402

BENCH = ROOT / "bench" / "serving_benchmark.py"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


sb = load_script(BENCH, "xdrec_bench_serving")


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_quick_run_on_fixture_repo(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    out = tmp_path / "out"
    code = sb.main(
        [
            "--repo",
            str(repo.root),
            "--features",
            str(repo.features_path),
            "--systems",
            "ort-loop,ort-pool,scorer",
            "--concurrency",
            "1,4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--users",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "serving.json").read_text())
    assert (out / "serving.png").stat().st_size > 0
    assert "| system |" in (out / "serving.md").read_text()
    assert result["request"]["batch"] == 1
    assert result["request"]["candidates_per_request"] == len(repo.vocab_target) - 1
    levels = result["levels"]
    seen = {(lv["system"], lv["api"], lv["concurrency"]) for lv in levels}
    assert ("ort-loop", "in-process", 1) in seen
    assert {("ort-pool", "in-process", c) for c in (1, 4)} <= seen
    assert {("scorer", api, c) for api in ("predict", "v2") for c in (1, 4)} <= seen
    for lv in levels:
        assert lv["errors"] == 0, lv
        assert lv["requests"] > 0, lv
        assert lv["max_abs_diff_vs_ort"] is not None and lv["max_abs_diff_vs_ort"] < 1e-5, lv
        assert lv["x_throughput_vs_ort"] is not None, lv
        assert lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"], lv
