"""The transfer benchmark harness (bench/transfer_benchmark.py, bench/transfer/): one row plus the
baselines on the sparse form of ML-100K with a tiny model, then the table / JSON structure, the
cap, resume, the plan's skip notes, and target verdicts chosen on validation (not test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.transfer.plan import build_plan  # noqa: E402
from bench.transfer.report import SectionTable, cold_target, sparse_target, warm_target  # noqa: E402
from bench.transfer.runner import rewrite_reports, run_plan  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.results_table import RunRecord  # noqa: E402
from trainer.splits import assign_domains  # noqa: E402

ROW = "history_tower · pretrain+finetune"
FUSED = "history_tower · pretrain+finetune + fusion"
SIMPLE = ("popularity", "recent_popularity", "item_knn", "bpr_mf")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = tiny_config()
    plan = build_plan(config, "tiny", [0], only_rows=[ROW, FUSED], only_variants=["sparse"])
    lines: list[str] = []
    written = run_plan(plan, out, config.to_dict(), say=lambda *a, **k: lines.append(a[0]))
    return out, plan, written, lines


def test_one_row_and_every_baseline_in_table_and_json(finished):
    out, plan, written, lines = finished
    assert [r.name for r in plan.reports] == ["tiny-sparse"]
    folder = out / "tiny-sparse"
    data = json.loads((folder / "transfer.json").read_text())
    assert data == json.loads(json.dumps(written["tiny-sparse"]))
    assert data["complete"] is True and data["seeds"] == [0]
    section = data["sections"]["main"]
    assert set(section["baselines"]["records"]) == set(SIMPLE)
    run = section["rows"][ROW]["runs"]["0"]
    assert run["best_epoch"] >= 1 and set(run["test"]) == {"warm", "cold"}
    assert 0 <= run["test"]["cold"]["ndcg@10"] <= 1
    assert set(data["derived"]["main"]["summary"]) == {*SIMPLE, ROW, FUSED}
    assert [t["target"].split(":")[0] for t in data["targets"]] == [
        "sparse variant",
        "two sources >= one source on cold-start users",
    ]
    assert data["targets"][1]["status"] == "not measured"
    table = (folder / "transfer.md").read_text()
    for name in (*SIMPLE, ROW, "## Targets (issue 10)", "warm vs best of pop/recent-pop"):
        assert name in table
    assert (folder / "transfer.png").stat().st_size > 10_000
    progress = [line for line in lines if f"] {ROW} seed=0" in line]
    assert len(progress) == 1 and "elapsed" in progress[0] and "eta" in progress[0]


def test_report_only_rewrites_the_whole_plan_from_the_store_training_nothing(finished):
    """A wider plan than the one that ran: its stored rows come back in declared order, the
    rows never run are left out and the report says it is partial; nothing is trained."""
    out, _, written, _ = finished
    config = tiny_config()
    wider = build_plan(
        config, "tiny", [0], only_rows=[ROW, FUSED, "target_only"], only_variants=["sparse"]
    )
    folder = out / "tiny-sparse"
    before = json.loads((folder / "transfer.json").read_text())
    rewritten = rewrite_reports(wider, out, config.to_dict())["tiny-sparse"]
    assert rewritten["complete"] is False  # history_tower · target_only was never run
    section = rewritten["sections"]["main"]
    assert section["rows"] == before["sections"]["main"]["rows"]  # no run added or retrained
    table = (folder / "transfer.md").read_text()
    assert "**partial**" in table and table.index(ROW) < table.index(FUSED)
    assert f"| {ROW} |" in table and "| history_tower · target_only" not in table
    # Rewriting the plan that ran gives back the complete report it wrote.
    again = rewrite_reports(
        build_plan(config, "tiny", [0], only_rows=[ROW, FUSED], only_variants=["sparse"]),
        out,
        config.to_dict(),
    )
    assert again["tiny-sparse"]["complete"] is True
    assert again["tiny-sparse"]["derived"] == written["tiny-sparse"]["derived"]


def test_the_sparse_cap_holds_on_the_benchmark_data(finished):
    _, plan, written, _ = finished
    config = plan.reports[0].sections[0].config
    assert config.data.max_interactions_per_user_domain == 10
    raw = load_dataset(config.data)
    domains = assign_domains(raw, config.data)
    rows = domains != ""
    _, counts = np.unique(
        np.char.add(raw.users[rows].astype(str), domains[rows].astype(str)), return_counts=True
    )
    assert counts.max() <= 10
    again = load_dataset(config.data)
    assert np.array_equal(raw.items, again.items)  # deterministic with the seed
    report = written["tiny-sparse"]["sections"]["main"]["split"]["dataset_report"]
    assert report["subsample"]["max_interactions_per_user_domain"] == 10


def test_resume_trains_nothing_twice(finished):
    out, plan, _, _ = finished
    lines: list[str] = []
    run_plan(plan, out, {}, say=lambda *a, **k: lines.append(a[0]))
    assert lines[0].startswith("0 run(s) to train")
    assert any("every run is already in" in line for line in lines)


def test_plan_skips_what_this_branch_lacks_with_a_note():
    plan = build_plan(tiny_config(), "tiny", [0, 1])
    sections = {s.name for r in plan.reports for s in r.sections}
    assert "main" in sections
    assert any("tiny-3domain.yaml does not exist" in s for s in plan.skipped)
    labels = [row.label for row in plan.reports[0].sections[0].rows]
    assert labels[:3] == [
        "history_tower · target_only",
        "history_tower · joint (CMF, lambda=1)",
        "history_tower · pretrain+finetune",
    ]
    frozen = plan.reports[0].sections[0].rows[3]
    assert frozen.config.train.freeze == ["source_embeddings"]
    assert len({row.config_hash for row in plan.reports[0].sections[0].rows}) == len(labels)


def _record(name: str, warm: float, cold: float, valid: tuple[float, float], baseline=False):
    metrics = {"warm": {"ndcg@10": warm}, "cold": {"ndcg@10": cold}}
    v = {"warm": {"ndcg@10": valid[0]}, "cold": {"ndcg@10": valid[1]}}
    return RunRecord(name, test=[metrics], valid=[v], is_baseline=baseline)


def test_targets_pick_the_best_transfer_on_validation_not_test():
    table = SectionTable("main", "", {"stats": {"valid_warm_users": 1, "valid_cold_users": 1}})
    table.runs = {
        "popularity": _record("popularity", 0.20, 0.40, (0.2, 0.4), baseline=True),
        "recent_popularity": _record("recent_popularity", 0.22, 0.38, (0.2, 0.4), True),
        "history_tower · target_only": _record("t", 0.21, 0.30, (0.2, 0.3), baseline=True),
        # a: better on validation, worse on test; b: the reverse. The verdict must use a.
        "a": _record("a", 0.26, 0.50, (0.5, 0.5)),
        "b": _record("b", 0.40, 0.70, (0.1, 0.1)),
    }
    table.kind = {"history_tower · target_only": "strategy"}
    warm, cold = warm_target(table), cold_target(table)
    assert warm.status == "missed" and "a (best on warm validation)" in warm.figure
    assert "1.18x recent_popularity" in warm.figure
    assert cold.status == "missed" and "1.25x popularity" in cold.figure
    sparse = sparse_target(table)
    assert sparse.status == "met" and sparse.figure.startswith("a ")


def test_run_hash_ignores_seeds_threads_and_fields_left_at_their_default():
    from bench.transfer.plan import run_hash

    config = tiny_config()
    base = run_hash(config, "strategy")
    config.train.seeds, config.train.num_threads = [5, 6], 1
    config.model.text_fusion = False  # the default: as if the field did not exist
    assert run_hash(config, "strategy") == base
    config.train.learning_rate = 1e-4
    assert run_hash(config, "strategy") != base
    assert run_hash(tiny_config(), "distill", "t") != base


def test_fusion_row_blends_the_plain_rows_model(finished):
    """The score-fusion row reuses the model its plain row trained (same seed, no retraining):
    its unfused figures are the plain row's, and its weights were fitted on validation."""
    out, _, _, lines = finished
    rows = json.loads((out / "tiny-sparse" / "transfer.json").read_text())["sections"]["main"]
    plain, fused = rows["rows"][ROW]["runs"]["0"], rows["rows"][FUSED]["runs"]["0"]
    assert any("blends the model trained for the row without fusion" in line for line in lines)
    assert fused["unfused"]["test"] == plain["test"]
    assert fused["unfused"]["valid"] == plain["valid"]
    for group, fit in fused["fusion"]["groups"].items():
        assert fit["valid_ndcg_fused"] >= fit["valid_ndcg_model"]
        valid = fused["valid"][group]
        assert valid["ndcg@10_in_sample"] == pytest.approx(fit["valid_ndcg_fused"], abs=1e-6)
        assert valid["ndcg@10"] == pytest.approx(fit["valid_ndcg_cross_fitted"], abs=1e-9)


def test_a_fusion_section_at_its_defaults_leaves_stored_run_hashes_alone():
    from bench.transfer.plan import run_hash, settings

    config = tiny_config()
    assert "fusion" not in settings(config)  # as before the section existed
    base = run_hash(config, "strategy")
    config.fusion.enabled = True
    assert run_hash(config, "strategy") != base
