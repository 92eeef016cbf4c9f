"""Metrics against values worked out by hand."""

import math

import numpy as np
import pytest

from trainer.metrics import mean_metrics, topk_indices, user_metrics


def test_user_metrics_hand_checked():
    # Ranked list: 5, 3, 9, 1, ...; relevant: {3, 1, 42}. Hits at ranks 2 and 4.
    ranked = np.array([5, 3, 9, 1, 7, 8, 10, 11, 12, 13, 14, 15])
    m = user_metrics(ranked, np.array([3, 1, 42]), ks=(10, 20))
    assert m["recall@10"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["hr@10"] == 1.0


def test_perfect_and_empty_rankings():
    assert user_metrics(np.array([1, 2, 3]), np.array([1]), ks=(10,))["ndcg@10"] == pytest.approx(
        1.0
    )
    miss = user_metrics(np.array([4, 5, 6]), np.array([1, 2]), ks=(10,))
    assert miss == {"recall@10": 0.0, "ndcg@10": 0.0, "hr@10": 0.0}


def test_ndcg_cutoff_ignores_hits_below_k():
    ranked = np.arange(100, 120)
    ranked[15] = 7  # hit at rank 16: outside top 10, inside top 20
    m = user_metrics(ranked, np.array([7]), ks=(10, 20))
    assert m["ndcg@10"] == 0.0 and m["recall@10"] == 0.0
    assert m["recall@20"] == 1.0 and m["ndcg@20"] == pytest.approx(1 / math.log2(17))


def test_topk_indices_orders_best_first():
    scores = np.array([[0.1, 0.9, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]])
    assert topk_indices(scores, 3).tolist() == [[1, 2, 0], [0, 1, 2]]


def test_mean_metrics():
    assert mean_metrics([{"a": 1.0}, {"a": 0.0}]) == {"a": 0.5}
