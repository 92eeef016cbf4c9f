"""The serving benchmark's realistic-model option (``--realistic``, ``--model-repo``) and the GPU
script's refusal on a machine without a GPU: short runs on the fixture repository, so the options
cannot rot. (The realistic model itself is trained by the benchmark, not here: too slow.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serving.model import REALISTIC_SETTINGS  # noqa: E402
from services.scorer.providers import CUDA, probe  # noqa: E402
from tests.fixtures.model_repo import build_model_repo  # noqa: E402
from tests.fixtures.scripts import load_script  # noqa: E402

sb = load_script(ROOT / "bench" / "serving_benchmark.py", "xdrec_bench_serving")
gpu = load_script(ROOT / "bench" / "gpu_serving.py", "xdrec_bench_gpu_serving")


def test_realistic_settings_are_a_256d_tower_with_200_item_histories() -> None:
    assert "model.embedding_dim=256" in REALISTIC_SETTINGS
    assert "model.max_source_history=200" in REALISTIC_SETTINGS
    assert "model.max_target_history=200" in REALISTIC_SETTINGS


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_realistic_quick_run_on_another_model_repo(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    out = tmp_path / "out"
    code = sb.main(
        [
            "--realistic",
            "--model-repo",
            str(repo.root),
            "--features",
            str(repo.features_path),
            "--systems",
            "ort-pool,scorer",
            "--concurrency",
            "1,8",
            "--duration",
            "0.6",
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
    request = result["request"]
    # the fixture catalogue is smaller than 500: candidates are drawn with replacement
    assert request["candidates_per_request"] == 500
    assert request["candidates_with_replacement"] is True
    assert result["settings"]["realistic"] is True
    assert result["settings"]["ort_providers_used"] == ["CPUExecutionProvider"]
    seen = {(lv["system"], lv["api"], lv["concurrency"]) for lv in result["levels"]}
    assert seen == {
        *{("ort-pool", "in-process", c) for c in (1, 8)},
        *{(s, "predict", c) for s in ("scorer", "scorer+batch") for c in (1, 8)},
    }
    for lv in result["levels"]:
        assert lv["errors"] == 0 and lv["requests"] > 0, lv
        assert lv["max_abs_diff_vs_ort"] < 1e-5, lv


def test_gpu_script_names_missing_providers_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if probe(CUDA).usable:
        pytest.skip("a usable GPU is present: the refusal path does not apply")
    assert gpu.main(["--out", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert "CUDAExecutionProvider: MISSING" in captured.out
    assert "TensorrtExecutionProvider: MISSING" in captured.out
    assert "--skip-missing" in captured.err
    assert gpu.main(["--skip-missing", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu_serving.json").read_text())
    assert summary["runs"] == {} and set(summary["skipped"]) == {"cuda", "tensorrt-fp16"}
