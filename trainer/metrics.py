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
