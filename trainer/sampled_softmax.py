"""The multinomial objective over a batch's candidate items: full softmax or sampled with logQ.

A user's loss is the mean negative log-likelihood of their items under a softmax over candidate
items. When the domain's catalogue fits in ``train.num_negatives`` the candidates are the whole
catalogue (the exact multinomial of Mult-VAE style training). Larger catalogues use a sampled
softmax: the candidates are the batch's positives plus ``num_negatives`` items drawn from
popularity^``negative_power``, and every candidate's logit is corrected by the log of its expected
count under that proposal (logQ correction, Bengio & Senecal 2008; Yi et al. 2019), so popular
items are not over-penalised for being sampled often. Either way the label tensor is
[batch, candidates], never users x items, and the cost of a step does not grow with the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PADDING_LOGIT = -1e9


@dataclass
class Candidates:
    """The items a batch is scored against (None = the whole catalogue) and their labels."""

    items: torch.Tensor | None  # int64 [C] sorted item indices, or None for all items
    log_q: torch.Tensor | None  # float32 [C] logQ correction, None for the full softmax
    labels: torch.Tensor  # float32 [B, C] multi-hot (C = catalogue size for the full softmax)


class CandidateSampler:
    """Builds each batch's candidates from one domain's item popularity."""

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
        # Expected count of each item among num_negatives draws: its logQ correction.
        expected = -np.expm1(
            num_negatives * np.log1p(-np.minimum(weights / weights.sum(), 1 - 1e-12))
        )
        self.log_expected = torch.from_numpy(np.log(np.maximum(expected, 1e-30))).float()

    def __call__(
        self,
        label_rows: np.ndarray,
        label_items: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
    ) -> Candidates:
        if self.full:
            labels = torch.zeros(batch_size, self.num_items)
            labels[torch.from_numpy(label_rows), torch.from_numpy(label_items)] = 1.0
            return Candidates(None, None, labels.to(self.device))
        negatives = torch.multinomial(self.proposal, self.num_negatives, True, generator=generator)
        items = torch.unique(torch.cat([torch.from_numpy(label_items), negatives]))
        columns = torch.searchsorted(items, torch.from_numpy(label_items))
        labels = torch.zeros(batch_size, len(items))
        labels[torch.from_numpy(label_rows), columns] = 1.0
        return Candidates(
            items.to(self.device), self.log_expected[items].to(self.device), labels.to(self.device)
        )


def multinomial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over users of the negative log-likelihood of their items under a softmax over the
    candidates (column 0 is the padding item when the candidates are the whole catalogue)."""
    log_probs = torch.log_softmax(logits, dim=1)
    per_user = -(log_probs * labels).sum(1) / labels.sum(1).clamp(min=1.0)
    return per_user.sum() / max(len(per_user), 1)  # an empty shard gives 0, still part of the graph


def candidate_logits(
    scores_all, scores_of, user: torch.Tensor, candidates: Candidates
) -> torch.Tensor:
    """Logits of the users over the candidates: every item with padding masked, or the sampled
    items with their logQ correction."""
    if candidates.items is None:
        logits = scores_all(user).clone()
        logits[:, 0] = PADDING_LOGIT  # padding is never an answer
        return logits
    return scores_of(user, candidates.items) - candidates.log_q
