"""Each baseline on a tiny hand-made log whose right answer is known."""

import numpy as np
import pytest
import torch

from tests.unit.trainer.hand_split import evalset, hand_split
from trainer.baselines import BPRMF, ItemKNN, Popularity, RecentPopularity
from trainer.baselines.runner import run_baseline
from trainer.config import BaselineConfig


def ranking(baseline, users) -> list[int]:
    scores = baseline.score(users, 0, len(users))[0].clone()
    scores[0] = -torch.inf
    return torch.argsort(scores, descending=True, stable=True).tolist()


def test_popularity_ranks_by_training_count():
    split = hand_split({"a": [1, 2], "b": [2, 3], "c": [2, 3], "d": [4]})
    baseline = Popularity()
    baseline.fit(split)
    assert ranking(baseline, evalset("e", [("z", [], [1], [2])]))[:3] == [2, 3, 1]


def test_item_knn_recommends_the_co_occurring_item():
    # t1 always comes with t2; t3 is more popular but never with t1.
    split = hand_split(
        {"a": [1, 2], "b": [1, 2], "c": [3, 4], "d": [3, 5], "e": [3, 6], "f": [3]},
    )
    baseline = ItemKNN()
    baseline.fit(split)
    assert ranking(baseline, evalset("e", [("z", [], [1], [2])]))[0] == 2
    scores = baseline.score(evalset("e", [("z", [], [1], [2])]), 0, 1)[0]
    assert scores[2] == pytest.approx(1.0, abs=1e-6)  # cosine(t1, t2) = 2 / sqrt(2 * 2)
    assert scores[3] == pytest.approx(0.0, abs=1e-6)


def test_item_knn_serves_cold_users_from_source_co_occurrence():
    # Users with source item s1 take target t4; users with s2 take t5 (more popular overall).
    split = hand_split(
        {"a": [4], "b": [4], "c": [5], "d": [5], "e": [5]},
        {"a": [1], "b": [1], "c": [2], "d": [2], "e": [2]},
    )
    baseline = ItemKNN()
    baseline.fit(split)
    assert ranking(baseline, evalset("cold", [("z", [1], [], [4])]))[0] == 4
    assert ranking(baseline, evalset("cold", [("y", [2], [], [5])]))[0] == 5


def test_recent_popularity_window_is_chosen_on_validation_and_shifted_for_test():
    # t1 was popular long ago, t2 is popular just before the validation cutoff (time 100),
    # t3 just before the test cutoff (time 200). Validation users want t2.
    items = [1] * 10 + [2] * 3 + [3] * 3
    times = [5.0] * 10 + [95.0] * 3 + [195.0] * 3
    phases = [0] * 13 + [1] * 3
    events = {
        "items": np.array(items),
        "times": np.array(times),
        "phase": np.array(phases),
    }
    valid = {"warm": evalset("v", [("a", [], [4], [2])]), "cold": evalset("c", [])}
    test = {"warm": evalset("t", [("a", [], [4], [3])]), "cold": evalset("c", [])}
    split = hand_split({"a": [4]}, valid=valid, test=test, target_events=events)
    record = run_baseline(RecentPopularity, split, [0], BaselineConfig(recent_windows=[0.1, 1.0]))
    assert record.notes.startswith("window = last 10%")
    assert record.valid[0]["warm"]["ndcg@10"] == 1.0  # t2 first at the validation cutoff
    assert record.test[0]["warm"]["ndcg@10"] == 1.0  # t3 first once shifted to the test cutoff
    full = RecentPopularity(window=1.0)
    full.fit(split)
    assert ranking(full, evalset("e", [("z", [], [], [1])]))[0] == 1  # all time: t1


def test_bpr_mf_learns_the_two_groups_and_falls_back_to_biases():
    # Group A likes t1, t2; group B likes t3, t4; t3 is the most popular.
    train = {f"a{i}": [1, 2] for i in range(5)} | {f"b{i}": [3, 4] for i in range(25)}
    train["a_new"] = [1]
    valid = {"warm": evalset("v", [("a_new", [], [1], [2])]), "cold": evalset("c", [])}
    split = hand_split(train, valid=valid)
    config = BaselineConfig(bpr_epochs=120, bpr_eval_every=40, bpr_learning_rate=0.05, bpr_dim=8)
    baseline = BPRMF(config)
    baseline.fit(split, seed=0)
    assert ranking(baseline, evalset("e", [("a_new", [], [1], [2])]))[:2] == [1, 2]
    # A user without a vector gets the learned item biases: the popular group's items first.
    assert set(ranking(baseline, evalset("e", [("nobody", [], [], [3])]))[:2]) == {3, 4}


def test_deterministic_baselines_run_once_bpr_once_per_seed():
    train = {f"a{i}": [1, 2] for i in range(4)} | {f"b{i}": [3, 4] for i in range(4)}
    valid = {"warm": evalset("v", [("a0", [], [1], [2])]), "cold": evalset("c", [])}
    split = hand_split(train, valid=valid, test=valid)
    config = BaselineConfig(bpr_epochs=2, bpr_eval_every=1)
    assert len(run_baseline(Popularity, split, [0, 1, 2], config).test) == 1
    assert len(run_baseline(BPRMF, split, [0, 1, 2], config).test) == 3


def test_item_knn_blocks_of_users_and_neighbour_cap():
    split = hand_split(
        {"a": [1, 2, 3], "b": [1, 2], "c": [1, 3, 4], "d": [3, 5], "e": [2, 6], "f": [1]},
        {"a": [1], "b": [1, 2], "c": [2], "d": [3], "e": [4]},
    )
    users = evalset("e", [("z", [], [1], [2]), ("y", [1, 2], [], [3])])
    whole, blocks = ItemKNN(BaselineConfig()), ItemKNN(BaselineConfig(knn_block_users=1))
    whole.fit(split)
    blocks.fit(split)
    assert torch.allclose(whole.score(users, 0, 2), blocks.score(users, 0, 2))
    capped = ItemKNN(BaselineConfig(knn_neighbours=1))
    capped.fit(split)
    rows = capped.target_sim.indices()[0]
    assert torch.bincount(rows).max() == 1  # one neighbour per item
    # t1's best neighbour: t2 (2 shared users / sqrt(4 * 3)) over t3 (2 / sqrt(4 * 3)) tie, t4 less
    kept = capped.target_sim.to_dense()[1].nonzero().flatten().tolist()
    assert len(kept) == 1 and kept[0] in (2, 3)
