"""History-tower recommender with a user representation shared across domains.

A user is represented by what they did, not by a learned per-user id: the tower pools the
source-domain history and the target-domain history and maps them through a shared MLP. Because
nothing is tied to a user id, a user who has never touched the target domain (cold start) is
scored from their source history alone, and users who arrive after training are served without
retraining. Transfer happens through the source item embeddings and the tower, which pre-training
on the (dense) source domain shapes before the (thin) target domain fine-tunes them.

With ``text_fusion`` every item vector is its id embedding plus a learned projection of its
(frozen) title embedding, so items with few interactions still carry signal; ``content_fusion``
does the same with precomputed vectors of any modality (data.item_vectors), and
``source_domain_embedding`` adds a learned embedding of each source item's source domain when
several sources are merged into one source vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.models.base import CrossDomainModel
from trainer.models.recency import add_recent_parameters, recent_term

TEXT_DIM = 384


def masked_mean(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the history axis of [B, L, D] with a [B, L] 0/1 mask; zeros for empty histories."""
    total = (embeddings * mask.unsqueeze(-1)).sum(dim=1)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return total / count


class ItemTable(nn.Module):
    """Item vectors: an id embedding, optionally plus a projected frozen text embedding, a
    projected precomputed content vector (any modality; items without one get a learned
    "missing" vector) and a learned embedding of the item's source domain (several sources).

    The frozen parts are buffers, so they are constants of the exported ONNX graph.
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        text_fusion: bool,
        padding: bool,
        content_dim: int = 0,
        num_domains: int = 0,
    ) -> None:
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
        self.content_dim = content_dim
        if content_dim:
            self.register_buffer("content", torch.zeros(num_items, content_dim))
            # 1.0 where the item has no vector: it gets ``missing_content`` instead.
            self.register_buffer("content_missing", torch.zeros(num_items, 1))
            self.content_projection = nn.Linear(content_dim, dim, bias=False)
            nn.init.normal_(self.content_projection.weight, std=0.02)
            self.missing_content = nn.Parameter(torch.zeros(dim))
        self.num_domains = num_domains
        if num_domains:
            self.register_buffer("item_domain", torch.zeros(num_items, dtype=torch.long))
            self.domain_embedding = nn.Embedding(num_domains + 1, dim, padding_idx=0)
            nn.init.normal_(self.domain_embedding.weight, std=0.05)
            with torch.no_grad():
                self.domain_embedding.weight[0].zero_()

    @property
    def num_items(self) -> int:
        return self.ids.num_embeddings

    def _side_table(self) -> torch.Tensor | None:
        """[items, dim] sum of every fused part, or None when nothing is fused. Projecting the
        whole (small) table once, then gathering, is far cheaper than projecting a [B, L, k]
        gather for every history slot."""
        parts = []
        if self.text_fusion:
            parts.append(self.text_projection(self.text))
        if self.content_dim:
            parts.append(
                self.content_projection(self.content) + self.content_missing * self.missing_content
            )
        if self.num_domains:
            parts.append(self.domain_embedding(self.item_domain))
        if not parts:
            return None
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        vectors = self.ids(indices)
        side = self._side_table()
        if side is not None:
            vectors = vectors + nn.functional.embedding(indices, side)
        return vectors

    def all(self) -> torch.Tensor:
        side = self._side_table()
        return self.ids.weight if side is None else self.ids.weight + side


class HistoryTowerModel(CrossDomainModel):
    def __init__(
        self,
        num_source_items: int,
        num_target_items: int,
        config: ModelConfig,
        content_dim: int = 0,
        num_source_domains: int = 0,
    ) -> None:
        """``num_*_items`` count the padding index 0. ``content_dim``: width of the precomputed
        item vectors (0 = none); ``num_source_domains``: > 0 adds a per-source-domain embedding
        to the source item tables (filled by ``set_source_item_domain``)."""
        super().__init__()
        d, h, text = config.embedding_dim, config.hidden_dim, config.text_fusion
        self.content_dim, self.num_source_domains = content_dim, num_source_domains
        source = {"content_dim": content_dim, "num_domains": num_source_domains}
        target = {"content_dim": content_dim}
        self.source_embeddings = ItemTable(num_source_items, d, text, padding=True, **source)
        self.target_input_embeddings = ItemTable(num_target_items, d, text, padding=True, **target)
        # Input: pooled source, pooled target, and two flags saying which histories exist, so the
        # tower can tell "no target history" (cold start) from "an average target history".
        self.tower = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(2 * d + 2, h),
            nn.Tanh(),
            nn.Linear(h, d),
        )
        self.target_output = ItemTable(num_target_items, d, text, padding=False, **target)
        self.target_bias = nn.Embedding(num_target_items, 1)
        self.source_output = ItemTable(num_source_items, d, text, padding=False, **source)
        self.source_bias = nn.Embedding(num_source_items, 1)
        nn.init.zeros_(self.target_bias.weight)
        nn.init.zeros_(self.source_bias.weight)
        # Recent popularity as a score input (trainer/models/recency.py), only when configured:
        # a model without it keeps exactly the parameters (and checkpoints) it always had.
        self.uses_recent = config.recent_popularity_window > 0
        if self.uses_recent:
            add_recent_parameters(self, num_target_items, d)

    def set_recent_popularity(self, values) -> None:
        """[target items] recent popularity at the cutoff (no-op without the term)."""
        if self.uses_recent:
            self.target_recent.copy_(torch.as_tensor(values, dtype=torch.float32))

    def set_text_embeddings(self, source: torch.Tensor, target: torch.Tensor) -> None:
        for table, values in (
            (self.source_embeddings, source),
            (self.source_output, source),
            (self.target_input_embeddings, target),
            (self.target_output, target),
        ):
            table.text.copy_(values)

    def set_content_vectors(
        self,
        source: torch.Tensor,
        source_missing: torch.Tensor,
        target: torch.Tensor,
        target_missing: torch.Tensor,
    ) -> None:
        """[items, k] vectors (zeros where missing) and [items] 0/1 "has no vector" flags per
        domain, aligned with the vocabularies (trainer/item_vectors.py)."""
        for tables, vectors, missing in (
            ((self.source_embeddings, self.source_output), source, source_missing),
            ((self.target_input_embeddings, self.target_output), target, target_missing),
        ):
            for table in tables:
                table.content.copy_(vectors)
                table.content_missing.copy_(missing.reshape(-1, 1).to(vectors.dtype))

    def set_source_item_domain(self, item_domain: torch.Tensor) -> None:
        """[source items] source-domain number per source index (1..N, 0 = padding)."""
        for table in (self.source_embeddings, self.source_output):
            table.item_domain.copy_(item_domain)

    def shape_spec(self) -> dict:
        """What ``build_model`` needs beyond the config to rebuild this model's tensors."""
        spec = {}
        if self.content_dim:
            spec["content_dim"] = self.content_dim
        if self.num_source_domains:
            spec["num_source_domains"] = self.num_source_domains
        return spec

    def user_representation(self, src_items, src_mask, tgt_items, tgt_mask):
        pooled_source = masked_mean(self.source_embeddings(src_items), src_mask)
        pooled_target = masked_mean(self.target_input_embeddings(tgt_items), tgt_mask)
        has_source = (src_mask.sum(dim=1, keepdim=True) > 0).to(pooled_source.dtype)
        has_target = (tgt_mask.sum(dim=1, keepdim=True) > 0).to(pooled_target.dtype)
        return self.tower(torch.cat([pooled_source, pooled_target, has_source, has_target], dim=1))

    def target_logits(self, user, recent: torch.Tensor | None = None):
        """``recent`` [B, items]: each row's recent popularity at its own "now" (training);
        None = the ``target_recent`` buffer (the cutoff)."""
        logits = user @ self.target_output.all().T + self.target_bias.weight.T
        return logits + recent_term(self, user, None, recent) if self.uses_recent else logits

    def source_logits(self, user):
        return user @ self.source_output.all().T + self.source_bias.weight.T

    def target_scores(self, user, items, recent: torch.Tensor | None = None):
        """[B, D] users x [C] item indices -> [B, C], or x [B, C] (one row of items per user) ->
        [B, C]: the sampled-softmax path (gathers only those rows, so with sparse embeddings the
        gradient touches only them)."""
        scores = self._scores(user, items, self.target_output, self.target_bias)
        return scores + recent_term(self, user, items, recent) if self.uses_recent else scores

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
        scores = (item_vectors * user.unsqueeze(1)).sum(-1) + self.target_bias(candidates).squeeze(
            -1
        )
        return scores + recent_term(self, user, candidates) if self.uses_recent else scores

    # Parameter groups by role: what "freeze" and the transferred learning rate refer to.
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "source_embeddings": [*self.source_embeddings.parameters()],
            "tower": [*self.tower.parameters()],
            "target": [
                *self.target_input_embeddings.parameters(),
                *self.target_output.parameters(),
                *self.target_bias.parameters(),
                *([self.recent_weight, self.recent_direction] if self.uses_recent else []),
            ],
            "source_head": [*self.source_output.parameters(), *self.source_bias.parameters()],
        }
