"""bench/ranker_ab.py: flags are checked with the flag named, and a short real run (fixture model
repository, every variant's real services as processes, both load modes) reports every variant
at every level with the coalescing figures of the variant that coalesces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures.model_repo import build_model_repo  # noqa: E402
from tests.fixtures.scripts import load_script  # noqa: E402

ab = load_script(ROOT / "bench" / "ranker_ab.py", "ranker_ab")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--variant", "a=", "--variant", "a=--coalesce=false", "--rates", "10"], "--variant"),
        (["--variant", "a="], "--rates"),
        (["--variant", "a=", "--rates", "ten"], "--rates"),
        (["--variant", "a=", "--closed", "0"], "--closed"),
        (["--variant", "a=", "--rates", "10", "--variant-ref", "b=main"], "--variant-ref"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(
    argv: list[str], named: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exc:
        ab.main(argv)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_short_run_reports_every_variant_at_every_level(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    out = tmp_path / "out"
    code = ab.main(
        [
            "--repo",
            str(repo.root),
            "--features",
            str(repo.features_path),
            "--variant",
            "default=",
            "--variant",
            "plain=--coalesce=false",
            "--rates",
            "40",
            "--closed",
            "4",
            "--rounds",
            "1",
            "--step-s",
            "0.8",
            "--warmup-s",
            "0.2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "ranker_ab.json").read_text())
    assert result["baseline"] == "default"
    cells = {(e["mode"], e["level"], e["variant"]): e for e in result["summary"]}
    assert set(cells) == {
        (mode, level, variant)
        for mode, level in (("open", 40.0), ("closed", 4.0))
        for variant in ("default", "plain")
    }
    for entry in cells.values():
        assert entry["throughput_rps"] > 0 and entry["errors"] == 0
        assert set(entry["cpu_ms_per_request"]) >= {"encoder", "scorer", "ranker", "generator"}
    assert cells[("closed", 4.0, "default")]["mean_batch"] >= 1
    assert cells[("closed", 4.0, "default")]["p99_ms_x_baseline"] == 1.0
    assert cells[("closed", 4.0, "plain")]["mean_batch"] is None  # never coalesces
    assert "| 4 in flight | plain |" in (out / "ranker_ab.md").read_text()
