"""The recent-popularity term of a target score, shared by the model families.

Each target item's recent popularity (log1p of its interactions in a window before "now",
trainer/item_features.py) enters its score with a learned global weight plus a per-user one
(user . direction), so the model can follow what is popular *now* and personalise around it.

"Now" differs between uses: at evaluation and serving it is the cutoff, one vector for every
user (the model's ``target_recent`` buffer, a constant of the exported graph); in training it is
the moment of each example's labels, one vector per row (``values`` [B, items]), so the model
learns what recency is worth at the time a choice is made rather than from one stale vector.
"""

from __future__ import annotations

import torch
from torch import nn


def add_recent_parameters(model: nn.Module, num_items: int, dim: int) -> None:
    """Registers ``target_recent`` (buffer [items], zeros = off), ``recent_weight`` (starts at
    1: scores start as log(recent count), the recent-popularity ranking) and
    ``recent_direction`` (per-user weight, starts at 0) on ``model``."""
    model.register_buffer("target_recent", torch.zeros(num_items))
    model.recent_weight = nn.Parameter(torch.ones(()))
    model.recent_direction = nn.Parameter(torch.zeros(dim))


def recent_term(
    model: nn.Module,
    user: torch.Tensor,
    items: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, C] recency part of the scores of ``user`` [B, D] for ``items`` ([C] shared, [B, C]
    one row per user, or None = every item), from ``values`` [B, items] (per-row "now") or, when
    None, the model's ``target_recent`` buffer (the cutoff)."""
    strength = model.recent_weight + (user * model.recent_direction).sum(-1, keepdim=True)
    if values is None:
        table = model.target_recent
        recent = table if items is None else table[items]
        return strength * recent  # [B, 1] x [C] or [B, C]
    if items is None:
        recent = values
    elif items.dim() == 1:
        recent = values[:, items]
    else:
        recent = values.gather(1, items)
    return strength * recent
