"""``top_k``: the k best-scored candidates, best first.

Uses ``np.argpartition`` (linear in the number of candidates) and sorts only the k winners; ties
are broken by candidate position so the order is deterministic; NaN ranks last.
"""

from __future__ import annotations

import numpy as np

from services.ranker.ops.ranking import Ranking


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best scores, best first (NaN ranks last)."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    k = min(k, scores.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    winners = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return winners[np.lexsort((winners, -scores[winners]))]


class TopK:
    name = "top_k"

    def apply(self, state: Ranking) -> Ranking:
        return state.take(top_k(state.scores, state.k))
