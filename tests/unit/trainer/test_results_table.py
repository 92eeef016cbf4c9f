"""The results table: "-" for the std of single runs, gains against the best baseline."""

from trainer.results_table import RunRecord, best_baseline, format_table, results_markdown


def _run(name: str, warm: list[float], cold: list[float], baseline: bool) -> RunRecord:
    record = RunRecord(name, is_baseline=baseline)
    for w, c in zip(warm, cold, strict=True):
        record.test.append({"warm": {"ndcg@10": w, "precision@10": w / 2}, "cold": {"ndcg@10": c}})
    return record


def _runs() -> dict[str, RunRecord]:
    return {
        "popularity": _run("popularity", [0.20], [0.10], True),
        "item_knn": _run("item_knn", [0.10], [0.16], True),
        "target_only": _run("target_only", [0.25, 0.27], [0.08, 0.09], True),
        "joint": _run("joint", [0.26, 0.30], [0.20, 0.24], False),
    }


def test_single_runs_print_a_dash_for_std():
    table = format_table(_runs())
    popularity = next(line for line in table.splitlines() if line.startswith("| popularity"))
    assert "0.2000 ± -" in popularity and "0.1000 ± -" in popularity
    assert "± 0.0000" not in popularity
    joint = next(line for line in table.splitlines() if line.startswith("| joint"))
    assert "0.2800 ± 0.0200" in joint


def test_gains_are_against_the_best_baseline_of_each_group():
    runs = _runs()
    assert best_baseline(runs, "warm") == ("target_only", 0.26)
    assert best_baseline(runs, "cold") == ("item_knn", 0.16)
    table = format_table(runs)
    assert "warm ndcg@10 vs best baseline (target_only)" in table
    assert "cold ndcg@10 vs best baseline (item_knn)" in table
    joint = next(line for line in table.splitlines() if line.startswith("| joint"))
    assert joint.endswith(f"| {0.28 / 0.26 - 1:+.1%} | {0.22 / 0.16 - 1:+.1%} |")


def test_markdown_names_the_split_and_shows_more_metrics():
    text = results_markdown(_runs(), {}, "random")
    assert text.startswith("Split: **random**.")
    assert "warm precision@10" in text and "cold novelty@10" in text
