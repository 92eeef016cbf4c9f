"""History-tower recommender with a user representation shared across domains.

A user is represented by what they did, not by a learned per-user id: the tower pools the
source-domain history and the target-domain history and maps them through a shared MLP. Because
nothing is tied to a user id, a user who has never touched the target domain (cold start) is
scored from their source history alone, and users who arrive after training are served without
retraining. Transfer happens through the source item embeddings and the tower, which pre-training
on the (dense) source domain shapes before the (thin) target domain fine-tunes them.

With ``text_fusion`` every item vector is its id embedding plus a learned projection of its
(frozen) title embedding, so items with few interactions still carry signal.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.models.base import CrossDomainModel

TEXT_DIM = 384


def masked_mean(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the history axis of [B, L, D] with a [B, L] 0/1 mask; zeros for empty histories."""
    total = (embeddings * mask.unsqueeze(-1)).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return total / count


class ItemTable(nn.Module):
    """Item vectors: an id embedding, optionally fused with a projected frozen text embedding."""

    def __init__(self, num_items: int, dim: int, text_fusion: bool, padding: bool) -> None:
        super().__init__()
        self.ids = nn.Embedding(num_items, dim, padding_idx=0 if padding else None)
        nn.init.normal_(self.ids.weight, std=0.05)
        if padding:
            with torch.no_grad():
                self.ids.weight[0].zero_()
        self.text_fusion = text_fusion
        if text_fusion:
            self.register_buffer("text", torch.zeros(num_items, TEXT_DIM))
            self.text_projection = nn.Linear(TEXT_DIM, dim, bias=False)
            nn.init.normal_(self.text_projection.weight, std=0.02)

    @property
    def num_items(self) -> int:
        return self.ids.num_embeddings

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        vectors = self.ids(indices)
        if self.text_fusion:
            # Project the whole (small) title table once, then gather: far cheaper than
            # projecting a [B, L, 384] gather for every history slot.
            vectors = vectors + nn.functional.embedding(indices, self.text_projection(self.text))
        return vectors

    def all(self) -> torch.Tensor:
        if self.text_fusion:
            return self.ids.weight + self.text_projection(self.text)
        return self.ids.weight


class HistoryTowerModel(CrossDomainModel):
    def __init__(self, num_source_items: int, num_target_items: int, config: ModelConfig) -> None:
        """``num_*_items`` count the padding index 0."""
        super().__init__()
        d, h, text = config.embedding_dim, config.hidden_dim, config.text_fusion
        self.source_embeddings = ItemTable(num_source_items, d, text, padding=True)
        self.target_input_embeddings = ItemTable(num_target_items, d, text, padding=True)
        # Input: pooled source, pooled target, and two flags saying which histories exist, so the
        # tower can tell "no target history" (cold start) from "an average target history".
        self.tower = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(2 * d + 2, h),
            nn.Tanh(),
            nn.Linear(h, d),
        )
        self.target_output = ItemTable(num_target_items, d, text, padding=False)
        self.target_bias = nn.Embedding(num_target_items, 1)
        self.source_output = ItemTable(num_source_items, d, text, padding=False)
        self.source_bias = nn.Embedding(num_source_items, 1)
        nn.init.zeros_(self.target_bias.weight)
        nn.init.zeros_(self.source_bias.weight)

    def set_text_embeddings(self, source: torch.Tensor, target: torch.Tensor) -> None:
        for table, values in (
            (self.source_embeddings, source),
            (self.source_output, source),
            (self.target_input_embeddings, target),
            (self.target_output, target),
        ):
            table.text.copy_(values)

    def user_representation(self, src_items, src_mask, tgt_items, tgt_mask):
        pooled_source = masked_mean(self.source_embeddings(src_items), src_mask)
        pooled_target = masked_mean(self.target_input_embeddings(tgt_items), tgt_mask)
        has_source = (src_mask.sum(dim=1, keepdim=True) > 0).to(pooled_source.dtype)
        has_target = (tgt_mask.sum(dim=1, keepdim=True) > 0).to(pooled_target.dtype)
        return self.tower(torch.cat([pooled_source, pooled_target, has_source, has_target], dim=1))

    def target_logits(self, user):
        return user @ self.target_output.all().T + self.target_bias.weight.T

    def source_logits(self, user):
        return user @ self.source_output.all().T + self.source_bias.weight.T

    def target_scores(self, user, items):
        """[B, D] users x [C] item indices -> [B, C], or x [B, C] (one row of items per user) ->
        [B, C]: the sampled-softmax path (gathers only those rows, so with sparse embeddings the
        gradient touches only them)."""
        return self._scores(user, items, self.target_output, self.target_bias)

    def source_scores(self, user, items):
        return self._scores(user, items, self.source_output, self.source_bias)

    @staticmethod
    def _scores(user, items, output: ItemTable, bias: nn.Embedding) -> torch.Tensor:
        if items.dim() == 1:
            return user @ output(items).T + bias(items).T
        return (output(items) * user.unsqueeze(1)).sum(-1) + bias(items).squeeze(-1)

    def item_embeddings(self) -> list[nn.Embedding]:
        """The per-item tables: what sparse gradients (and a sparse optimizer) apply to."""
        tables = [self.source_embeddings, self.target_input_embeddings]
        tables += [self.target_output, self.source_output]
        return [t.ids for t in tables] + [self.target_bias, self.source_bias]

    def score_candidates(self, user, candidates):
        item_vectors = self.target_output(candidates)  # [B, C, D]
        return (item_vectors * user.unsqueeze(1)).sum(-1) + self.target_bias(candidates).squeeze(-1)

    # Parameter groups by role: what "freeze" and the transferred learning rate refer to.
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "source_embeddings": [*self.source_embeddings.parameters()],
            "tower": [*self.tower.parameters()],
            "target": [
                *self.target_input_embeddings.parameters(),
                *self.target_output.parameters(),
                *self.target_bias.parameters(),
            ],
            "source_head": [*self.source_output.parameters(), *self.source_bias.parameters()],
        }
