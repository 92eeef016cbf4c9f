"""Adam for dense parameters, SparseAdam for item tables that produce sparse gradients.

With a large catalogue a dense Adam step rewrites every row of every item table on every batch,
which makes an epoch cost users x items. With sparse item embeddings (sampled softmax on CPU)
only the rows a batch touched are updated (lazy Adam), so an epoch costs O(interactions).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class CompositeOptimizer:
    """Several optimizers stepped together; the training loop sees one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)


def set_sparse(model: nn.Module, sparse: bool) -> None:
    """Switches the model's item tables to sparse (or dense) gradients."""
    for module in model.modules():
        if hasattr(module, "item_embeddings"):
            for table in module.item_embeddings():
                table.sparse = sparse


def sparse_parameters(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}


def build_optimizer(
    model: nn.Module, groups: Iterable[dict], weight_decay: float
) -> CompositeOptimizer:
    """``groups`` are torch param groups ({"params", "lr"}); frozen parameters are skipped."""
    sparse_ids = sparse_parameters(model)
    dense_groups, sparse_groups = [], []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        dense = [p for p in params if id(p) not in sparse_ids]
        sparse = [p for p in params if id(p) in sparse_ids]
        if dense:
            dense_groups.append({**group, "params": dense})
        if sparse:
            sparse_groups.append({**group, "params": sparse})
    optimizers: list[torch.optim.Optimizer] = []
    if dense_groups:
        optimizers.append(torch.optim.Adam(dense_groups, weight_decay=weight_decay))
    if sparse_groups:
        optimizers.append(torch.optim.SparseAdam(sparse_groups))
    return CompositeOptimizer(optimizers)
