"""Chunked full-ranking evaluation: hand-computed Precision/F1/coverage/novelty, the same
numbers whatever the chunk size, and the same numbers as the per-user reference metrics."""

import math

import numpy as np
import pytest
import torch

from tests.unit.trainer.hand_split import evalset
from trainer.evaluation import evaluate_ranking
from trainer.metrics import (
    catalogue_coverage,
    novelty,
    precision_f1,
    self_information,
    topk_indices,
    user_metrics,
)


def test_precision_and_f1_hand_checked():
    ranked = np.array([5, 3, 9, 1, 7, 8, 10, 11, 12, 13, 14, 15])
    m = precision_f1(ranked, np.array([3, 1, 42]))
    assert m["precision@10"] == pytest.approx(0.2)
    assert m["f1@10"] == pytest.approx(2 * 0.2 * (2 / 3) / (0.2 + 2 / 3))
    assert precision_f1(ranked, np.array([99])) == {"precision@10": 0.0, "f1@10": 0.0}


def test_coverage_and_novelty_hand_checked():
    # Catalogue of 4 items (indices 1..4); training counts 5, 1, 0, 2 (total 8).
    popularity = np.array([0, 5, 1, 0, 2])
    assert catalogue_coverage(np.array([1, 2, 1, 2]), 4) == 0.5
    # Laplace-smoothed shares: (5+1)/12, (1+1)/12, (0+1)/12, (2+1)/12
    info = self_information(popularity)
    assert info[1] == pytest.approx(-math.log2(6 / 12)) and info[1] == pytest.approx(1.0)
    assert info[3] == pytest.approx(-math.log2(1 / 12))
    assert novelty(np.array([1, 1, 3]), popularity) == pytest.approx((1 + 1 + math.log2(12)) / 3)


def _fixed_scorer(scores: torch.Tensor):
    return lambda start, end: scores[start:end]


def test_evaluate_ranking_on_a_hand_made_case():
    # 12 items (1..12); user a's scores rank 12, 11, ..., 1; user b's the reverse.
    up = torch.arange(13, dtype=torch.float32)
    scores = torch.stack([up, -up])
    users = evalset("t", [("a", [], [12], [11, 1]), ("b", [], [], [1, 2, 3, 4])])
    popularity = np.r_[0, np.ones(12, dtype=np.int64)]
    m = evaluate_ranking(_fixed_scorer(scores), users, popularity=popularity, chunk_users=1)
    # a: 12 is seen (masked); top 10 = 11..2: one hit of two relevant. b: top 10 = 1..10: 4 hits.
    assert m["precision@10"] == pytest.approx((0.1 + 0.4) / 2)
    f1_a = 2 * 0.1 * 0.5 / 0.6
    f1_b = 2 * 0.4 * 1.0 / 1.4
    assert m["f1@10"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["recall@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["hr@10"] == 1.0
    # union of top 10s: 11..2 and 1..10 = all of 1..11: 11 of 12 items
    assert m["coverage@10"] == pytest.approx(11 / 12)
    # every item equally popular: self-information log2(12) for every recommendation
    assert m["novelty@10"] == pytest.approx(math.log2(12))
    assert m["users"] == 2.0


def test_chunked_equals_unchunked_and_matches_the_reference_metrics():
    rng = np.random.default_rng(0)
    n_items, n_users = 60, 23
    scores = torch.from_numpy(rng.normal(size=(n_users, n_items + 1)).astype(np.float32))
    rows = []
    for u in range(n_users):
        items = rng.permutation(np.arange(1, n_items + 1))
        rows.append((f"u{u}", [], items[: u % 4].tolist(), items[4 : 5 + u % 7].tolist()))
    users = evalset("t", rows)
    popularity = rng.integers(0, 30, size=n_items + 1)
    whole = evaluate_ranking(_fixed_scorer(scores), users, popularity, chunk_users=1000)
    for chunk in (1, 5, 7):
        chunked = evaluate_ranking(_fixed_scorer(scores), users, popularity, chunk_users=chunk)
        assert chunked == pytest.approx(whole)
    # Reference: per-user numpy metrics on the same masked scores.
    masked = scores.numpy().copy()
    masked[:, 0] = -np.inf
    per_user, recommended = [], []
    for u, (_, _, seen, relevant) in enumerate(rows):
        masked[u, seen] = -np.inf
        ranked = topk_indices(masked[u : u + 1], 20)[0]
        per_user.append(
            user_metrics(ranked, np.array(relevant)) | precision_f1(ranked, np.array(relevant))
        )
        recommended.extend(ranked[:10])
    for key in per_user[0]:
        assert whole[key] == pytest.approx(np.mean([m[key] for m in per_user])), key
    assert whole["coverage@10"] == pytest.approx(catalogue_coverage(np.array(recommended), n_items))
    assert whole["novelty@10"] == pytest.approx(novelty(np.array(recommended), popularity))


def test_empty_evalset():
    assert evaluate_ranking(_fixed_scorer(torch.zeros(0, 5)), evalset("t", [])) == {"users": 0.0}
