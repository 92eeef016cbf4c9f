"""The state the candidate filters work on: one request's candidates and what may drop them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

NO_INDICES = np.empty(0, dtype=np.int64)
NO_INDICES.setflags(write=False)


def _none() -> np.ndarray:
    return NO_INDICES


@dataclass(frozen=True)
class CandidateSet:
    """Target vocabulary indices: the candidates (int64 [C], model order) and, for the filters,
    the user's seen items, the request's excluded items and whether seen items may stay."""

    indices: np.ndarray
    seen: np.ndarray = field(default_factory=_none, repr=False)
    excluded: np.ndarray = field(default_factory=_none, repr=False)
    include_seen: bool = False

    def without(self, drop: np.ndarray) -> CandidateSet:
        """The candidates not in ``drop``, order kept (``self`` when nothing can drop)."""
        if drop.size == 0 or self.indices.size == 0:
            return self
        return replace(self, indices=self.indices[~np.isin(self.indices, drop)])
