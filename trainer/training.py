"""Training strategies behind one loop: target-only, pre-train + fine-tune, and joint training.

Every strategy optimises the same multinomial (softmax over the whole domain) denoising objective:
a user's history goes in with items dropped at random, and the model must put probability mass on
all the user's items. Hiding the whole target history for a share of the users in each batch
teaches the tower the cold-start path (source history only) that serving uses for new users.
Model selection is early stopping on validation NDCG@10; the test split is never looked at here.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.batching import pad_histories
from trainer.config import ExperimentConfig
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.models import HistoryTowerModel
from trainer.splits import CrossDomainSplit

log = logging.getLogger(__name__)
MODEL_STRATEGIES = ("target_only", "pretrain_finetune", "joint")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    strategy: str
    seed: int
    model: HistoryTowerModel
    best_epoch: int
    valid: dict[str, dict[str, float]]
    curve: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, valid_ndcg@10
    seconds: float = 0.0


class DomainBatches:
    """Padded histories and multi-hot labels of the training users of one domain, on the device."""

    def __init__(
        self,
        users: list[str],
        split: CrossDomainSplit,
        label_domain: str,
        max_source: int,
        max_target: int,
        device: torch.device,
    ) -> None:
        empty = np.zeros(0, dtype=np.int64)
        src = [split.train_source.get(u, empty) for u in users]
        tgt = [split.train_target.get(u, empty) for u in users]
        src_items, src_mask = pad_histories(src, max_source)
        tgt_items, tgt_mask = pad_histories(tgt, max_target)
        label_histories = src if label_domain == "source" else tgt
        size = len(split.source_vocab) if label_domain == "source" else len(split.target_vocab)
        labels = np.zeros((len(users), size), dtype=np.float32)
        for row, history in enumerate(label_histories):
            labels[row, history] = 1.0
        self.size = len(users)
        self.tensors = [torch.from_numpy(a).to(device) for a in (src_items, src_mask, tgt_items, tgt_mask, labels)]

    def batches(self, batch_size: int, generator: torch.Generator):
        order = torch.randperm(self.size, generator=generator)
        for start in range(0, self.size, batch_size):
            rows = order[start : start + batch_size].to(self.tensors[0].device)
            yield [t[rows] for t in self.tensors]


def multinomial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over users of the negative log-likelihood of their items under a softmax over the domain."""
    logits = logits.clone()
    logits[:, 0] = -1e9  # padding is never an answer
    log_probs = torch.log_softmax(logits, dim=1)
    return (-(log_probs * labels).sum(1) / labels.sum(1).clamp(min=1.0)).mean()


class Trainer:
    """Trains one strategy for one seed on a split; see the module docstring for the objective."""

    def __init__(self, config: ExperimentConfig, split: CrossDomainSplit, show_progress: bool = True) -> None:
        self.config = config
        self.split = split
        self.device = resolve_device(config.train.device)
        self.show_progress = show_progress
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        m = config.model
        target_users = sorted(split.train_target)
        source_users = sorted(split.train_source)
        self.target_batches = DomainBatches(
            target_users, split, "target", m.max_source_history, m.max_target_history, self.device
        )
        self.source_batches = DomainBatches(
            source_users, split, "source", m.max_source_history, m.max_target_history, self.device
        )

    def new_model(self) -> HistoryTowerModel:
        return HistoryTowerModel(len(self.split.source_vocab), len(self.split.target_vocab), self.config.model).to(
            self.device
        )

    # -- input corruption ---------------------------------------------------------------------
    def _corrupt(self, mask: torch.Tensor, generator: torch.Generator, drop_all_rate: float = 0.0) -> torch.Tensor:
        keep = torch.rand(mask.shape, generator=generator).to(mask.device) >= self.config.train.history_dropout
        mask = mask * keep
        if drop_all_rate > 0:
            rows = torch.rand(mask.shape[0], generator=generator).to(mask.device) < drop_all_rate
            mask = mask * (~rows).unsqueeze(1)
        return mask

    def _target_loss(self, model, batch, generator, use_source: bool) -> torch.Tensor:
        src_items, src_mask, tgt_items, tgt_mask, labels = batch
        if not use_source:
            src_mask = torch.zeros_like(src_mask)
        cold_rate = self.config.train.cold_simulation_rate if use_source else 0.0
        tgt_mask = self._corrupt(tgt_mask, generator, drop_all_rate=cold_rate)
        user = model.user_representation(src_items, src_mask, tgt_items, tgt_mask)
        return multinomial_loss(model.target_logits(user), labels)

    def _source_loss(self, model, batch, generator) -> torch.Tensor:
        src_items, src_mask, tgt_items, tgt_mask, labels = batch
        src_mask = self._corrupt(src_mask, generator)
        user = model.user_representation(src_items, src_mask, tgt_items, torch.zeros_like(tgt_mask))
        return multinomial_loss(model.source_logits(user), labels)

    # -- strategies -----------------------------------------------------------------------------
    def fit(self, strategy: str, seed: int) -> TrainResult:
        if strategy not in MODEL_STRATEGIES:
            raise ValueError(f"unknown strategy '{strategy}'; model strategies are {MODEL_STRATEGIES}")
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        model = self.new_model()
        t = self.config.train
        use_source = strategy != "target_only"
        if strategy == "pretrain_finetune":
            self._pretrain(model, generator, seed)
            optimizer = self._finetune_optimizer(model)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)

        def step_fn(target_batch) -> torch.Tensor:
            loss = self._target_loss(model, target_batch, generator, use_source)
            if strategy == "joint":
                source_batch = next(source_iter)
                loss = self._source_loss(model, source_batch, generator) + t.joint_lambda * loss
            return loss

        best = {"score": -math.inf, "epoch": 0, "state": None, "valid": {}}
        curve: list[dict[str, float]] = []
        waited = 0
        bar = tqdm(range(1, t.epochs + 1), desc=f"{strategy} seed={seed}", disable=not self.show_progress, leave=False)
        for epoch in bar:
            model.train()
            source_iter = self._cycle_source(t.batch_size, generator)
            losses = []
            for batch in self.target_batches.batches(t.batch_size, generator):
                optimizer.zero_grad()
                loss = step_fn(batch)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            point = {"epoch": epoch, "loss": float(np.mean(losses))}
            if epoch % t.eval_every == 0 or epoch == t.epochs:
                valid = self.validate(model, use_source)
                point["valid_ndcg@10"] = pooled_ndcg(valid, self.split.valid)
                if point["valid_ndcg@10"] > best["score"]:
                    best = {"score": point["valid_ndcg@10"], "epoch": epoch, "state": copy.deepcopy(model.state_dict()), "valid": valid}
                    waited = 0
                else:
                    waited += 1
                bar.set_postfix(loss=f"{point['loss']:.3f}", valid_ndcg=f"{point['valid_ndcg@10']:.4f}")
            curve.append(point)
            if waited >= t.patience:
                break
        model.load_state_dict(best["state"])
        model.eval()
        return TrainResult(strategy, seed, model, best["epoch"], best["valid"], curve, time.perf_counter() - start)

    def _cycle_source(self, batch_size: int, generator: torch.Generator):
        while True:
            yield from self.source_batches.batches(batch_size, generator)

    def _pretrain(self, model: HistoryTowerModel, generator: torch.Generator, seed: int) -> None:
        """Source-domain pre-training of the shared parts (source embeddings + tower)."""
        t = self.config.train
        optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
        bar = tqdm(range(1, t.pretrain_epochs + 1), desc=f"pretrain seed={seed}", disable=not self.show_progress, leave=False)
        for _ in bar:
            model.train()
            losses = []
            for batch in self.source_batches.batches(t.batch_size, generator):
                optimizer.zero_grad()
                loss = self._source_loss(model, batch, generator)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")

    def _finetune_optimizer(self, model: HistoryTowerModel) -> torch.optim.Optimizer:
        t = self.config.train
        groups = model.parameter_groups()
        unknown = set(t.freeze) - {"source_embeddings", "tower"}
        if unknown:
            raise ValueError(f"train.freeze: unknown group(s) {sorted(unknown)}; choose from source_embeddings, tower")
        param_groups = []
        for name, params in groups.items():
            if name in t.freeze:
                for p in params:
                    p.requires_grad_(False)
                continue
            scale = t.transferred_lr_scale if name in ("source_embeddings", "tower") else 1.0
            param_groups.append({"params": params, "lr": t.learning_rate * scale})
        return torch.optim.Adam(param_groups, weight_decay=t.weight_decay)

    @torch.no_grad()
    def validate(self, model: HistoryTowerModel, use_source: bool = True) -> dict[str, dict[str, float]]:
        m = self.config.model
        return {
            name: evaluate_model(model, evalset, m.max_source_history, m.max_target_history, self.device, use_source)
            for name, evalset in self.split.valid.items()
        }
