"""Data checks of the loader on small generic logs: splits without timestamps, duplicate
products across domains, id collisions, text fusion without titles, the dataset report."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import tiny_config
from tests.unit.trainer.generic_logs import generic_config, two_domain_rows, write_csv
from trainer.data import load_dataset
from trainer.dataset_report import format_dataset_report
from trainer.experiment import run_experiment
from trainer.splits import TARGET, split_dataset


def test_log_without_timestamps_refuses_a_time_split(tmp_path):
    path = write_csv(tmp_path / "log.csv", two_domain_rows(timestamps=False))
    with pytest.raises(ValueError, match="no 'timestamp' column") as error:
        load_dataset(generic_config(path).data)
    assert "leave_last_out" in str(error.value) and "random" in str(error.value)


def test_leave_last_out_holds_out_each_users_last_rows_in_row_order(tmp_path):
    rows = two_domain_rows(users=30, timestamps=False)
    path = write_csv(tmp_path / "log.csv", rows)
    config = generic_config(path, split="leave_last_out")
    config.split.cold_share = 0.0
    raw = load_dataset(config.data)
    split = split_dataset(raw, config.data, config.split)
    target_rows = [r for r in rows if r["domain"] == TARGET]
    for user, labels in zip(split.test["warm"].users, split.test["warm"].labels, strict=True):
        own = [r["item_id"] for r in target_rows if r["user_id"] == user]
        assert [split.target_vocab.ids[i] for i in labels] == [own[-1]]
    for user, labels in zip(split.valid["warm"].users, split.valid["warm"].labels, strict=True):
        own = [r["item_id"] for r in target_rows if r["user_id"] == user]
        assert [split.target_vocab.ids[i] for i in labels] == [own[-2]]
    assert len(split.test["warm"]) == 30
    for user, history in split.train_target.items():
        own = [r["item_id"] for r in target_rows if r["user_id"] == user]
        assert [split.target_vocab.ids[i] for i in history] == own[:-2]
    assert split.dataset_report["split"] == "leave_last_out"
    assert "row order stands in for time" in split.dataset_report["split_description"]


def test_random_split_is_seeded_and_keeps_the_shares(tmp_path):
    path = write_csv(tmp_path / "log.csv", two_domain_rows(users=200, timestamps=False))
    config = generic_config(path, split="random")
    config.split.cold_share = 0.0
    raw = load_dataset(config.data)
    first = split_dataset(raw, config.data, config.split)
    again = split_dataset(raw, config.data, config.split)
    assert first.test["warm"].users == again.test["warm"].users
    phases = np.bincount(first.target_events["phase"], minlength=3) / 1000
    assert phases[2] == pytest.approx(0.1, abs=0.03) and phases[1] == pytest.approx(0.1, abs=0.03)


def test_unknown_split_name_fails_before_loading(tmp_path):
    config = generic_config(tmp_path / "missing.csv", split="chronological")
    with pytest.raises(ValueError, match=r"data.split: unknown value 'chronological'"):
        load_dataset(config.data)


def test_parquet_log_without_timestamps_loads_with_leave_last_out(tmp_path):
    rows = two_domain_rows(users=10, timestamps=False)
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, tmp_path / "log.parquet")
    raw = load_dataset(generic_config(tmp_path / "log.parquet", split="leave_last_out").data)
    assert not raw.has_timestamps and len(raw) == 100


def _with_duplicate(users_with_copy: int = 15) -> list[dict]:
    """A source item "s_dup" and a target item "t_dup" bought by exactly the same users."""
    rows = two_domain_rows()
    for u in range(users_with_copy):
        for domain, item in (("source", "s_dup"), ("target", "t_dup")):
            rows.append(
                {"user_id": f"u{u}", "item_id": item, "domain": domain, "timestamp": "1000000"}
            )
    return rows


def test_duplicate_products_are_reported_with_counts(tmp_path):
    path = write_csv(tmp_path / "log.csv", _with_duplicate())
    raw = load_dataset(generic_config(path).data)
    found = raw.checks["cross_domain_duplicates"]
    assert found["pairs"] == 1 and found["source_interactions"] == 15
    assert found["examples"][0]["source_item"] == "s_dup"
    assert found["examples"][0]["target_item"] == "t_dup"
    assert found["examples"][0]["jaccard"] == 1.0
    assert "s_dup" in raw.items  # "report" changes nothing
    split = split_dataset(raw, generic_config(path).data, generic_config(path).split)
    text = format_dataset_report(split.dataset_report)
    assert "1 item pair(s), 15 source interactions, action=report" in text
    assert "WARNING" in text


def test_duplicate_detection_needs_support_and_similarity(tmp_path):
    path = write_csv(tmp_path / "log.csv", _with_duplicate(users_with_copy=5))
    raw = load_dataset(generic_config(path).data)  # 5 users < duplicate_min_users=10
    assert raw.checks["cross_domain_duplicates"]["pairs"] == 0
    # The ordinary items share many users across domains but not near-identical sets.
    raw = load_dataset(generic_config(path, duplicate_min_users=1).data)
    assert raw.checks["cross_domain_duplicates"]["pairs"] == 1


def test_duplicates_dropped_or_merged(tmp_path):
    path = write_csv(tmp_path / "log.csv", _with_duplicate())
    dropped = load_dataset(generic_config(path, cross_domain_duplicates="drop").data)
    assert "s_dup" not in dropped.items and (dropped.items == "t_dup").sum() == 15
    assert len(dropped) == 400 + 15
    merged = load_dataset(generic_config(path, cross_domain_duplicates="merge").data)
    assert "s_dup" not in merged.items
    # every user had both copies: one target row each remains
    assert (merged.items == "t_dup").sum() == 15
    assert set(merged.domains[merged.items == "t_dup"]) == {TARGET}


def test_merge_moves_source_only_rows_to_the_target_item(tmp_path):
    rows = _with_duplicate()
    rows = [r for r in rows if not (r["item_id"] == "t_dup" and r["user_id"] == "u0")]
    rows.append({"user_id": "u20", "item_id": "t_dup", "domain": "target", "timestamp": "1000000"})
    path = write_csv(tmp_path / "log.csv", rows)
    merged = load_dataset(
        generic_config(path, cross_domain_duplicates="merge", duplicate_jaccard=0.8).data
    )
    owners = set(merged.users[merged.items == "t_dup"].tolist())
    assert "u0" in owners and "u20" in owners and len(owners) == 16


def test_same_item_id_in_both_domains_is_rejected_with_a_clear_message(tmp_path):
    rows = two_domain_rows()
    rows.append({"user_id": "u1", "item_id": "t3", "domain": "source", "timestamp": "1000000"})
    path = write_csv(tmp_path / "log.csv", rows)
    with pytest.raises(
        ValueError, match=r"1 item id\(s\) appear in both the source and the target"
    ) as error:
        load_dataset(generic_config(path).data)
    assert "'t3'" in str(error.value) and "data.item_id_collisions=namespace" in str(error.value)


def test_colliding_ids_can_be_namespaced(tmp_path):
    rows = two_domain_rows()
    rows.append({"user_id": "u1", "item_id": "t3", "domain": "source", "timestamp": "1000000"})
    items = write_csv(
        tmp_path / "items.csv",
        [{"item_id": "t3", "title": "Three"}, {"item_id": "t4", "title": "Four"}],
    )
    path = write_csv(tmp_path / "log.csv", rows)
    raw = load_dataset(generic_config(path, items, item_id_collisions="namespace").data)
    assert "t3" not in raw.items
    assert set(raw.items[raw.domains == "source"]) >= {"source:t3"}
    assert set(raw.items[raw.domains == "target"]) >= {"target:t3"}
    assert raw.item_table["source:t3"].title == raw.item_table["target:t3"].title == "Three"
    assert raw.item_table["t4"].title == "Four"
    assert raw.checks["item_id_collisions"]["count"] == 1


def test_text_fusion_without_titles_is_an_error(tmp_path):
    path = write_csv(tmp_path / "log.csv", two_domain_rows())
    config = generic_config(path)
    config.model.text_fusion = True
    with pytest.raises(
        ValueError, match="model.text_fusion is true but the data has no item titles"
    ):
        run_experiment(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


def test_titles_make_has_titles_true(tmp_path):
    path = write_csv(tmp_path / "log.csv", two_domain_rows())
    items = write_csv(tmp_path / "items.csv", [{"item_id": "t1", "title": "One"}])
    assert load_dataset(generic_config(path, items).data).has_titles
    assert not load_dataset(generic_config(path).data).has_titles


def test_run_without_timestamps_names_its_split_in_every_report(tmp_path):
    path = write_csv(tmp_path / "log.csv", two_domain_rows(timestamps=False))
    config = tiny_config(strategy="target_only")
    config.data = generic_config(path, split="leave_last_out").data
    run_experiment(config, tmp_path / "run", show_progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["split_method"] == "leave_last_out"
    assert results["dataset"]["domains"]["target"]["users"] == 40
    assert results["dataset"]["shared_users"] == 40
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "Split: **leave_last_out**" in markdown
    assert "shared users: 40" in markdown
    for name in ("popularity", "recent_popularity", "item_knn", "bpr_mf", "target_only"):
        assert f"| {name} (baseline) |" in markdown


def test_prefix_filtered_duplicate_search_matches_brute_force():
    from trainer.data_checks import find_cross_domain_duplicates

    rng = np.random.default_rng(3)
    users, items, domains = [], [], []
    base_sets = [rng.choice(60, size=rng.integers(3, 25), replace=False) for _ in range(30)]
    for k, members in enumerate(base_sets):
        for u in members:
            users.append(f"u{u}"), items.append(f"s{k}"), domains.append("source")
        # the target twin keeps most users and gains a few: Jaccard from ~0.6 to 1
        twin = [u for u in members if rng.random() > 0.1 * (k % 4)]
        twin += list(rng.choice(60, size=k % 3, replace=False))
        for u in set(twin):
            users.append(f"u{u}"), items.append(f"t{k}"), domains.append("target")
    users, items, domains = np.array(users), np.array(items), np.array(domains)
    for threshold, min_users in ((0.9, 3), (0.7, 5), (0.5, 1)):
        found = {
            (p.source_item, p.target_item, round(p.jaccard, 9))
            for p in find_cross_domain_duplicates(users, items, domains, threshold, min_users)
        }
        sets = {
            (d, i): set(users[(items == i) & (domains == d)].tolist())
            for d, i in set(zip(domains.tolist(), items.tolist(), strict=True))
        }
        expected = set()
        for (d, s), su in sets.items():
            if d != "source" or len(su) < min_users:
                continue
            scored = [
                (len(su & tu) / len(su | tu), t)
                for (e, t), tu in sets.items()
                if e == "target" and len(tu) >= min_users
            ]
            best = max(scored, key=lambda x: (x[0], x[1] == s))
            if best[0] >= threshold:
                expected.add((s, best[1], round(best[0], 9)))
        assert {(s, j) for s, _, j in found} == {(s, j) for s, _, j in expected}
        assert found, "the case must contain duplicates"
