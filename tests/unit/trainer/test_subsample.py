"""The sparse form of a log (data.max_interactions_per_user_domain): the cap holds per user and
domain, the draw is random but fixed by the seed, and the dataset report says what was kept."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainer.config import DataConfig
from trainer.config_checks import config_problems
from trainer.data import load_dataset
from trainer.dataset_report import format_dataset_report
from trainer.splits import assign_domains, split_dataset
from trainer.subsample import cap_interactions, capped_rows


def _per_user_domain(raw, data) -> dict[tuple[str, str], int]:
    domains = assign_domains(raw, data)
    keys, counts = np.unique(
        np.char.add(np.char.add(raw.users.astype(str), "|"), domains.astype(str)),
        return_counts=True,
    )
    return {tuple(k.split("|")): int(c) for k, c in zip(keys, counts, strict=True)}


@pytest.fixture(scope="module")
def capped(ml100k_raw, ml100k_config):
    data = dataclasses.replace(ml100k_config.data, max_interactions_per_user_domain=10)
    return data, cap_interactions(ml100k_raw, data)


def test_no_user_keeps_more_than_the_cap_per_domain(ml100k_raw, ml100k_config, capped):
    data, raw = capped
    counts = _per_user_domain(raw, data)
    in_domain = {k: c for k, c in counts.items() if k[1] in ("source", "target")}
    assert max(in_domain.values()) == 10
    before = _per_user_domain(ml100k_raw, ml100k_config.data)
    # A user with fewer than 10 in a domain keeps all of them; one with more keeps exactly 10.
    for key, count in in_domain.items():
        assert count == min(before[key], 10)
    # Rows in no domain are left alone (the split drops them anyway).
    assert counts.get(("1", ""), 0) == before.get(("1", ""), 0)


def test_the_draw_is_fixed_by_the_seed_and_changes_with_it(ml100k_raw, capped):
    data, raw = capped
    again = cap_interactions(ml100k_raw, data)
    assert np.array_equal(raw.users, again.users) and np.array_equal(raw.items, again.items)
    other = cap_interactions(ml100k_raw, dataclasses.replace(data, subsample_seed=7))
    assert len(other) == len(raw)  # the same counts per user and domain ...
    assert not np.array_equal(raw.items, other.items)  # ... but other interactions


def test_random_not_the_first_or_last_interactions():
    users = np.array(["u"] * 100)
    kept = capped_rows(users, np.array(["target"] * 100), 10, seed=0)
    positions = np.flatnonzero(kept)
    assert len(positions) == 10
    assert positions.min() < 50 < positions.max()  # spread over the history


def test_report_split_and_checks(ml100k_config):
    data = dataclasses.replace(ml100k_config.data, max_interactions_per_user_domain=10)
    raw = load_dataset(data)
    info = raw.checks["subsample"]
    assert info["interactions_after"] < info["interactions_before"]
    split = split_dataset(raw, data, ml100k_config.split)
    text = format_dataset_report(split.dataset_report)
    assert "at most 10 interactions per user and domain" in text
    assert split.dataset_report["domains"]["target"]["history_length"]["max"] == 10
    config = dataclasses.replace(ml100k_config, data=dataclasses.replace(data))
    config.data.max_interactions_per_user_domain = -1
    assert any("data.max_interactions_per_user_domain=-1" in p for p in config_problems(config))
    with pytest.raises(ValueError, match="max_interactions_per_user_domain=-1 must be >= 0"):
        cap_interactions(raw, config.data)


def test_no_cap_is_the_identity(ml100k_raw):
    assert cap_interactions(ml100k_raw, DataConfig()) is ml100k_raw
