"""Training strategies behind one loop.

Every history-tower strategy optimises the same multinomial (softmax over the whole domain)
denoising objective: a user's history goes in with items dropped at random, and the model must
put probability mass on all the user's items. Hiding the whole target history for a share of the
users in each batch teaches the tower the cold-start path (source history only) that serving
uses for new users.

| strategy          | what it does |
|-------------------|--------------|
| target_only       | target domain alone, no source input (baseline) |
| pretrain_finetune | pre-train on source, fine-tune on target (optional frozen groups, smaller LR for transferred parts) |
| joint             | CMF-style shared user tower, L = L_source + lambda * L_target every step |
| emcdr             | source model + target-only model + MLP mapping fitted on overlapping users (embedding distance) |
| ptupcdr           | same, with a personalised meta-network bridge trained on the target task |

Model selection is early stopping on validation NDCG@10; the test split is never looked at here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainer.batching import pad_histories
from trainer.config import ExperimentConfig
from trainer.distributed import DistributedContext
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.models import BridgedModel, CrossDomainModel, HistoryTowerModel
from trainer.progress import Progress
from trainer.splits import CrossDomainSplit

TOWER_STRATEGIES = ("target_only", "pretrain_finetune", "joint")
BRIDGE_STRATEGIES = ("emcdr", "ptupcdr")
MODEL_STRATEGIES = TOWER_STRATEGIES + BRIDGE_STRATEGIES
Batch = list[torch.Tensor]


@dataclass
class Shard:
    """This rank's rows of a batch; ``weight`` rescales its mean loss so that DDP's gradient
    average equals the mean over the whole batch even when the rows do not split evenly."""

    tensors: Batch
    weight: float = 1.0


def resolve_device(name: str, context: DistributedContext | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", context.local_rank if context else 0)
        return torch.device("cpu")
    return torch.device(name)


@dataclass
class TrainResult:
    strategy: str
    seed: int
    model: CrossDomainModel
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
        self.tensors = [
            torch.from_numpy(a).to(device)
            for a in (src_items, src_mask, tgt_items, tgt_mask, labels)
        ]

    def subset(self, rows: torch.Tensor) -> DomainBatches:
        clone = copy.copy(self)
        clone.tensors = [t[rows] for t in self.tensors]
        clone.size = len(rows)
        return clone

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(self.size, generator=generator)
        for start in range(0, self.size, batch_size):
            rows = order[start : start + batch_size].to(self.tensors[0].device)
            yield [t[rows] for t in self.tensors]

    def cycle(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            yield from self.batches(batch_size, generator)


def multinomial_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over users of the negative log-likelihood of their items under a softmax over the domain."""
    logits = logits.clone()
    logits[:, 0] = -1e9  # padding is never an answer
    log_probs = torch.log_softmax(logits, dim=1)
    per_user = -(log_probs * labels).sum(1) / labels.sum(1).clamp(min=1.0)
    return per_user.sum() / max(len(per_user), 1)  # an empty shard gives 0, still part of the graph


class TowerObjective(nn.Module):
    """One forward = the training loss, so DistributedDataParallel can sync gradients."""

    def __init__(self, model: HistoryTowerModel, joint_lambda: float) -> None:
        super().__init__()
        self.model = model
        self.joint_lambda = joint_lambda

    def forward(self, target: Shard | None, source: Shard | None) -> torch.Tensor:
        loss = torch.zeros((), device=next(self.model.parameters()).device)
        if target is not None:
            src_items, src_mask, tgt_items, tgt_mask, labels = target.tensors
            user = self.model.user_representation(src_items, src_mask, tgt_items, tgt_mask)
            target_loss = multinomial_loss(self.model.target_logits(user), labels) * target.weight
            loss = loss + (self.joint_lambda * target_loss if source is not None else target_loss)
        if source is not None:
            src_items, src_mask, tgt_items, tgt_mask, labels = source.tensors
            user = self.model.user_representation(src_items, src_mask, tgt_items, tgt_mask)
            loss = loss + multinomial_loss(self.model.source_logits(user), labels) * source.weight
        return loss


class BridgeObjective(nn.Module):
    """EMCDR: match the target model's user vector; PTUPCDR: the target task itself."""

    def __init__(self, model: BridgedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, shard: Shard) -> torch.Tensor:
        src_items, src_mask, tgt_items, tgt_mask, labels = shard.tensors
        bridged = self.model.bridged_user(src_items, src_mask, tgt_items)
        if self.model.bridge_kind == "emcdr":
            with torch.no_grad():
                target_user = self.model.target_model.user_representation(
                    src_items, torch.zeros_like(src_mask), tgt_items, tgt_mask
                )
            return ((bridged - target_user) ** 2).sum(1).sum() / max(len(bridged), 1) * shard.weight
        return multinomial_loss(self.model.target_logits(bridged), labels) * shard.weight


class Trainer:
    """Trains one strategy for one seed on a split; see the module docstring."""

    def __init__(
        self,
        config: ExperimentConfig,
        split: CrossDomainSplit,
        show_progress: bool = True,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.split = split
        self.context = context or DistributedContext()
        self.device = resolve_device(config.train.device, self.context)
        self.show_progress = show_progress and self.context.is_main
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        m = config.model
        self.target_batches = DomainBatches(
            sorted(split.train_target),
            split,
            "target",
            m.max_source_history,
            m.max_target_history,
            self.device,
        )
        self.source_batches = DomainBatches(
            sorted(split.train_source),
            split,
            "source",
            m.max_source_history,
            m.max_target_history,
            self.device,
        )
        self.text = self._text_embeddings() if m.text_fusion else None

    def _text_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        from trainer.text_features import embed_titles

        started = time.perf_counter()
        source = torch.from_numpy(embed_titles(self.split.source_titles))
        target = torch.from_numpy(embed_titles(self.split.target_titles))
        if self.context.is_main:
            print(
                f"  embedded {len(source) + len(target)} item titles with all-MiniLM-L6-v2 in {time.perf_counter() - started:.1f}s",
                flush=True,
            )
        return source, target

    def new_model(self) -> HistoryTowerModel:
        model = HistoryTowerModel(
            len(self.split.source_vocab), len(self.split.target_vocab), self.config.model
        )
        if self.text is not None:
            model.set_text_embeddings(*self.text)
        return model.to(self.device)

    # -- input corruption (on the whole batch, before sharding: identical on every rank) --------
    def _drop_items(self, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keep = (
            torch.rand(mask.shape, generator=generator).to(mask.device)
            >= self.config.train.history_dropout
        )
        return mask * keep

    def _drop_users(
        self, mask: torch.Tensor, rate: float, generator: torch.Generator
    ) -> torch.Tensor:
        rows = torch.rand(mask.shape[0], generator=generator).to(mask.device) < rate
        return mask * (~rows).unsqueeze(1)

    def _target_inputs(self, batch: Batch, generator: torch.Generator, use_source: bool) -> Shard:
        src_items, src_mask, tgt_items, tgt_mask, labels = batch
        tgt_mask = self._drop_items(tgt_mask, generator)
        if use_source:
            tgt_mask = self._drop_users(tgt_mask, self.config.train.cold_simulation_rate, generator)
        else:
            src_mask = torch.zeros_like(src_mask)
        return self._shard([src_items, src_mask, tgt_items, tgt_mask, labels])

    def _source_inputs(self, batch: Batch, generator: torch.Generator) -> Shard:
        src_items, src_mask, tgt_items, tgt_mask, labels = batch
        src_mask = self._drop_items(src_mask, generator)
        return self._shard([src_items, src_mask, tgt_items, torch.zeros_like(tgt_mask), labels])

    def _shard(self, batch: Batch) -> Shard:
        rows = self.context.shard(batch)
        return Shard(rows, len(rows[0]) * self.context.world_size / len(batch[0]))

    # -- strategies -----------------------------------------------------------------------------
    def fit(self, strategy: str, seed: int) -> TrainResult:
        if strategy not in MODEL_STRATEGIES:
            raise ValueError(
                f"unknown strategy '{strategy}'; model strategies are {list(MODEL_STRATEGIES)}"
            )
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        if strategy in BRIDGE_STRATEGIES:
            result = self._fit_bridge(strategy, seed, generator)
        else:
            result = self._fit_tower(strategy, seed, generator)
        result.seconds = time.perf_counter() - started
        return result

    def _fit_tower(self, strategy: str, seed: int, generator: torch.Generator) -> TrainResult:
        t = self.config.train
        model = self.new_model()
        use_source = strategy != "target_only"
        if strategy == "pretrain_finetune":
            self.pretrain(model, generator, seed)
            optimizer = self._finetune_optimizer(model)
        else:
            optimizer = torch.optim.Adam(
                model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
            )
        objective = self.context.wrap(TowerObjective(model, t.joint_lambda), self.device)
        sources = self.source_batches.cycle(t.batch_size, generator)

        def epoch() -> float:
            losses = []
            for batch in self.target_batches.batches(t.batch_size, generator):
                target = self._target_inputs(batch, generator, use_source)
                source = (
                    self._source_inputs(next(sources), generator) if strategy == "joint" else None
                )
                optimizer.zero_grad()
                loss = objective(target, source)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        return self._early_stopping_loop(
            strategy, seed, model, epoch, t.epochs, lambda: self.validate(model, use_source)
        )

    def _fit_bridge(self, strategy: str, seed: int, generator: torch.Generator) -> TrainResult:
        t = self.config.train
        source_model = self.new_model()
        self.pretrain(source_model, generator, seed)
        target_model = self._fit_tower("target_only", seed, generator).model
        model = BridgedModel(source_model, target_model, strategy, self.config.model.hidden_dim).to(
            self.device
        )
        for part in (model.source_model, model.target_model):
            part.eval()
            part.requires_grad_(False)
        # The bridge learns from users present in both domains' training data.
        has_source = (self.target_batches.tensors[1].sum(1) > 0).nonzero().squeeze(1)
        overlap = self.target_batches.subset(has_source)
        optimizer = torch.optim.Adam(
            model.bridge.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        objective = self.context.wrap(BridgeObjective(model), self.device)

        def epoch() -> float:
            model.bridge.train()
            losses = []
            for batch in overlap.batches(t.batch_size, generator):
                src_items, src_mask, tgt_items, tgt_mask, labels = batch
                src_mask = (
                    self._drop_items(src_mask, generator) if strategy == "ptupcdr" else src_mask
                )
                optimizer.zero_grad()
                loss = objective(self._shard([src_items, src_mask, tgt_items, tgt_mask, labels]))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        return self._early_stopping_loop(
            strategy, seed, model, epoch, t.bridge_epochs, lambda: self.validate(model)
        )

    def _early_stopping_loop(
        self,
        strategy: str,
        seed: int,
        model: CrossDomainModel,
        run_epoch: Callable[[], float],
        epochs: int,
        validate: Callable[[], dict[str, dict[str, float]]],
    ) -> TrainResult:
        t = self.config.train
        best: dict = {
            "score": -math.inf,
            "epoch": 0,
            "state": copy.deepcopy(model.state_dict()),
            "valid": {},
        }
        curve: list[dict[str, float]] = []
        waited = 0
        bar = Progress(range(1, epochs + 1), f"{strategy} seed={seed}", self.show_progress)
        for epoch in bar:
            model.train()
            if isinstance(model, BridgedModel):
                model.source_model.eval()
                model.target_model.eval()
            point: dict[str, float] = {"epoch": epoch, "loss": run_epoch()}
            if epoch % t.eval_every == 0 or epoch == epochs:
                valid = validate()
                point["valid_ndcg@10"] = pooled_ndcg(valid, self.split.valid)
                if point["valid_ndcg@10"] > best["score"]:
                    best = {
                        "score": point["valid_ndcg@10"],
                        "epoch": epoch,
                        "state": copy.deepcopy(model.state_dict()),
                        "valid": valid,
                    }
                    waited = 0
                else:
                    waited += 1
                bar.set_postfix(
                    loss=f"{point['loss']:.3f}", valid_ndcg=f"{point['valid_ndcg@10']:.4f}"
                )
            curve.append(point)
            if waited >= t.patience:
                break
        model.load_state_dict(best["state"])
        model.eval()
        return TrainResult(strategy, seed, model, best["epoch"], best["valid"], curve)

    def pretrain(self, model: HistoryTowerModel, generator: torch.Generator, seed: int) -> None:
        """Source-domain pre-training of the shared parts (source item vectors + tower)."""
        t = self.config.train
        optimizer = torch.optim.Adam(
            model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
        objective = self.context.wrap(TowerObjective(model, t.joint_lambda), self.device)
        bar = Progress(range(1, t.pretrain_epochs + 1), f"pretrain seed={seed}", self.show_progress)
        for _ in bar:
            model.train()
            losses = []
            for batch in self.source_batches.batches(t.batch_size, generator):
                optimizer.zero_grad()
                loss = objective(None, self._source_inputs(batch, generator))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")

    def _finetune_optimizer(self, model: HistoryTowerModel) -> torch.optim.Optimizer:
        t = self.config.train
        unknown = set(t.freeze) - {"source_embeddings", "tower"}
        if unknown:
            raise ValueError(
                f"train.freeze: unknown group(s) {sorted(unknown)}; choose from source_embeddings, tower"
            )
        param_groups = []
        for name, params in model.parameter_groups().items():
            if name in t.freeze:
                for p in params:
                    p.requires_grad_(False)
                continue
            scale = t.transferred_lr_scale if name in ("source_embeddings", "tower") else 1.0
            param_groups.append({"params": params, "lr": t.learning_rate * scale})
        return torch.optim.Adam(param_groups, weight_decay=t.weight_decay)

    @torch.no_grad()
    def validate(
        self, model: CrossDomainModel, use_source: bool = True
    ) -> dict[str, dict[str, float]]:
        m = self.config.model
        return {
            name: evaluate_model(
                model, evalset, m.max_source_history, m.max_target_history, self.device, use_source
            )
            for name, evalset in self.split.valid.items()
        }
