"""Full-ranking top-K metrics for implicit feedback.

Recall@K = hits in the top K / number of relevant items (RecBole's definition);
NDCG@K with binary gains, ideal DCG over min(K, relevant); HR@K = 1 if any hit.
Averaged over users. Ranking is over every candidate the caller did not exclude: no sampled
negatives (sampled metrics do not preserve the order of models).
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (10, 20)


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the k largest scores, best first ([B, N] -> [B, k])."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def user_metrics(
    ranked: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS
) -> dict[str, float]:
    """Metrics of one user's ranked list (item ids, best first) against the relevant item ids."""
    hits = np.isin(ranked, relevant).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(ranked) + 2))
    out = {}
    for k in ks:
        top = hits[:k]
        out[f"recall@{k}"] = float(top.sum() / len(relevant))
        ideal = discounts[: min(k, len(relevant))].sum()
        out[f"ndcg@{k}"] = float((top * discounts[: len(top)]).sum() / ideal)
    out["hr@10"] = float(hits[:10].any())
    return out


def mean_metrics(per_user: list[dict[str, float]]) -> dict[str, float]:
    if not per_user:
        return {}
    return {key: float(np.mean([m[key] for m in per_user])) for key in per_user[0]}


def precision_f1(ranked: np.ndarray, relevant: np.ndarray, k: int = 10) -> dict[str, float]:
    """Precision@K = hits in the top K / K; F1@K = harmonic mean of Precision@K and Recall@K."""
    hits = float(np.isin(ranked[:k], relevant).sum())
    precision, recall = hits / k, hits / len(relevant)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {f"precision@{k}": precision, f"f1@{k}": f1}


def self_information(popularity: np.ndarray) -> np.ndarray:
    """-log2 of each item's share of the training interactions, Laplace-smoothed so an item
    nobody has touched gets a finite (the highest) value; index 0 (padding) is not an item."""
    counts = popularity[1:].astype(np.float64)
    share = (counts + 1.0) / (counts.sum() + len(counts))
    return np.r_[0.0, -np.log2(share)]


def catalogue_coverage(recommended: np.ndarray, n_items: int) -> float:
    """Share of the catalogue (``n_items`` items, indices 1..n) in anyone's recommendations."""
    return float(len(np.setdiff1d(np.unique(recommended), [0])) / max(n_items, 1))


def novelty(recommended: np.ndarray, popularity: np.ndarray) -> float:
    """Mean self-information of the recommended items: higher = less mainstream."""
    if not len(recommended):
        return 0.0
    return float(self_information(popularity)[recommended].mean())
