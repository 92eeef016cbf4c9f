"""bench/recency_sweep.py on MovieLens-100K: settings parsed, validation per group, JSON written."""

import json

from bench.recency_sweep import main, parse_setting


def test_parse_setting_takes_commas_or_semicolons():
    assert parse_setting("base:") == ("base", [])
    assert parse_setting("a:model.x=1,train.y=z") == ("a", ["model.x=1", "train.y=z"])
    assert parse_setting("b:train.freeze=[a, b];model.x=1") == (
        "b",
        ["train.freeze=[a, b]", "model.x=1"],
    )


def test_sweep_scores_each_setting_on_validation_and_writes_json(tmp_path):
    out = tmp_path / "sweep.json"
    tiny = [
        "--set",
        "train.epochs=2",
        "--set",
        "train.eval_every=1",
        "--set",
        "train.num_threads=2",
    ]
    tiny += ["--set", "model.embedding_dim=16", "--set", "model.hidden_dim=16"]
    recency = "recency:model.recent_popularity_window=0.1,train.objective=future,"
    recency += "train.future_cut=session,train.future_window=0"
    code = main(
        ["--config", "trainer/configs/ml100k.yaml", "--strategy", "target_only", *tiny]
        + ["--setting", "base:", "--setting", recency, "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert {"popularity", "recent_popularity", "base", "recency"} <= set(report["runs"])
    assert "test" not in report["runs"]["recent_popularity"]  # test only with --test
    run = report["runs"]["recency"]["seeds"][0]
    assert set(run["valid"]) == {"warm", "cold"} and "test" not in run
    assert "recent_weight" in run and "recent_weight" not in report["runs"]["base"]["seeds"][0]
    assert all("valid_warm_ndcg@10" in point for point in run["curve"])
