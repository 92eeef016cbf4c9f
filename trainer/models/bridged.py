"""Cold-start transfer through a learned bridge between two single-domain models.

A source model (pre-trained on the source domain) and a target model (trained on the target
domain alone) each give a user vector. A bridge maps the source vector into the target model's
user space; users with target history keep the target model's own vector, cold-start users get
the bridged one. Two bridges, as in the literature:

* ``MappingBridge`` (EMCDR, Man et al. 2017): one MLP shared by all users, fitted on overlapping
  users to reproduce their target vectors (embedding distance).
* ``PersonalizedBridge`` (PTUPCDR, Zhu et al. 2022): a meta network turns the user's source history
  into a user-specific linear map, trained on the target task itself.

The switch between the two paths is a ``torch.where`` on "has target history", so one exported
ONNX graph serves both warm and cold users.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.base import CrossDomainModel
from trainer.models.history_tower import HistoryTowerModel


class MappingBridge(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, source_user, src_items, src_mask, source_model):
        return self.mlp(source_user)


class PersonalizedBridge(nn.Module):
    """Meta network: attention-pooled source history -> a [D, D] map applied to the source vector."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False)
        )
        self.generator = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim * dim)
        )
        self.dim = dim
        nn.init.zeros_(self.generator[2].weight)
        with torch.no_grad():  # start from the identity map
            self.generator[2].bias.copy_(torch.eye(dim).flatten())

    def forward(self, source_user, src_items, src_mask, source_model):
        items = source_model.source_embeddings(src_items).detach()  # [B, L, D]
        logits = self.attention(items).squeeze(-1).masked_fill(src_mask <= 0, -1e9)
        weights = torch.softmax(logits, dim=1) * (src_mask.sum(1, keepdim=True) > 0)
        characteristic = (weights.unsqueeze(-1) * items).sum(1)  # [B, D]
        mapping = self.generator(characteristic).view(-1, self.dim, self.dim)
        return torch.bmm(mapping, source_user.unsqueeze(-1)).squeeze(-1)


BRIDGES = {"emcdr": MappingBridge, "ptupcdr": PersonalizedBridge}


class BridgedModel(CrossDomainModel):
    def __init__(
        self,
        source_model: HistoryTowerModel,
        target_model: HistoryTowerModel,
        bridge: str,
        hidden: int,
    ) -> None:
        super().__init__()
        self.source_model = source_model
        self.target_model = target_model
        dim = target_model.target_output.ids.embedding_dim
        self.bridge_kind = bridge
        self.bridge = BRIDGES[bridge](dim, hidden)

    def source_user(self, src_items, src_mask, tgt_items):
        empty = torch.zeros_like(tgt_items, dtype=src_mask.dtype)
        return self.source_model.user_representation(src_items, src_mask, tgt_items, empty)

    def bridged_user(self, src_items, src_mask, tgt_items):
        source_user = self.source_user(src_items, src_mask, tgt_items)
        return self.bridge(source_user, src_items, src_mask, self.source_model)

    def user_representation(self, src_items, src_mask, tgt_items, tgt_mask):
        warm = self.target_model.user_representation(
            src_items, torch.zeros_like(src_mask), tgt_items, tgt_mask
        )
        cold = self.bridged_user(src_items, src_mask, tgt_items)
        has_target = tgt_mask.sum(dim=1, keepdim=True) > 0
        return torch.where(has_target, warm, cold)

    def target_logits(self, user):
        return self.target_model.target_logits(user)

    def target_scores(self, user, items):
        return self.target_model.target_scores(user, items)

    def source_logits(self, user):
        return self.source_model.source_logits(user)

    def score_candidates(self, user, candidates):
        return self.target_model.score_candidates(user, candidates)
