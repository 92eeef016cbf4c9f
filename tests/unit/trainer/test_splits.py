"""The evaluation protocol's no-leak properties on the real embedded dataset."""

import numpy as np

from trainer.config import DataConfig, SplitConfig
from trainer.data import load_dataset
from trainer.splits import SOURCE, TARGET, assign_domains, split_dataset


def test_genre_split_drops_items_in_both_domains(ml100k_raw, ml100k_config):
    domains = assign_domains(ml100k_raw, ml100k_config.data)
    source_genres, target_genres = (
        set(ml100k_config.data.source_categories),
        set(ml100k_config.data.target_categories),
    )
    for item, domain in zip(ml100k_raw.items[:5000], domains[:5000], strict=True):
        genres = set(ml100k_raw.item_table[item].categories)
        if genres & source_genres and genres & target_genres:
            assert domain == ""
        elif domain == SOURCE:
            assert genres & source_genres and not genres & target_genres
        elif domain == TARGET:
            assert genres & target_genres and not genres & source_genres


def test_domains_are_configuration(ml100k_raw):
    swapped = DataConfig(source_categories=["Comedy"], target_categories=["Drama"])
    domains = assign_domains(ml100k_raw, swapped)
    comedies = {
        i
        for i, it in ml100k_raw.item_table.items()
        if "Comedy" in it.categories and "Drama" not in it.categories
    }
    assert set(ml100k_raw.items[domains == SOURCE].tolist()) <= comedies


def _target_rows(raw, config):
    domains = assign_domains(raw, config.data)
    mask = domains == TARGET
    return raw.users[mask], raw.items[mask], raw.timestamps[mask]


def test_no_test_or_valid_interaction_in_training(ml100k_raw, ml100k_split, ml100k_config):
    split = ml100k_split
    t_valid = split.boundaries["valid_start"]
    users, items, times = _target_rows(ml100k_raw, ml100k_config)
    late = times >= t_valid
    late_pairs = {
        (u, split.target_vocab.index[i]) for u, i in zip(users[late], items[late], strict=True)
    }
    early_pairs = {
        (u, split.target_vocab.index[i]) for u, i in zip(users[~late], items[~late], strict=True)
    }
    train_pairs = {(u, int(i)) for u, h in split.train_target.items() for i in h}
    assert train_pairs <= early_pairs
    # A pair seen only after the boundary never reaches training.
    assert not (train_pairs & (late_pairs - early_pairs))
    assert sum(len(h) for h in split.train_target.values()) > 10_000


def test_source_training_stops_at_the_validation_boundary(ml100k_raw, ml100k_split, ml100k_config):
    domains = assign_domains(ml100k_raw, ml100k_config.data)
    src = domains == SOURCE
    early = ml100k_raw.timestamps < ml100k_split.boundaries["valid_start"]
    expected = int((src & early).sum())
    assert sum(len(h) for h in ml100k_split.train_source.values()) == expected


def test_cold_users_have_no_target_training_rows(ml100k_split):
    split = ml100k_split
    assert split.cold_users, "the default config holds out cold-start users"
    assert not split.cold_users & set(split.train_target)
    for evalset in (split.valid["cold"], split.test["cold"]):
        assert set(evalset.users) <= split.cold_users
        assert all(len(h) == 0 for h in evalset.target_histories)
        assert all(len(h) > 0 for h in evalset.source_histories)
    assert not set(split.valid["cold"].users) & set(split.test["cold"].users)
    # The serving snapshot does not reveal their target history either.
    assert not {u for u, d, _, _ in split.feature_rows if d == TARGET} & split.cold_users


def test_warm_labels_are_in_their_window_and_unseen(ml100k_split):
    for evalset in (ml100k_split.valid["warm"], ml100k_split.test["warm"]):
        assert len(evalset) > 20
        for history, labels in zip(evalset.target_histories, evalset.labels, strict=True):
            assert len(labels) and not np.intersect1d(history, labels).size


def test_feature_snapshot_stops_at_test_start(ml100k_split):
    assert max(t for *_, t in ml100k_split.feature_rows) < ml100k_split.boundaries["test_start"]


def test_cold_share_is_configurable(ml100k_raw, ml100k_config):
    split = split_dataset(ml100k_raw, ml100k_config.data, SplitConfig(cold_share=0.5))
    overlap_share = len(split.cold_users) / 936
    assert 0.45 < overlap_share < 0.55


def test_generic_csv_loads_and_splits(tmp_path):
    rows = ["user_id,item_id,timestamp,rating"]
    items = ["item_id,title,categories"]
    for i in range(12):
        items.append(f"s{i},Source {i},Books")
        items.append(f"t{i},Target {i},Music|Jazz")
    ts = 0
    for u in range(30):
        for i in range(8):
            ts += 1
            rows.append(f"u{u},s{(u + i) % 12},{ts},4")
            rows.append(f"u{u},t{(u * 3 + i) % 12},{ts + 10_000},5")
    (tmp_path / "log.csv").write_text("\n".join(rows))
    (tmp_path / "items.csv").write_text("\n".join(items))
    config = DataConfig(
        dataset="generic",
        interactions_path=str(tmp_path / "log.csv"),
        items_path=str(tmp_path / "items.csv"),
        source_categories=["Books"],
        target_categories=["Music"],
    )
    raw = load_dataset(config)
    assert len(raw) == 480 and raw.item_table["t3"].title == "Target 3"
    split = split_dataset(raw, config, SplitConfig(cold_share=0.2))
    assert len(split.source_vocab) == 13 and len(split.target_vocab) == 13
    assert len(split.cold_users) == 6


def test_generic_parquet_with_domain_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "user_id": ["a", "a", "b", "b"],
            "item_id": ["x", "y", "x", "z"],
            "timestamp": [1, 2, 3, 4],
            "domain": ["source", "target", "source", "target"],
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    raw = load_dataset(
        DataConfig(dataset="generic", interactions_path=str(tmp_path / "log.parquet"))
    )
    assert raw.domains.tolist() == ["source", "target", "source", "target"]


def test_generic_format_errors_name_the_problem(tmp_path):
    import pytest

    (tmp_path / "bad.csv").write_text("user,item_id,timestamp\n1,2,3\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['user_id'\]"):
        load_dataset(DataConfig(dataset="generic", interactions_path=str(tmp_path / "bad.csv")))
    with pytest.raises(ValueError, match="interactions_path is required"):
        load_dataset(DataConfig(dataset="generic"))
