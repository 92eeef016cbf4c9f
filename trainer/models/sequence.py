"""Sequence-aware cross-domain recommender: self-attention over both histories, in order.

A user is the tokens of their source history and their target history (most recent last, the
serving contract's layout), each token = item vector + domain embedding + recency-position
embedding (0 = the domain's most recent item), followed by one learned *query* token. A small
Transformer encoder (pre-norm, written out so the ONNX graph is plain MatMul/Softmax) lets every
token attend to every real token of both domains; the query token's output is the user vector,
scored against target items exactly like the history tower (dot product + learned item bias).

Why a query token rather than "the output at the last position": a cold-start user has no target
token, an unknown user no token at all; the query token always exists, so one graph serves warm,
cold and unknown users with no branch, and attention never runs over an all-padding row (the
query is always a valid key, so the softmax cannot produce NaN).

Order across domains: the five-input contract carries no timestamps, so the two histories are two
ordered segments (position = recency rank inside the domain) told apart by the domain embedding,
not one interleaved timeline. Training never shows the model a target item it must predict:
the "future" objective (trainer/future_objective.py) cuts each history at a random point and
feeds only the part before the cut, so no causal mask is needed for the loss to be leak-free.

Domain ids: 0 = padding, 1..N = source domains (``source_item_domain``: per source-vocab index,
all ones for one source), N + 1 = the target domain.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.models.base import CrossDomainModel
from trainer.models.history_tower import ItemTable
from trainer.models.recency import add_recent_parameters, recent_term

NEG = -1e9  # additive attention mask for padding (finite: no NaN even if a row were all padding)


def recency_positions(mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, L] 0/1 mask -> [B, L] int64: 0 for the most recent real item, 1 for the one before...;
    independent of where the padding sits, clipped to ``max_len - 1`` (older items share the last
    position), 0 on padding. Uses sums only (no sort, no flip): exports to any ONNX runtime."""
    after = mask.sum(dim=1, keepdim=True) - torch.cumsum(mask, dim=1)  # real items after slot
    return (after * mask).clamp(max=max_len - 1).long()


class SelfAttentionBlock(nn.Module):
    """Pre-norm Transformer encoder layer with an additive key mask."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(
                f"model.embedding_dim ({dim}) must be divisible by model.seq_heads ({heads})"
            )
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], key_bias [B, 1, 1, T] (0 for real keys, NEG for padding)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        attention = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + key_bias
        attention = self.dropout(torch.softmax(attention, dim=-1))
        mixed = (attention @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.dropout(self.out(mixed))
        return x + self.dropout(self.ffn(self.norm2(x)))


class SequenceModel(CrossDomainModel):
    def __init__(
        self,
        num_source_items: int,
        num_target_items: int,
        config: ModelConfig,
        source_item_domain: np.ndarray | None = None,
        num_source_domains: int | None = None,
    ) -> None:
        """``num_*_items`` count the padding index 0; ``source_item_domain`` maps each source
        index to its source domain (1..N), default one source domain; ``num_source_domains``
        (when rebuilding from a checkpoint, whose state holds the map) sizes the domain table."""
        super().__init__()
        d, text = config.embedding_dim, config.text_fusion
        self.max_len = config.seq_max_len
        domains = np.ones(num_source_items, dtype=np.int64)
        if source_item_domain is not None:
            domains = np.asarray(source_item_domain, dtype=np.int64)
            if domains.shape != (num_source_items,):
                raise ValueError(
                    f"source_item_domain has shape {domains.shape}, expected ({num_source_items},)"
                )
        domains = domains.copy()
        domains[0] = 0
        self.num_source_domains = num_source_domains or int(max(1, domains.max()))
        self.register_buffer("source_item_domain", torch.from_numpy(domains))
        # Input and output item vectors are tied (SASRec): the thin target domain learns one
        # vector per item, not two; each domain keeps its own output bias (item popularity).
        self.source_embeddings = ItemTable(num_source_items, d, text, padding=True)
        self.target_embeddings = ItemTable(num_target_items, d, text, padding=True)
        self.source_bias = nn.Embedding(num_source_items, 1)
        self.target_bias = nn.Embedding(num_target_items, 1)
        nn.init.zeros_(self.source_bias.weight)
        nn.init.zeros_(self.target_bias.weight)
        self.domain_embeddings = nn.Embedding(self.num_source_domains + 2, d, padding_idx=0)
        self.position_embeddings = nn.Embedding(self.max_len, d)
        self.query = nn.Parameter(torch.zeros(1, 1, d))
        for table in (self.domain_embeddings, self.position_embeddings):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.domain_embeddings.weight[0].zero_()
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d, config.seq_heads, config.hidden_dim, config.dropout)
            for _ in range(config.seq_layers)
        )
        self.final_norm = nn.LayerNorm(d)
        # Recent popularity of each target item (trainer/item_features.py; zeros = off) enters
        # the score with learned weights (trainer/models/recency.py).
        add_recent_parameters(self, num_target_items, d)

    @property
    def target_domain(self) -> int:
        return self.num_source_domains + 1

    def set_text_embeddings(self, source: torch.Tensor, target: torch.Tensor) -> None:
        self.source_embeddings.text.copy_(source)
        self.target_embeddings.text.copy_(target)

    def set_recent_popularity(self, values: np.ndarray) -> None:
        self.target_recent.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)))

    # -- the encoder ----------------------------------------------------------------------------
    def _tokens(self, items, mask, table: ItemTable, domains: torch.Tensor) -> torch.Tensor:
        positions = recency_positions(mask, self.max_len)
        vectors = (
            table(items) + self.domain_embeddings(domains) + self.position_embeddings(positions)
        )
        return vectors * mask.unsqueeze(-1)

    def user_representation(self, src_items, src_mask, tgt_items, tgt_mask):
        src_domains = self.source_item_domain[src_items] * src_mask.long()
        tgt_domains = torch.full_like(tgt_items, self.target_domain) * tgt_mask.long()
        src = self._tokens(src_items, src_mask, self.source_embeddings, src_domains)
        tgt = self._tokens(tgt_items, tgt_mask, self.target_embeddings, tgt_domains)
        query = self.query.expand(src.shape[0], 1, src.shape[2])
        x = self.input_dropout(torch.cat([src, tgt, query], dim=1))
        valid = torch.cat([src_mask, tgt_mask, torch.ones_like(src_mask[:, :1])], dim=1)
        key_bias = ((1.0 - valid) * NEG)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_bias)
        return self.final_norm(x[:, -1])

    # -- scoring (same shapes and meaning as HistoryTowerModel) ---------------------------------
    def target_logits(self, user, recent: torch.Tensor | None = None):
        """``recent`` [B, items]: each row's recent popularity at its own "now" (training);
        None = the ``target_recent`` buffer (the cutoff)."""
        logits = user @ self.target_embeddings.all().T + self.target_bias.weight.T
        return logits + recent_term(self, user, None, recent)

    def source_logits(self, user):
        return user @ self.source_embeddings.all().T + self.source_bias.weight.T

    def target_scores(self, user, items, recent: torch.Tensor | None = None):
        scores = self._scores(user, items, self.target_embeddings, self.target_bias)
        return scores + recent_term(self, user, items, recent)

    def source_scores(self, user, items):
        return self._scores(user, items, self.source_embeddings, self.source_bias)

    @staticmethod
    def _scores(user, items, table: ItemTable, bias: nn.Embedding) -> torch.Tensor:
        if items.dim() == 1:
            return user @ table(items).T + bias(items).T
        return (table(items) * user.unsqueeze(1)).sum(-1) + bias(items).squeeze(-1)

    def score_candidates(self, user, candidates):
        return self.target_scores(user, candidates)

    def item_embeddings(self) -> list[nn.Embedding]:
        """The per-item tables (sparse gradients with a sampled softmax on CPU)."""
        return [
            self.source_embeddings.ids,
            self.target_embeddings.ids,
            self.source_bias,
            self.target_bias,
        ]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Same group names as the history tower, so ``train.freeze`` means the same thing:
        "tower" = the Transformer (blocks, query, domain/position embeddings)."""
        tower = [*self.blocks.parameters(), *self.final_norm.parameters(), self.query]
        target_extra = [self.recent_weight, self.recent_direction]
        tower += [*self.domain_embeddings.parameters(), *self.position_embeddings.parameters()]
        return {
            "source_embeddings": [*self.source_embeddings.parameters()],
            "tower": tower,
            "target": [
                *self.target_embeddings.parameters(),
                *self.target_bias.parameters(),
                *target_extra,
            ],
            "source_head": [*self.source_bias.parameters()],
        }
