"""The training machinery every strategy shares: data index, objectives, loops, selection.

Every history-tower strategy optimises the same multinomial denoising objective: a user's history
goes in with items dropped at random, and the model must put probability mass on all the user's
items (softmax over the catalogue, or a sampled softmax with logQ correction for large ones, see
trainer/sampled_softmax.py). Hiding the whole target history for a share of the users in each
batch teaches the tower the cold-start path (source history only) that serving uses for new users.
What each strategy does with these parts lives in ``trainer/strategies/`` (one module each).

Batches are streamed from an index of interactions (trainer/interaction_index.py), so training
memory is O(interactions + parameters). Model selection is early stopping on validation NDCG@10;
the test split is never looked at here.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainer.config import ExperimentConfig
from trainer.distributed import DistributedContext
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.future_objective import future_cut, merge_labels, session_cuts
from trainer.interaction_index import DomainIndex, RowBatch
from trainer.item_features import (
    VALID,
    RecencyTable,
    cutoff_time,
    first_seen_times,
    refresh_item_features,
    window_duration,
)
from trainer.models import BridgedModel, CrossDomainModel, HistoryTowerModel, SequenceModel
from trainer.optimizers import CompositeOptimizer, build_optimizer, set_sparse
from trainer.progress import Progress
from trainer.sampled_softmax import (
    PADDING_LOGIT,
    Candidates,
    CandidateSampler,
    candidate_logits,
    multinomial_loss,
)
from trainer.splits import CrossDomainSplit

__all__ = ["Shard", "TrainResult", "Trainer", "multinomial_loss", "resolve_device"]


@dataclass
class Shard:
    """This rank's rows of a batch; ``weight`` rescales its mean loss so that DDP's gradient
    average equals the mean over the whole batch even when the rows do not split evenly.
    ``tensors`` = src_items, src_mask, tgt_items, tgt_mask, labels ([rows, candidates]), then for
    a sampled softmax each row's own positives and logit offsets (Candidates.row_tensors);
    ``items`` are the shared negatives (None = every item), the same on all ranks."""

    tensors: list[torch.Tensor]
    weight: float = 1.0
    items: torch.Tensor | None = None
    # [rows, target items]: each row's recent popularity at its own moment (None = the model's
    # cutoff vector), and [rows] per-example loss weights (None = all 1); see TrainConfig.
    recent: torch.Tensor | None = None
    row_weights: torch.Tensor | None = None
    # [rows, target items] 1.0 where an item had no interaction yet at the row's moment
    # (train.mask_unreleased): left out of the row's softmax unless it is a label.
    unreleased: torch.Tensor | None = None

    @property
    def candidates(self) -> Candidates:
        if self.items is None:
            return Candidates(None, None, None, self.tensors[4])
        return Candidates(self.items, self.tensors[5], self.tensors[6], self.tensors[4])


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


class TowerObjective(nn.Module):
    """One forward = the training loss, so DistributedDataParallel can sync gradients."""

    def __init__(self, model: HistoryTowerModel, joint_lambda: float) -> None:
        super().__init__()
        self.model = model
        self.joint_lambda = joint_lambda

    def forward(self, target: Shard | None, source: Shard | None) -> torch.Tensor:
        loss = torch.zeros((), device=next(self.model.parameters()).device)
        if target is not None:
            user = self.model.user_representation(*target.tensors[:4])
            logits_of, scores_of = self.model.target_logits, self.model.target_scores
            if target.recent is not None:  # recent popularity at each example's own moment
                logits_of = functools.partial(logits_of, recent=target.recent)
                scores_of = functools.partial(scores_of, recent=target.recent)
            logits = candidate_logits(logits_of, scores_of, user, target.candidates)
            labels = target.tensors[4]
            if target.unreleased is not None:
                logits = mask_unreleased(logits, labels, target.unreleased, target.candidates)
            target_loss = multinomial_loss(logits, labels, target.row_weights) * target.weight
            loss = loss + (self.joint_lambda * target_loss if source is not None else target_loss)
        if source is not None:
            user = self.model.user_representation(*source.tensors[:4])
            logits = candidate_logits(
                self.model.source_logits, self.model.source_scores, user, source.candidates
            )
            loss = loss + multinomial_loss(logits, source.tensors[4]) * source.weight
        return loss


def mask_unreleased(
    logits: torch.Tensor, labels: torch.Tensor, unreleased: torch.Tensor, candidates: Candidates
) -> torch.Tensor:
    """Items that did not exist yet at a row's moment are no negatives of it: an item is not
    "not chosen" before anyone could choose it (otherwise the model learns a low score for every
    new item from all the examples before its release). Labels are never masked."""
    if candidates.items is None:
        hidden = unreleased
    else:  # [own positives | shared negatives]: only shared negatives can be unreleased
        own = torch.zeros_like(logits[:, : logits.shape[1] - len(candidates.items)])
        hidden = torch.cat([own, unreleased[:, candidates.items]], dim=1)
    return logits.masked_fill((hidden > 0) & (labels <= 0), PADDING_LOGIT)


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
        logits = candidate_logits(
            self.model.target_logits, self.model.target_scores, bridged, shard.candidates
        )
        return multinomial_loss(logits, labels) * shard.weight


@dataclass
class PretrainedSource:
    """A source pre-training and the random streams right after it, so a strategy that reuses it
    continues exactly as if it had pre-trained itself."""

    state: dict[str, torch.Tensor]
    generator_state: torch.Tensor
    torch_state: torch.Tensor


def source_item_domain(split: CrossDomainSplit) -> np.ndarray | None:
    """Per source-vocab index, which source domain (1..N) the item belongs to, where the split
    provides it (several source domains); None = one source domain."""
    for holder in (split, split.source_vocab):
        value = getattr(holder, "source_item_domain", None)
        if value is not None:
            return np.asarray(value, dtype=np.int64)
    return None


class SeedWork:
    """Work that is the same for every strategy of one seed: trained once, reused."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.pretrained: PretrainedSource | None = None
        self.target_only: TrainResult | None = None

    def for_seed(self, seed: int) -> SeedWork:
        if seed != self.seed:  # one seed at a time: never holds more than two models
            self.seed, self.pretrained, self.target_only = seed, None, None
        return self


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
        m, t = config.model, config.train
        source, target = split.train_source, split.train_target
        limits = (m.max_source_history, m.max_target_history, self.device)
        timed = self._uses_moments() and bool(split.train_target_times)
        self.target_batches = DomainIndex(
            sorted(target),
            source,
            target,
            "target",
            *limits,
            target_times=split.train_target_times if timed else None,
        )
        self._set_up_moments(timed)
        self.source_batches = DomainIndex(sorted(source), source, target, "source", *limits)
        self.target_sampler = CandidateSampler(
            self.target_batches.target.item_counts(len(split.target_vocab)),
            t.num_negatives,
            t.negative_power,
            self.device,
        )
        self.source_sampler = CandidateSampler(
            self.source_batches.source.item_counts(len(split.source_vocab)),
            t.num_negatives,
            t.negative_power,
            self.device,
        )
        # Lazy (sparse) updates of the item tables once the softmax is sampled: a dense Adam
        # step over every item row per batch would make an epoch cost users x items. CPU only:
        # NCCL cannot all-reduce sparse gradients, and a GPU step over the tables is cheap.
        sampled = not (self.target_sampler.full and self.source_sampler.full)
        self.sparse_gradients = sampled and self.device.type == "cpu"
        if self.sparse_gradients and t.weight_decay > 0:
            raise ValueError(
                "train.weight_decay must be 0 with a sampled softmax on CPU (lazy sparse Adam "
                f"updates); or raise train.num_negatives above the catalogue ({t.num_negatives})"
            )
        self.shared = SeedWork()
        self.text = self._text_embeddings() if m.text_fusion else None
        self.content_report = None  # trainer/item_vectors.py ContentReport, with content_fusion
        self.content = self._content_vectors() if m.content_fusion else None
        # Several merged sources: which source each source item came from (1..N).
        self.num_source_domains = len(split.source_domain_names) if m.source_domain_embedding else 0

    def _uses_moments(self) -> bool:
        """Whether target examples need their moment (the time of their labels): recent
        popularity read at it, recency-weighted labels, session cuts, unreleased-item masks."""
        m, t = self.config.model, self.config.train
        recency = m.recent_popularity_window > 0 and t.recent_popularity_at == "label"
        return recency or t.recency_half_life > 0 or t.future_cut == "session" or t.mask_unreleased

    def _set_up_moments(self, timed: bool) -> None:
        """The per-moment item features of the target examples (all None / 0 when off)."""
        m, t, split = self.config.model, self.config.train, self.split
        share = m.recent_popularity_window if t.recent_popularity_at == "label" else 0.0
        self.recency = (
            RecencyTable.build(split, share, t.recency_steps) if timed and share else None
        )
        # When each target item was first seen in training (inf = never): train.mask_unreleased.
        self.first_seen = first_seen_times(split) if timed and t.mask_unreleased else None
        # Recency-weighted labels: the half-life in seconds, ages counted back from the cutoff.
        self.recency_cutoff, self.half_life = 0.0, 0.0
        if timed and t.recency_half_life > 0:
            self.recency_cutoff = cutoff_time(split, VALID)
            self.half_life = max(window_duration(split, t.recency_half_life), 1e-9)

    def _content_vectors(self) -> tuple[torch.Tensor, ...]:
        """Precomputed item vectors (data.item_vectors), validated and aligned with both
        vocabularies; the report says how many items got one."""
        from trainer.item_vectors import content_for_split

        source, target, report = content_for_split(
            self.config.data, self.split.source_vocab.ids, self.split.target_vocab.ids
        )
        self.content_report = report
        if self.context.is_main:
            print("\n".join(report.lines()), flush=True)
        return tuple(
            torch.from_numpy(a)
            for a in (source.vectors, source.missing, target.vectors, target.missing)
        )

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

    def new_model(self) -> HistoryTowerModel | SequenceModel:
        """A fresh model of the configured family (``model.family``)."""
        sizes = (len(self.split.source_vocab), len(self.split.target_vocab), self.config.model)
        if self.config.model.family == "sequence":
            model = SequenceModel(*sizes, source_item_domain=source_item_domain(self.split))
        else:
            model = HistoryTowerModel(
                *sizes,
                content_dim=0 if self.content is None else int(self.content[0].shape[1]),
                num_source_domains=self.num_source_domains,
            )
            if self.content is not None:
                model.set_content_vectors(*self.content)
            if self.num_source_domains:
                model.set_source_item_domain(torch.from_numpy(self.split.item_domains()))
        # Validation scores with recent popularity at the validation cutoff (no-op when off).
        refresh_item_features(
            model, self.split, self.config.model.recent_popularity_window, "valid"
        )
        if self.text is not None:
            model.set_text_embeddings(*self.text)
        set_sparse(model, self.sparse_gradients)
        return model.to(self.device)

    def optimizer(self, model: nn.Module, groups: list[dict] | None = None) -> CompositeOptimizer:
        """Adam over ``groups`` (default: every parameter at the configured learning rate)."""
        t = self.config.train
        groups = groups or [{"params": list(model.parameters()), "lr": t.learning_rate}]
        return build_optimizer(model, groups, t.weight_decay)

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

    def target_inputs(self, batch: RowBatch, generator: torch.Generator, use_source: bool) -> Shard:
        t = self.config.train
        if t.objective == "future":
            # A share of the batches keeps the denoising task (every item a label), which is
            # what cold-start evaluation asks (all of a user's target items).
            mixed = t.denoise_share > 0
            if not mixed or float(torch.rand(1, generator=generator)) >= t.denoise_share:
                return self._future_target_inputs(batch, generator, use_source)
        src_mask, tgt_mask = batch.src_mask, self._drop_items(batch.tgt_mask, generator)
        if use_source:
            tgt_mask = self._drop_users(tgt_mask, self.config.train.cold_simulation_rate, generator)
        else:
            src_mask = torch.zeros_like(src_mask)
        inputs = [batch.src_items, src_mask, batch.tgt_items, tgt_mask]
        # Every item is a label: the example's moment is its earliest one.
        moments = batch.tgt_first_time
        return self._shard(inputs, self.target_sampler, batch, generator, moments, tgt_mask)

    def _future_target_inputs(
        self, batch: RowBatch, generator: torch.Generator, use_source: bool
    ) -> Shard:
        """The "future" objective (trainer/future_objective.py): the target history before a
        random cut goes in, the next items are the labels. Cold-simulated rows see no target
        history and keep all their target items as labels, as cold-start evaluation does."""
        t = self.config.train
        cuts = None
        if t.future_cut == "session" and batch.tgt_times is not None:
            cuts = session_cuts(batch.tgt_times, batch.tgt_mask, t.session_gap, generator)
        cut_mask, rows, items = future_cut(
            batch.tgt_items, batch.tgt_mask, t.future_window, generator, cuts=cuts
        )
        moments = None
        if batch.tgt_times is not None:  # the moment of the first label: the item at the cut
            cut = cut_mask.sum(dim=1).long().cpu().numpy()
            cut = np.minimum(cut, batch.tgt_times.shape[1] - 1)
            moments = batch.tgt_times[np.arange(batch.size), cut]
        tgt_mask = self._drop_items(cut_mask, generator)
        src_mask = batch.src_mask
        if use_source:
            cold = torch.rand(batch.size, generator=generator) < t.cold_simulation_rate
            tgt_mask = tgt_mask * (~cold).to(tgt_mask.device).unsqueeze(1)
            rows, items = merge_labels(
                ~cold.numpy(), (rows, items), (batch.label_rows, batch.label_items)
            )
            if moments is not None:  # cold rows: every target item is a label
                moments = np.where(cold.numpy(), batch.tgt_first_time, moments)
        else:
            src_mask = torch.zeros_like(src_mask)
        batch = dataclasses.replace(batch, label_rows=rows, label_items=items)
        inputs = [batch.src_items, src_mask, batch.tgt_items, tgt_mask]
        return self._shard(inputs, self.target_sampler, batch, generator, moments, tgt_mask)

    def source_inputs(self, batch: RowBatch, generator: torch.Generator) -> Shard:
        if self.config.train.objective == "future":
            t = self.config.train
            cut_mask, rows, items = future_cut(
                batch.src_items,
                batch.src_mask,
                t.future_window,
                generator,
                t.future_cut == "recent",
            )
            src_mask = self._drop_items(cut_mask, generator)
            batch = dataclasses.replace(batch, label_rows=rows, label_items=items)
            inputs = [batch.src_items, src_mask, batch.tgt_items, torch.zeros_like(batch.tgt_mask)]
            return self._shard(inputs, self.source_sampler, batch, generator)
        src_mask = self._drop_items(batch.src_mask, generator)
        inputs = [batch.src_items, src_mask, batch.tgt_items, torch.zeros_like(batch.tgt_mask)]
        return self._shard(inputs, self.source_sampler, batch, generator)

    def bridge_inputs(self, batch: RowBatch, generator: torch.Generator, drop: bool) -> Shard:
        src_mask = self._drop_items(batch.src_mask, generator) if drop else batch.src_mask
        inputs = [batch.src_items, src_mask, batch.tgt_items, batch.tgt_mask]
        return self._shard(inputs, self.target_sampler, batch, generator)

    def _shard(
        self,
        inputs: list[torch.Tensor],
        sampler: CandidateSampler,
        batch: RowBatch,
        generator: torch.Generator,
        moments: np.ndarray | None = None,
        target_input: torch.Tensor | None = None,
    ) -> Shard:
        """This rank's rows; ``moments`` ([B] times of the examples' labels, target batches with
        times) add each row's recent popularity and recency weight where configured.
        ``target_input``: the target mask fed to the model; rows without a target input are
        cold-start examples (see ``train.cold_recency_at``)."""
        candidates = sampler(batch.label_rows, batch.label_items, batch.size, generator)
        extras: list[torch.Tensor] = []
        has_recent = moments is not None and self.recency is not None
        has_weights = moments is not None and self.half_life > 0
        if has_recent:
            recent = self.recency.at(moments)
            if target_input is not None and self.config.train.cold_recency_at == "cutoff":
                cold = (target_input.sum(dim=1) == 0).cpu().numpy()
                if cold.any():
                    mask = batch.tgt_mask.cpu().numpy()[cold]
                    recent[cold] = self.recency.cold_rows(
                        batch.tgt_items.cpu().numpy()[cold], mask, batch.tgt_times[cold]
                    )
            extras.append(torch.from_numpy(recent).to(self.device))
        if has_weights:
            age = np.maximum(self.recency_cutoff - moments, 0.0)
            weights = 0.5 ** (age / self.half_life)
            weights = weights / max(float(weights.mean()), 1e-12)  # the loss keeps its scale
            extras.append(torch.from_numpy(weights.astype(np.float32)).to(self.device))
        has_unreleased = moments is not None and self.first_seen is not None
        if has_unreleased:
            unreleased = self.first_seen[None, :] >= moments[:, None]
            extras.append(torch.from_numpy(unreleased.astype(np.float32)).to(self.device))
        rows = self.context.shard([*inputs, *candidates.row_tensors(), *extras])
        if extras:
            rows, extras = rows[: len(rows) - len(extras)], rows[len(rows) - len(extras) :]
        weight = len(rows[0]) * self.context.world_size / batch.size
        recent = extras.pop(0) if has_recent else None
        row_weights = extras.pop(0) if has_weights else None
        hidden = extras.pop(0) if has_unreleased else None
        return Shard(rows, weight, candidates.items, recent, row_weights, hidden)

    # -- strategies -----------------------------------------------------------------------------
    def fit(self, strategy: str, seed: int) -> TrainResult:
        """Trains ``strategy`` (a name from trainer.strategies) for one seed."""
        from trainer.strategies import get_strategy

        runner = get_strategy(strategy)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        result = runner.fit(self, seed, generator)
        set_sparse(result.model, False)
        result.seconds = time.perf_counter() - started
        if strategy == "target_only":
            self.shared.for_seed(seed).target_only = result
        return result

    def train_tower(
        self,
        name: str,
        seed: int,
        model: HistoryTowerModel,
        optimizer: CompositeOptimizer,
        generator: torch.Generator,
        use_source: bool,
        with_source_loss: bool = False,
    ) -> TrainResult:
        """The target-domain loop (plus the source loss every step when ``with_source_loss``)."""
        t = self.config.train
        objective = self.context.wrap(TowerObjective(model, t.joint_lambda), self.device)
        sources = self.source_batches.cycle(t.batch_size, generator)

        def epoch() -> float:
            losses = []
            for batch in self.target_batches.batches(t.batch_size, generator):
                target = self.target_inputs(batch, generator, use_source)
                source = self.source_inputs(next(sources), generator) if with_source_loss else None
                optimizer.zero_grad()
                loss = objective(target, source)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        return self._early_stopping_loop(
            name, seed, model, epoch, t.epochs, lambda: self.validate(model, use_source)
        )

    def pretrained_source(self, seed: int) -> tuple[HistoryTowerModel, torch.Generator]:
        """A model holding the seed's source pre-training, and the generator that continues after
        it; trained on first use, then reused by every strategy of the seed."""
        shared = self.shared.for_seed(seed)
        if shared.pretrained is None:
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            model = self.new_model()
            self.pretrain(model, generator, seed)
            shared.pretrained = PretrainedSource(
                copy.deepcopy(model.state_dict()), generator.get_state(), torch.get_rng_state()
            )
        model = self.new_model()
        model.load_state_dict(shared.pretrained.state)
        generator = torch.Generator()
        generator.set_state(shared.pretrained.generator_state)
        torch.set_rng_state(shared.pretrained.torch_state)
        return model, generator

    def target_only(self, seed: int) -> TrainResult:
        """The seed's target-only model: trained on first use, then reused (EMCDR, PTUPCDR)."""
        shared = self.shared.for_seed(seed)
        if shared.target_only is None:
            rng = torch.get_rng_state()
            shared.target_only = self.fit("target_only", seed)
            torch.set_rng_state(rng)
        return shared.target_only

    def train_bridge(
        self, name: str, seed: int, model: BridgedModel, generator: torch.Generator
    ) -> TrainResult:
        """Fits the bridge (only) on the users present in both domains' training data."""
        t = self.config.train
        for part in (model.source_model, model.target_model):
            part.eval()
            part.requires_grad_(False)
        overlap = self.target_batches.with_source_history()
        optimizer = self.optimizer(
            model, [{"params": list(model.bridge.parameters()), "lr": t.learning_rate}]
        )
        objective = self.context.wrap(BridgeObjective(model), self.device)
        drop = model.bridge_kind == "ptupcdr"

        def epoch() -> float:
            model.bridge.train()
            losses = []
            for batch in overlap.batches(t.batch_size, generator):
                optimizer.zero_grad()
                loss = objective(self.bridge_inputs(batch, generator, drop))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        return self._early_stopping_loop(
            name, seed, model, epoch, t.bridge_epochs, lambda: self.validate(model)
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
            postfix = {"loss": f"{point['loss']:.3f}"}
            if epoch % t.eval_every == 0 or epoch == epochs:
                valid = validate()
                point["valid_ndcg@10"] = pooled_ndcg(valid, self.split.valid)
                for group, metrics in valid.items():  # per group too: where a change helps
                    point[f"valid_{group}_ndcg@10"] = metrics.get("ndcg@10", 0.0)
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
                postfix["valid_ndcg"] = f"{point['valid_ndcg@10']:.4f}"
            else:
                # Not validated this epoch: say which epoch the shown score is from, never
                # repeat it as if it were new.
                postfix["valid_ndcg"] = (
                    f"{best['score']:.4f}@best{best['epoch']}" if best["epoch"] else "-"
                )
            bar.set_postfix(**postfix)
            curve.append(point)
            if waited >= t.patience:
                break
        model.load_state_dict(best["state"])
        model.eval()
        return TrainResult(strategy, seed, model, best["epoch"], best["valid"], curve)

    def pretrain(self, model: HistoryTowerModel, generator: torch.Generator, seed: int) -> None:
        """Source-domain pre-training of the shared parts (source item vectors + tower)."""
        t = self.config.train
        optimizer = self.optimizer(model)
        objective = self.context.wrap(TowerObjective(model, t.joint_lambda), self.device)
        bar = Progress(range(1, t.pretrain_epochs + 1), f"pretrain seed={seed}", self.show_progress)
        for _ in bar:
            model.train()
            losses = []
            for batch in self.source_batches.batches(t.batch_size, generator):
                optimizer.zero_grad()
                loss = objective(None, self.source_inputs(batch, generator))
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")

    def finetune_optimizer(self, model: HistoryTowerModel) -> CompositeOptimizer:
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
        return self.optimizer(model, param_groups)

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
