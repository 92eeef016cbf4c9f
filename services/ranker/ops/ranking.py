"""The state the ranking operators work on: one request's scored candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranking:
    """Catalogue indices (int64 [C]) with their scores (float [C], aligned), and the k asked
    for; after ``top_k`` the first k, best first."""

    indices: np.ndarray
    scores: np.ndarray
    k: int

    def take(self, positions: np.ndarray) -> Ranking:
        """The items at ``positions``, in that order."""
        return Ranking(self.indices[positions], self.scores[positions], self.k)
