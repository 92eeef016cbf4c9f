"""Full-ranking evaluation over users in chunks: memory O(chunk x items), never users x items.

Every target item the user has not interacted with (in the model's input history) is a
candidate; the relevant items are the held-out interactions of the split. A scorer fills one
chunk of users x all items, the chunk keeps only its top 20 (``torch.topk``), and the metrics are
accumulated per user; so a catalogue of 200k items and a million users is scored in slices.

Metrics per group of users: Recall@10/20, NDCG@10/20, HR@10, Precision@10, F1@10 (user means),
catalogue coverage@10 (share of target items in anyone's top 10) and novelty@10 (mean
self-information of the recommended items, given training popularity). See trainer/metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from trainer.batching import pad_histories
from trainer.metrics import catalogue_coverage, novelty
from trainer.splits import EvalSet

MAX_K = 20
CHUNK_USERS = 512
# A function that scores users [start, end) of an evaluation set against every target index.
ChunkScorer = Callable[[int, int], torch.Tensor]


def _chunk_metrics(top: torch.Tensor, relevant: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-user metrics of one chunk: ``top`` [B, k] item indices best first, ``relevant``
    [B, items] bool. Same definitions as trainer.metrics.user_metrics / precision_f1."""
    hits = relevant.gather(1, top).double()
    n_relevant = relevant.sum(1).double().clamp(min=1.0)
    discounts = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    discounts = discounts.to(top.device)
    out = {}
    for k in (10, 20):
        top_hits = hits[:, :k]
        out[f"recall@{k}"] = top_hits.sum(1) / n_relevant
        ideal_cut = torch.minimum(n_relevant, torch.tensor(float(k), device=top.device)).long()
        ideal = torch.cumsum(discounts, 0)[(ideal_cut - 1).clamp(max=len(discounts) - 1)]
        out[f"ndcg@{k}"] = (top_hits * discounts[: top_hits.shape[1]]).sum(1) / ideal
    hits10 = hits[:, :10].sum(1)
    out["hr@10"] = (hits10 > 0).double()
    precision, recall = hits10 / 10.0, hits10 / n_relevant
    out["precision@10"] = precision
    out["f1@10"] = torch.where(
        hits10 > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0
    )
    return out


def evaluate_ranking(
    score_chunk: ChunkScorer,
    evalset: EvalSet,
    popularity: np.ndarray | None = None,
    chunk_users: int = CHUNK_USERS,
) -> dict[str, float]:
    """Ranks all unseen target items for every user of ``evalset``, ``chunk_users`` at a time."""
    sums: dict[str, float] = {}
    recommended: list[np.ndarray] = []
    n_items = 0
    for start in range(0, len(evalset), chunk_users):
        end = min(start + chunk_users, len(evalset))
        scores = score_chunk(start, end).float().clone()
        n_items = scores.shape[1] - 1
        scores[:, 0] = -torch.inf  # padding index
        rows = np.repeat(
            np.arange(end - start), [len(h) for h in evalset.target_histories[start:end]]
        )
        seen = np.concatenate([np.zeros(0, np.int64), *evalset.target_histories[start:end]])
        scores[torch.from_numpy(rows), torch.from_numpy(seen)] = -torch.inf
        values, top = torch.topk(scores, min(MAX_K, scores.shape[1]), dim=1)
        relevant = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        label_rows = np.repeat(np.arange(end - start), [len(h) for h in evalset.labels[start:end]])
        labels = np.concatenate([np.zeros(0, np.int64), *evalset.labels[start:end]])
        relevant[torch.from_numpy(label_rows), torch.from_numpy(labels)] = True
        for name, per_user in _chunk_metrics(top, relevant).items():
            sums[name] = sums.get(name, 0.0) + float(per_user.sum())
        top10 = top[:, :10].cpu().numpy()
        recommended.append(top10[torch.isfinite(values[:, :10]).cpu().numpy()])
    if not len(evalset):
        return {"users": 0.0}
    out = {name: total / len(evalset) for name, total in sums.items()}
    items = np.concatenate(recommended)
    out["coverage@10"] = catalogue_coverage(items, n_items)
    if popularity is not None:
        out["novelty@10"] = novelty(items, popularity)
    out["users"] = float(len(evalset))
    return out


@torch.no_grad()
def evaluate_model(
    model,
    evalset: EvalSet,
    max_source: int,
    max_target: int,
    device: torch.device | str = "cpu",
    use_source: bool = True,
    batch_size: int = CHUNK_USERS,
    popularity: np.ndarray | None = None,
) -> dict[str, float]:
    model.eval()

    def score_chunk(start: int, end: int) -> torch.Tensor:
        src_items, src_mask = pad_histories(evalset.source_histories[start:end], max_source)
        tgt_items, tgt_mask = pad_histories(evalset.target_histories[start:end], max_target)
        if not use_source:
            src_mask[:] = 0.0
        tensors = [
            torch.from_numpy(a).to(device) for a in (src_items, src_mask, tgt_items, tgt_mask)
        ]
        return model.target_logits(model.user_representation(*tensors))

    return evaluate_ranking(score_chunk, evalset, popularity, batch_size)


def pooled_ndcg(metrics: dict[str, dict[str, float]], sets: dict[str, EvalSet]) -> float:
    """NDCG@10 over warm and cold validation users together (user-weighted): the selection metric."""
    total = sum(len(s) for s in sets.values())
    return sum(metrics[name].get("ndcg@10", 0.0) * len(s) for name, s in sets.items()) / max(
        total, 1
    )
