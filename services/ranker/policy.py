"""Ranking policy: which candidates may be scored, and the top k of the scored ones.

Why filter before scoring: seen and excluded items can never be returned, so scoring them is
wasted work and would make k results come out short. Top-k uses ``np.argpartition`` (linear in
the number of candidates) and sorts only the k winners; ties are broken by candidate position so
the order is deterministic.
"""

from __future__ import annotations

import numpy as np


def filter_candidates(
    candidates: np.ndarray,
    seen: np.ndarray,
    excluded: np.ndarray,
    *,
    include_seen: bool,
) -> np.ndarray:
    """Candidates without the excluded items and, unless ``include_seen``, the seen ones."""
    drop = excluded if include_seen else np.concatenate([seen, excluded])
    if drop.size == 0 or candidates.size == 0:
        return candidates
    return candidates[~np.isin(candidates, drop)]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, best first (NaN ranks last)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    k = min(k, scores.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    winners = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return winners[np.lexsort((winners, -scores[winners]))]


def popularity_scores(share: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The popularity fallback's scores: each candidate's share of all training interactions."""
    return share[candidates].astype(np.float32)
