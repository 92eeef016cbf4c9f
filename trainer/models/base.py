"""The one interface every recommender implements, so trainer, exporter and scorer never care which.

The forward signature *is* the serving contract (docs/architecture.md, "Model signature"): the
exporter traces ``forward`` as is, and the encoder builds exactly these inputs.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["src_items", "src_mask", "tgt_items", "tgt_mask", "candidates"]
OUTPUT_NAMES = ["scores"]


class CrossDomainModel(nn.Module):
    """Scores target-domain candidates for users described by their two histories."""

    def user_representation(
        self,
        src_items: torch.Tensor,
        src_mask: torch.Tensor,
        tgt_items: torch.Tensor,
        tgt_mask: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def target_logits(self, user: torch.Tensor) -> torch.Tensor:
        """Scores of every target item (index 0 = padding, masked by the caller) for [B, D] users."""
        raise NotImplementedError

    def source_logits(self, user: torch.Tensor) -> torch.Tensor:
        """Scores of every source item; used by source pre-training and joint training."""
        raise NotImplementedError

    def target_scores(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of the [C] target items ``items`` for [B, D] users, or of [B, C] items (one row
        per user), -> [B, C] (sampled softmax)."""
        raise NotImplementedError

    def score_candidates(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        src_items: torch.Tensor,
        src_mask: torch.Tensor,
        tgt_items: torch.Tensor,
        tgt_mask: torch.Tensor,
        candidates: torch.Tensor,
    ) -> torch.Tensor:
        user = self.user_representation(src_items, src_mask, tgt_items, tgt_mask)
        return self.score_candidates(user, candidates)
