"""BPR-MF on the target domain alone: the classic collaborative-filtering baseline.

Matrix factorisation with item biases, trained with the BPR pairwise loss on sampled negatives
(one uniform negative per training interaction per epoch), Adam, L2 on the touched vectors. The
epoch is chosen on validation (pooled NDCG@10, checked every ``eval_every`` epochs). A user the
model has no vector for (cold-start users, users new at the test cutoff) gets the item biases:
a learned popularity, the best a target-only model can do for them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from trainer.baselines.base import VALID, Baseline
from trainer.config import BaselineConfig
from trainer.splits import CrossDomainSplit, EvalSet


class BPRMF(Baseline):
    name: ClassVar[str] = "bpr_mf"
    deterministic: ClassVar[bool] = False

    def __init__(self, config: BaselineConfig | None = None) -> None:
        super().__init__(config)
        self.best_epoch = 0

    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        from trainer.evaluation import evaluate_ranking, pooled_ndcg

        c = self.config
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        users = sorted(split.train_target)
        self.user_index = {u: i for i, u in enumerate(users)}
        n_items = len(split.target_vocab)
        rows = np.concatenate([np.full(len(split.train_target[u]), i) for i, u in enumerate(users)])
        cols = np.concatenate([split.train_target[u] for u in users])
        pairs = np.unique(np.stack([rows, cols], 1), axis=0)
        pair_users, pair_items = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
        self.user_vectors = nn.Embedding(len(users), c.bpr_dim)
        self.item_vectors = nn.Embedding(n_items, c.bpr_dim)
        self.item_bias = nn.Embedding(n_items, 1)
        for table in (self.user_vectors, self.item_vectors):
            nn.init.normal_(table.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        parameters = [self.user_vectors.weight, self.item_vectors.weight, self.item_bias.weight]
        optimizer = torch.optim.Adam(parameters, lr=c.bpr_learning_rate)
        best = (-np.inf, 0, [p.detach().clone() for p in parameters])
        for epoch in range(1, c.bpr_epochs + 1):
            order = torch.randperm(len(pairs), generator=generator)
            for start in range(0, len(order), c.bpr_batch_size):
                batch = order[start : start + c.bpr_batch_size]
                u, i = pair_users[batch], pair_items[batch]
                j = torch.randint(1, n_items, (len(batch),), generator=generator)
                uv, iv, jv = self.user_vectors(u), self.item_vectors(i), self.item_vectors(j)
                x = (uv * (iv - jv)).sum(1) + (self.item_bias(i) - self.item_bias(j)).squeeze(1)
                loss = (
                    -nn.functional.logsigmoid(x).mean()
                    + c.bpr_l2 * (uv.pow(2).sum(1) + iv.pow(2).sum(1) + jv.pow(2).sum(1)).mean()
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch % c.bpr_eval_every == 0 or epoch == c.bpr_epochs:
                valid = {
                    name: evaluate_ranking(
                        lambda start, end, s=evalset: self.score(s, start, end), evalset
                    )
                    for name, evalset in split.valid.items()
                }
                score = pooled_ndcg(valid, split.valid)
                if score > best[0]:
                    best = (score, epoch, [p.detach().clone() for p in parameters])
        self.best_epoch = best[1]
        with torch.no_grad():
            for p, kept in zip(parameters, best[2], strict=True):
                p.copy_(kept)

    @torch.no_grad()
    def score(self, evalset: EvalSet, start: int, end: int) -> torch.Tensor:
        bias = self.item_bias.weight.squeeze(1)
        rows = [self.user_index.get(u, -1) for u in evalset.users[start:end]]
        known = torch.tensor([r >= 0 for r in rows]).unsqueeze(1)
        vectors = self.user_vectors.weight[torch.tensor([max(r, 0) for r in rows])]
        personal = vectors @ self.item_vectors.weight.t() + bias
        return torch.where(known, personal, bias.expand_as(personal))

    def describe(self) -> str:
        c = self.config
        return f"dim {c.bpr_dim}, best epoch {self.best_epoch}/{c.bpr_epochs} on validation"
