"""Full-ranking evaluation of models and the popularity baseline on an :class:`EvalSet`.

Every target item the user has not interacted with (in the model's input history) is a
candidate; the relevant items are the held-out interactions of the split.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.batching import pad_histories
from trainer.metrics import mean_metrics, topk_indices, user_metrics
from trainer.splits import EvalSet

MAX_K = 20


def _rank_and_score(scores: np.ndarray, evalset: EvalSet, offset: int) -> list[dict[str, float]]:
    scores[:, 0] = -np.inf  # padding index
    results = []
    for row in range(scores.shape[0]):
        seen = evalset.target_histories[offset + row]
        scores[row, seen] = -np.inf
    ranked = topk_indices(scores, MAX_K)
    for row in range(scores.shape[0]):
        results.append(user_metrics(ranked[row], evalset.labels[offset + row]))
    return results


@torch.no_grad()
def evaluate_model(
    model,
    evalset: EvalSet,
    max_source: int,
    max_target: int,
    device: torch.device | str = "cpu",
    use_source: bool = True,
    batch_size: int = 512,
) -> dict[str, float]:
    model.eval()
    per_user: list[dict[str, float]] = []
    for start in range(0, len(evalset), batch_size):
        end = start + batch_size
        src_items, src_mask = pad_histories(evalset.source_histories[start:end], max_source)
        tgt_items, tgt_mask = pad_histories(evalset.target_histories[start:end], max_target)
        if not use_source:
            src_mask[:] = 0.0
        tensors = [
            torch.from_numpy(a).to(device) for a in (src_items, src_mask, tgt_items, tgt_mask)
        ]
        user = model.user_representation(*tensors)
        scores = model.target_logits(user).float().cpu().numpy()
        per_user.extend(_rank_and_score(scores, evalset, start))
    out = mean_metrics(per_user)
    out["users"] = float(len(evalset))
    return out


def evaluate_popularity(popularity: np.ndarray, evalset: EvalSet) -> dict[str, float]:
    scores = np.tile(popularity.astype(np.float64), (len(evalset), 1))
    out = mean_metrics(_rank_and_score(scores, evalset, 0)) if len(evalset) else {}
    out["users"] = float(len(evalset))
    return out


def pooled_ndcg(metrics: dict[str, dict[str, float]], sets: dict[str, EvalSet]) -> float:
    """NDCG@10 over warm and cold validation users together (user-weighted): the selection metric."""
    total = sum(len(s) for s in sets.values())
    return sum(metrics[name].get("ndcg@10", 0.0) * len(s) for name, s in sets.items()) / max(
        total, 1
    )
