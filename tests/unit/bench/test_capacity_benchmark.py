"""Smoke test of bench/capacity_benchmark.py (and bench/capacity/ behind it) so the script cannot
rot: the fixture model repository, the real services and a real redis-server as processes, one or
two very short open-loop steps per target."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.capacity.traffic import CapacityMix, build_requests, describe_requests  # noqa: E402
from tests.fixtures.model_repo import build_model_repo  # noqa: E402
from tests.fixtures.redis_server import require_redis_server  # noqa: E402
from tests.fixtures.scripts import load_script  # noqa: E402

cb = load_script(ROOT / "bench" / "capacity_benchmark.py", "xdrec_bench_capacity")


def test_variant_flags_are_shell_split() -> None:
    assert cb.parse_variant("plain=") == ("plain", ())
    assert cb.parse_variant("co=--coalesce --max-in-flight 32") == (
        "co",
        ("--coalesce", "--max-in-flight", "32"),
    )
    with pytest.raises(argparse.ArgumentTypeError):
        cb.parse_variant("--coalesce")
    _, flags = cb.parse_variant("x=--coalesce scorer:--intra-op-threads=1 encoder:--a b")
    assert cb.route_flags(flags) == {
        "ranker": ["--coalesce", "b"],
        "scorer": ["--intra-op-threads=1"],
        "encoder": ["--a"],
    }


def test_bad_settings_are_refused_with_the_flag_named(capsys: pytest.CaptureFixture) -> None:
    assert cb.main(["--step-factor", "1"]) == 2
    assert "--step-factor" in capsys.readouterr().err
    assert cb.main(["--variant", "a=", "--variant", "a=--x"]) == 2
    assert "--variant names must differ" in capsys.readouterr().err


def test_traffic_mix_has_every_kind_of_request(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    specs = build_requests(repo.features_path, CapacityMix(), count=2000, seed=1)
    mix = describe_requests(specs)
    assert set(mix["user_kinds"]) == {"warm", "cold", "unknown"}
    assert abs(mix["user_kinds"]["warm"] - 0.6) < 0.05
    assert abs(mix["with_candidates"] - 0.3) < 0.05
    assert abs(mix["with_exclusions"] - 0.2) < 0.05
    assert all(s.payload for s in specs)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_quick_run_memory_and_redis(tmp_path: Path) -> None:
    require_redis_server()
    repo = build_model_repo(tmp_path / "repo", versions=1)
    out = tmp_path / "out"
    code = cb.main(
        [
            "--repo",
            str(repo.root),
            "--features",
            str(repo.features_path),
            "--stores",
            "memory,redis",
            "--ranker-args",
            "--max-in-flight 32",
            "--quick",
            "--probe-s",
            "0.5",
            "--step-s",
            "1",
            "--warmup-s",
            "0.3",
            "--max-steps-up",
            "1",
            "--start-share",
            "0.2",
            "--no-half-rate",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads((out / "capacity.json").read_text())
    assert (out / "capacity.png").stat().st_size > 0
    assert "| ceiling (health Check) |" in (out / "capacity.md").read_text()
    names = [t["name"] for t in result["targets"]]
    assert names == ["ceiling (health Check)", "Recommend memory", "Recommend redis"]
    assert result["ceiling_rps"] and result["ceiling_rps"] > 0
    assert len(result["machine"]["load_average_before"]) == 3
    for target in result["targets"]:
        assert target["steps"], target["name"]
        assert all(step["rate"] > 0 for step in target["steps"])
        if target["kind"] == "recommend":
            assert target["ranker_args"] == ["--max-in-flight", "32"]
            assert set(target["memory_mb"]) >= {"encoder", "scorer", "ranker"}
            assert target["memory_mb"]["ranker"]["rss_mb"] > 10
            step = target["steps"][0]
            assert set(step["cpu_ms_per_request"]) >= {"encoder", "scorer", "ranker", "generator"}
            assert step["requests"] > 0
    redis_target = result["targets"][2]
    assert redis_target["redis_memory"]["keys"] > 0
    assert redis_target["memory_mb"]["redis"]["rss_mb"] > 0
    assert (
        any("Redis capacity" in c["target"] for c in result["checks"])
        or not (result["targets"][1]["capacity_rps"])
    )
