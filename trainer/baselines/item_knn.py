"""Item-KNN: item-item cosine over co-occurrence, sparse (never a dense items x items matrix).

Warm users (with a target history) get sum over their target items of cosine(item, candidate)
on target co-occurrence. Cold users (no target history) get the cross-domain version: sum over
their source items of cosine(source item, target candidate), counted over the training users
present in both domains. Both similarity matrices stay torch sparse; a chunk of users is scored
by one sparse x dense product.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from trainer.baselines.base import VALID, Baseline, coo, incidence, multi_hot, sparse_matmul
from trainer.splits import CrossDomainSplit, EvalSet


def cosine_cooccurrence(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Sparse [left items, right items] cosine of two binary users x items matrices (same users):
    co-occurrence count / sqrt(count_left * count_right)."""
    counts = sparse_matmul(left.t().coalesce(), right)
    n_left = torch.sparse.sum(left, 0).to_dense() if left._nnz() else torch.zeros(left.shape[1])
    n_right = torch.sparse.sum(right, 0).to_dense() if right._nnz() else torch.zeros(right.shape[1])
    i, j = counts.indices()
    values = counts.values() / torch.sqrt(n_left[i] * n_right[j]).clamp(min=1e-12)
    return coo(counts.indices(), values, counts.shape)


class ItemKNN(Baseline):
    name: ClassVar[str] = "item_knn"

    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        self.n_target, self.n_source = len(split.target_vocab), len(split.source_vocab)
        users = sorted(split.train_target)
        target = incidence([split.train_target[u] for u in users], self.n_target)
        sim = cosine_cooccurrence(target, target)
        i, j = sim.indices()
        off_diagonal = i != j  # an item is not its own neighbour
        self.target_sim = coo(sim.indices()[:, off_diagonal], sim.values()[off_diagonal], sim.shape)
        # Items no neighbour reaches would tie at 0: order them by popularity instead.
        popularity = torch.from_numpy(split.target_popularity.astype(np.float32))
        self.tie_break = 1e-9 * popularity / popularity.max().clamp(min=1.0)
        both = [u for u in users if u in split.train_source]
        empty = np.zeros(0, dtype=np.int64)
        self.cross_sim = cosine_cooccurrence(
            incidence([split.train_source.get(u, empty) for u in both], self.n_source),
            incidence([split.train_target[u] for u in both], self.n_target),
        )

    def score(self, evalset: EvalSet, start: int, end: int) -> torch.Tensor:
        target_hist = evalset.target_histories[start:end]
        warm = multi_hot(target_hist, self.n_target)
        cold = multi_hot(evalset.source_histories[start:end], self.n_source)
        from_target = torch.sparse.mm(self.target_sim.t(), warm.t()).t()
        from_source = torch.sparse.mm(self.cross_sim.t(), cold.t()).t()
        has_target = torch.tensor([len(h) > 0 for h in target_hist]).unsqueeze(1)
        return torch.where(has_target, from_target, from_source) + self.tie_break

    def describe(self) -> str:
        return "cosine on target co-occurrence; cold users: source->target co-occurrence"
