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


def cosine_cooccurrence(
    left: list[np.ndarray], right: list[np.ndarray], sizes: tuple[int, int], block_users: int
) -> torch.Tensor:
    """Sparse [left items, right items] cosine of two users' histories (same users, same order):
    co-occurrence count / sqrt(count_left * count_right). Accumulated over blocks of users so
    the transient product never holds more than one block's item pairs."""
    counts = coo(torch.zeros(2, 0, dtype=torch.int64), torch.zeros(0), sizes)
    n_left, n_right = torch.zeros(sizes[0]), torch.zeros(sizes[1])
    for start in range(0, len(left), max(block_users, 1)):
        a = incidence(left[start : start + block_users], sizes[0])
        b = incidence(right[start : start + block_users], sizes[1])
        n_left.index_add_(0, a.indices()[1], a.values())
        n_right.index_add_(0, b.indices()[1], b.values())
        counts = (counts + sparse_matmul(a.t().coalesce(), b)).coalesce()
    i, j = counts.indices()
    values = counts.values() / torch.sqrt(n_left[i] * n_right[j]).clamp(min=1e-12)
    return coo(counts.indices(), values, counts.shape)


def keep_neighbours(sim: torch.Tensor, k: int, drop_diagonal: bool = False) -> torch.Tensor:
    """Keeps the k largest entries of each row (k <= 0: all), optionally without the diagonal."""
    (rows, cols), values = sim.indices(), sim.values()
    keep = rows != cols if drop_diagonal else torch.ones_like(rows, dtype=torch.bool)
    rows, cols, values = rows[keep], cols[keep], values[keep]
    if k > 0 and len(values):
        order = np.lexsort((-values.numpy(), rows.numpy()))
        sorted_rows = rows.numpy()[order]
        first = np.searchsorted(sorted_rows, sorted_rows)
        top = torch.from_numpy(order[np.arange(len(order)) - first < k])
        rows, cols, values = rows[top], cols[top], values[top]
    return coo(torch.stack([rows, cols]), values, sim.shape)


class ItemKNN(Baseline):
    name: ClassVar[str] = "item_knn"

    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        self.n_target, self.n_source = len(split.target_vocab), len(split.source_vocab)
        c = self.config
        users = sorted(split.train_target)
        histories = [split.train_target[u] for u in users]
        sim = cosine_cooccurrence(
            histories, histories, (self.n_target, self.n_target), c.knn_block_users
        )
        self.target_sim = keep_neighbours(sim, c.knn_neighbours, drop_diagonal=True)
        # Items no neighbour reaches would tie at 0: order them by popularity instead.
        popularity = torch.from_numpy(split.target_popularity.astype(np.float32))
        self.tie_break = 1e-9 * popularity / popularity.max().clamp(min=1.0)
        both = [u for u in users if u in split.train_source]
        cross = cosine_cooccurrence(
            [split.train_source[u] for u in both],
            [split.train_target[u] for u in both],
            (self.n_source, self.n_target),
            c.knn_block_users,
        )
        self.cross_sim = keep_neighbours(cross, c.knn_neighbours)

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
