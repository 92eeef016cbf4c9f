"""The multinomial objective over a batch's candidate items: full softmax or sampled with logQ.

A user's loss is the mean negative log-likelihood of their items under a softmax over candidate
items. When the domain's catalogue fits in ``train.num_negatives`` the candidates are the whole
catalogue (the exact multinomial of Mult-VAE style training). Larger catalogues use a sampled
softmax: each row is scored against its own positives plus ``num_negatives`` items drawn from
popularity^``negative_power`` and shared by the batch; every draw's logit is corrected by the log
of its expected count under that proposal (logQ correction, Bengio & Senecal 2008; Yi et al.
2019), so popular items are not over-penalised for being sampled often, and a draw that is one of
the row's own positives is masked for that row. Either way the label tensor is
[batch, candidates], never users x items; a sampled step has [batch, max positives per row +
num_negatives] columns, so its cost does not depend on the catalogue size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PADDING_LOGIT = -1e9


@dataclass
class Candidates:
    """The items a batch is scored against and their labels.

    Full softmax: ``items``/``positives``/``offsets`` are None and ``labels`` is [B, catalogue].
    Sampled: column j < P is row b's own j-th positive ``positives[b, j]`` (padded with item 0),
    column P + k is the shared negative ``items[k]``; ``offsets`` [B, P + N] is subtracted from
    the logits (logQ for the negatives, ``-PADDING_LOGIT`` for padded slots and for a negative
    that is one of the row's own positives), and ``labels`` [B, P + N] marks the real positives.
    """

    items: torch.Tensor | None  # int64 [N] shared negatives, or None for all items
    positives: torch.Tensor | None  # int64 [B, P] each row's own positives (0 = padding)
    offsets: torch.Tensor | None  # float32 [B, P + N] subtracted from the logits
    labels: torch.Tensor  # float32 [B, C]

    def row_tensors(self) -> list[torch.Tensor]:
        """The per-row tensors a data-parallel rank takes its share of (labels first)."""
        if self.positives is None:
            return [self.labels]
        return [self.labels, self.positives, self.offsets]


class CandidateSampler:
    """Builds each batch's candidates from one domain's item popularity.

    A sampled step scores every row against its own positives (exactly, no correction) and
    ``num_negatives`` items drawn with replacement from popularity^``negative_power``, shared by
    the batch, each corrected by log(num_negatives * q): the importance weight that makes the sum
    over the draws an unbiased estimate of the softmax denominator over the rest of the
    catalogue. The shape is [batch, max positives per row + num_negatives] whatever the catalogue
    size, so the cost of a step is set by the batch, not by the number of items.
    """

    def __init__(
        self,
        counts: np.ndarray,
        num_negatives: int,
        negative_power: float,
        device: torch.device,
    ) -> None:
        self.num_items = len(counts)  # including padding index 0
        self.num_negatives = num_negatives
        self.device = device
        self.full = self.num_items - 1 <= num_negatives
        weights = (counts.astype(np.float64) + 1.0) ** negative_power
        weights[0] = 0.0  # padding is never a candidate
        self.proposal = torch.from_numpy(weights / weights.sum())
        # log of a draw's expected count among the num_negatives draws: its logQ correction.
        probability = np.maximum(weights / weights.sum(), 1e-30)
        self.log_expected = torch.from_numpy(np.log(num_negatives * probability)).float()

    def __call__(
        self,
        label_rows: np.ndarray,
        label_items: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
    ) -> Candidates:
        """``label_rows``/``label_items``: the batch's (row, item) positives, sorted by row, each
        pair once (RowBatch's labels)."""
        if self.full:
            labels = torch.zeros(batch_size, self.num_items)
            labels[torch.from_numpy(label_rows), torch.from_numpy(label_items)] = 1.0
            return Candidates(None, None, None, labels.to(self.device))
        drawn = torch.multinomial(self.proposal, self.num_negatives, True, generator=generator)
        negatives = torch.sort(drawn).values.numpy()
        per_row = np.bincount(label_rows, minlength=batch_size)
        width = int(per_row.max(initial=0))
        slot = np.arange(len(label_rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        positives = np.zeros((batch_size, width), dtype=np.int64)
        positives[label_rows, slot] = label_items
        labels = np.zeros((batch_size, width + self.num_negatives), dtype=np.float32)
        labels[label_rows, slot] = 1.0
        offsets = np.full_like(labels, -PADDING_LOGIT)
        offsets[label_rows, slot] = 0.0
        offsets[:, width:] = self.log_expected.numpy()[negatives]
        # A draw of one of the row's own positives is already counted exactly in its positive
        # column: masked for that row, so an item is never both a label and a negative.
        first = np.searchsorted(negatives, label_items, side="left")
        hits = np.searchsorted(negatives, label_items, side="right") - first
        hit_rows = np.repeat(label_rows, hits)
        hit_columns = np.repeat(first, hits) + (
            np.arange(int(hits.sum())) - np.repeat(np.cumsum(hits) - hits, hits)
        )
        offsets[hit_rows, width + hit_columns] = -PADDING_LOGIT
        return Candidates(
            torch.from_numpy(negatives).to(self.device),
            torch.from_numpy(positives).to(self.device),
            torch.from_numpy(offsets).to(self.device),
            torch.from_numpy(labels).to(self.device),
        )


def multinomial_loss(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over users of the negative log-likelihood of their items under a softmax over the
    candidates (column 0 is the padding item when the candidates are the whole catalogue);
    ``row_weights`` [B] scale each user's term (recency-weighted labels)."""
    log_probs = torch.log_softmax(logits, dim=1)
    per_user = -(log_probs * labels).sum(1) / labels.sum(1).clamp(min=1.0)
    if row_weights is not None:
        per_user = per_user * row_weights
    return per_user.sum() / max(len(per_user), 1)  # an empty shard gives 0, still part of the graph


def candidate_logits(
    scores_all, scores_of, user: torch.Tensor, candidates: Candidates
) -> torch.Tensor:
    """Logits of the users over the candidates: every item with padding masked, or each row's
    own positives and the shared negatives with their offsets (``scores_of`` takes [N] items for
    all rows or [B, P] items, one row each)."""
    if candidates.items is None:
        logits = scores_all(user).clone()
        logits[:, 0] = PADDING_LOGIT  # padding is never an answer
        return logits
    own = scores_of(user, candidates.positives)  # [B, P]: each row against its own positives
    shared = scores_of(user, candidates.items)  # [B, N]
    return torch.cat([own, shared], dim=1) - candidates.offsets
