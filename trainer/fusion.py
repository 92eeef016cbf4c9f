"""Score fusion: a trained model blended with recent popularity, item-KNN and popularity, per user
group, with weights fitted on validation only, shipped inside the exported graph.

Why: on a global time split recent popularity beats every model on warm users, and on sparse
(review-like) logs item-KNN beats transfer on cold-start users. A served model that is a
validation-fitted blend is never worse *on validation* than the model alone (the model alone is
on the grid) and takes what the simple signals know.

How, for one trained model:

1. Components at the **validation cutoff** (trainer/item_features.py's rule: never a test-window
   interaction): log1p(recent popularity) with the window the recent-popularity baseline picks
   on validation (``select_on_validation``, the baseline's own code), item-KNN top-k tables
   from the training histories (the item-KNN baseline's cosine), log1p(popularity).
2. Per group (warm = the user has a target history, cold = none), on that group's validation
   users: each component's **scale** = the mean over users of its standard deviation over the
   catalogue (a scalar, so serving needs no per-request normalisation over the whole catalogue),
   then non-negative weights on the simplex (model + components = 1, ``fusion.grid_step``)
   maximising validation NDCG@10. No gain over the model alone -> the model alone.
3. The same components at the **test cutoff** (everything known before the test window: the
   events the served feature store starts from) go into the fused model that is tested once and
   exported; the weights / scales stay those fitted on validation.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from trainer.baselines.item_knn import cosine_cooccurrence, keep_neighbours
from trainer.baselines.popularity import RecentPopularity
from trainer.baselines.runner import select_on_validation
from trainer.batching import pad_histories
from trainer.config import ExperimentConfig
from trainer.evaluation import _chunk_metrics, evaluate_model
from trainer.item_features import TEST, VALID, recent_popularity, refresh_item_features
from trainer.models.base import CrossDomainModel
from trainer.models.fused import COLD, WARM, FusedModel
from trainer.splits import SOURCE, TARGET, CrossDomainSplit, EvalSet

GROUPS = {"warm": WARM, "cold": COLD}
ITEM_FEATURES = ("recent_popularity", "popularity")  # per-item vectors (the rest: item_knn)
# Users per chunk when fitting: bounds memory at chunk x catalogue x components floats.
FIT_CELLS = 8_000_000


@dataclass
class Components:
    """What the blend needs besides the model, as known at one cutoff."""

    phase: str
    item_features: dict[str, np.ndarray]  # name -> float32 [target items]
    target_neighbours: torch.Tensor  # [target items, k] int64 (target -> target)
    target_weights: torch.Tensor  # [target items, k] float32
    source_neighbours: torch.Tensor  # [source items, k] int64 (source -> target)
    source_weights: torch.Tensor


@dataclass
class GroupFit:
    """One user group's blend: weights on the simplex, the scales they divide, and what the
    blend scored on this group's validation users."""

    weights: dict[str, float]
    scales: dict[str, float]
    valid_ndcg_model: float
    valid_ndcg_fused: float  # in-sample: the weights were picked on these users
    users: int
    # Out-of-sample estimate of the blend on this group's validation users (two-fold
    # cross-fitting, ``cross_fitted_ndcg``): what model selection compares with other rows,
    # whose validation figures are not fitted to the validation users either.
    valid_ndcg_cross_fitted: float = 0.0

    def coefficient(self, name: str) -> float:
        scale = self.scales.get(name, 0.0)
        return self.weights.get(name, 0.0) / scale if scale > 0 else 0.0


@dataclass
class FusionFit:
    components: list[str]
    recent_window: float | None
    knn_neighbours: int
    grid_points: dict[str, int]
    groups: dict[str, GroupFit] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def helps(self) -> bool:
        """True when some group's blend beats the model alone on validation out of sample
        (cross-fitted), not merely on the users its weights were picked on."""
        return any(
            g.weights.get("model", 1.0) < 1.0 and g.valid_ndcg_cross_fitted > g.valid_ndcg_model
            for g in self.groups.values()
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "helps": self.helps}


@dataclass
class FusionOutcome:
    fit: FusionFit
    model: FusedModel  # components at the test cutoff: what is tested and exported
    # The fused model's validation metrics; ndcg@10 is the cross-fitted estimate (in-sample
    # figure under ndcg@10_in_sample), the other metrics are in-sample for the weights.
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]


def simplex_grid(parts: int, step: float) -> np.ndarray:
    """[points, parts] non-negative weights summing to 1 in steps of ``step``; row 0 is
    (1, 0, ..., 0): the model alone, which wins ties."""
    n = max(1, int(round(1.0 / step)))
    rows = [
        c for c in itertools.product(range(n + 1), repeat=parts) if sum(c) == n
    ]  # small: parts <= 4
    rows.sort(key=lambda c: (-c[0], c))
    return np.asarray(rows, dtype=np.float64) / n


def top_k_tables(sim: torch.Tensor, k: int, drop_diagonal: bool) -> tuple[torch.Tensor, ...]:
    """Sparse [rows, target items] similarities -> ([rows, k] neighbour indices, [rows, k]
    weights): each row's k largest entries; unused slots point at padding (0) with weight 0."""
    kept = keep_neighbours(sim, k, drop_diagonal=drop_diagonal)  # coalesced: sorted by row
    (rows, cols), values = kept.indices().numpy(), kept.values().numpy()
    slot = np.arange(len(rows)) - np.searchsorted(rows, rows)
    neighbours = np.zeros((sim.shape[0], k), dtype=np.int64)
    weights = np.zeros((sim.shape[0], k), dtype=np.float32)
    neighbours[rows, slot], weights[rows, slot] = cols, values
    neighbours[0], weights[0] = 0, 0.0  # padding has no neighbours
    return torch.from_numpy(neighbours), torch.from_numpy(weights)


def histories_at(split: CrossDomainSplit, phase: str) -> tuple[dict, dict]:
    """(source, target) index histories per user known at ``phase``'s cutoff: the training rows
    for validation; for test, every event before the test window (the serving feature store's
    snapshot, ``split.feature_rows``: cold users' target rows are not in it)."""
    if phase == VALID:
        return split.train_source, split.train_target
    vocab = {SOURCE: split.source_vocab.index, TARGET: split.target_vocab.index}
    grouped: dict[str, dict[str, list[int]]] = {SOURCE: {}, TARGET: {}}
    for user, domain, item, _ in split.feature_rows:
        index = vocab[domain].get(item)
        if index:
            grouped[domain].setdefault(user, []).append(index)
    source, target = (
        {u: np.unique(np.asarray(h, dtype=np.int64)) for u, h in grouped[d].items()}
        for d in (SOURCE, TARGET)
    )
    return source, target


def build_components(
    split: CrossDomainSplit, config: ExperimentConfig, recent_window: float | None, phase: str
) -> Components:
    """Every configured component at ``phase``'s cutoff (absent ones are zeros)."""
    names = config.fusion.components
    n_target, n_source = len(split.target_vocab), len(split.source_vocab)
    features: dict[str, np.ndarray] = {}
    if "recent_popularity" in names and recent_window is not None:
        features["recent_popularity"] = recent_popularity(split, recent_window, phase)
    if "popularity" in names:
        events = split.target_events
        known = events["phase"] <= (0 if phase == VALID else 1)
        counts = np.bincount(events["items"][known], minlength=n_target).astype(np.float64)
        counts[0] = 0.0
        features["popularity"] = np.log1p(counts).astype(np.float32)
    k = config.fusion.knn_neighbours if "item_knn" in names else 1
    if "item_knn" in names:
        source, target = histories_at(split, phase)
        block = config.baselines.knn_block_users
        users = sorted(target)
        sim = cosine_cooccurrence(
            [target[u] for u in users], [target[u] for u in users], (n_target, n_target), block
        )
        target_tables = top_k_tables(sim, k, drop_diagonal=True)
        both = [u for u in users if u in source]
        cross = cosine_cooccurrence(
            [source[u] for u in both], [target[u] for u in both], (n_source, n_target), block
        )
        source_tables = top_k_tables(cross, k, drop_diagonal=False)
    else:
        target_tables = (torch.zeros(n_target, 1, dtype=torch.long), torch.zeros(n_target, 1))
        source_tables = (torch.zeros(n_source, 1, dtype=torch.long), torch.zeros(n_source, 1))
    return Components(phase, features, *target_tables, *source_tables)


def fused_model(
    inner: CrossDomainModel,
    split: CrossDomainSplit,
    config: ExperimentConfig,
    components: Components,
    fit: FusionFit | None = None,
) -> FusedModel:
    """``inner`` wrapped with ``components``; weights from ``fit`` (None = the model alone)."""
    names = tuple(n for n in ITEM_FEATURES if n in components.item_features)
    model = FusedModel(
        inner,
        len(split.source_vocab),
        len(split.target_vocab),
        names,
        components.target_neighbours.shape[1],
    )
    coefficients = model.coefficients.clone()
    if fit is not None:
        for group, row in GROUPS.items():
            g = fit.groups[group]
            coefficients[row] = torch.tensor(
                [g.coefficient("model"), g.coefficient("item_knn")]
                + [g.coefficient(n) for n in names]
            )
    features = (
        torch.from_numpy(np.stack([components.item_features[n] for n in names]))
        if names
        else model.item_features
    )
    model.set_fusion(
        coefficients,
        features,
        components.target_neighbours,
        components.target_weights,
        components.source_neighbours,
        components.source_weights,
    )
    device = next(inner.parameters(), torch.zeros(0)).device
    return model.to(device).eval()


class FusionStage:
    """Fits and applies fusion for any number of models trained on one split: the components
    (window choice, KNN tables at both cutoffs) are computed once and reused."""

    def __init__(
        self, split: CrossDomainSplit, config: ExperimentConfig, device: torch.device | str = "cpu"
    ) -> None:
        self.split, self.config, self.device = split, config, device
        self._window: tuple[float | None] | None = None
        self._components: dict[str, Components] = {}

    @property
    def recent_window(self) -> float | None:
        if self._window is None:
            window = None
            if "recent_popularity" in self.config.fusion.components:
                baseline, _ = select_on_validation(
                    RecentPopularity, self.split, self.config.baselines
                )
                window = baseline.window
            self._window = (window,)
        return self._window[0]

    def components(self, phase: str) -> Components:
        if phase not in self._components:
            self._components[phase] = build_components(
                self.split, self.config, self.recent_window, phase
            )
        return self._components[phase]

    def apply(self, model: CrossDomainModel, use_source: bool = True) -> FusionOutcome:
        """Fits the blend around ``model`` on validation, then scores the test split once with
        the blend at the test cutoff. ``model``'s own item features are left at the test cutoff
        (as the experiment leaves them)."""
        started = time.perf_counter()
        m = self.config.model
        refresh_item_features(model, self.split, m.recent_popularity_window, VALID)
        valid_model = fused_model(model, self.split, self.config, self.components(VALID))
        fit = fit_weights(
            valid_model,
            self.split.valid,
            self.config,
            self.recent_window,
            use_source,
            self.device,
        )
        valid_model = fused_model(model, self.split, self.config, self.components(VALID), fit)
        valid = self._evaluate(valid_model, self.split.valid, use_source)
        # Selection (the benchmark's "best on validation", xdrec train's saved model) reads
        # validation NDCG@10: give it the cross-fitted figure, not the one the weights were
        # picked on; the in-sample one stays beside it.
        for group, metrics in valid.items():
            if group in fit.groups and "ndcg@10" in metrics:
                metrics["ndcg@10_in_sample"] = metrics["ndcg@10"]
                metrics["ndcg@10"] = fit.groups[group].valid_ndcg_cross_fitted
        refresh_item_features(model, self.split, m.recent_popularity_window, TEST)
        test_model = fused_model(model, self.split, self.config, self.components(TEST), fit)
        test = self._evaluate(test_model, self.split.test, use_source)
        fit.seconds = time.perf_counter() - started
        return FusionOutcome(fit, test_model, valid, test)

    def _evaluate(self, model: FusedModel, sets: dict[str, EvalSet], use_source: bool) -> dict:
        m = self.config.model
        return {
            name: evaluate_model(
                model.to(self.device),
                evalset,
                m.max_source_history,
                m.max_target_history,
                self.device,
                use_source,
                popularity=self.split.target_popularity,
            )
            for name, evalset in sets.items()
        }


def _component_scores(
    model: FusedModel,
    evalset: EvalSet,
    start: int,
    end: int,
    names: list[str],
    config: ExperimentConfig,
    use_source: bool,
    device: torch.device | str,
) -> torch.Tensor:
    """[components, users, target items] raw scores of users [start, end), in ``names`` order
    ("model", then the configured components), exactly as the fused model computes them."""
    m = config.model
    src, src_mask = pad_histories(evalset.source_histories[start:end], m.max_source_history)
    tgt, tgt_mask = pad_histories(evalset.target_histories[start:end], m.max_target_history)
    if not use_source:
        src_mask[:] = 0.0
    tensors = [torch.from_numpy(a).to(device) for a in (src, src_mask, tgt, tgt_mask)]
    with torch.no_grad():
        inner_user, knn, _ = model.user_representation(*tensors)
        parts = {"model": model.inner.target_logits(inner_user).float(), "item_knn": knn.float()}
        for row, name in enumerate(model.item_feature_names):
            parts[name] = model.item_features[row].expand(end - start, -1)
        zeros = torch.zeros_like(parts["model"])
        return torch.stack([parts.get(name, zeros) for name in names]).cpu()


def cross_fitted_ndcg(per_user: np.ndarray) -> float:
    """Out-of-sample NDCG@10 of picking a grid point on validation. ``per_user`` [users,
    points]: each user's NDCG@10 under each grid point. Users split in two halves (alternate
    rows: deterministic, and both halves span the user order); the point picked on one half is
    scored on the other, and the two are pooled. Picking the best of ~300 points on the same
    users that report it flatters the blend; this estimate does not."""
    n = per_user.shape[0]
    if n < 2:
        return float(per_user[:, 0].mean()) if n else 0.0
    halves = (np.arange(n) % 2 == 0, np.arange(n) % 2 == 1)
    total = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        pick = int(np.argmax(per_user[fit_on].mean(axis=0)))  # ties: the lowest row, the model
        total += float(per_user[score_on, pick].sum())
    return total / n


def fit_weights(
    model: FusedModel,
    sets: dict[str, EvalSet],
    config: ExperimentConfig,
    recent_window: float | None,
    use_source: bool = True,
    device: torch.device | str = "cpu",
) -> FusionFit:
    """Per group: component scales, then the simplex grid point with the best NDCG@10 on the
    group's *validation* users (``sets`` = split.valid). ``model`` holds the validation-cutoff
    components. Reads only ``sets`` (histories and labels): test data cannot move the weights."""
    names = ["model", *config.fusion.components]
    grid = simplex_grid(len(names), config.fusion.grid_step)
    n_items = model.num_target_items
    chunk = max(1, min(512, FIT_CELLS // max(1, len(names) * n_items)))
    fit = FusionFit(
        list(config.fusion.components),
        recent_window,
        model.knn_neighbours,
        {},
    )
    for group, evalset in sets.items():
        spans = [(s, min(s + chunk, len(evalset))) for s in range(0, len(evalset), chunk)]

        def scores(s: int, e: int, evalset: EvalSet = evalset) -> torch.Tensor:
            return _component_scores(model, evalset, s, e, names, config, use_source, device)

        # Pass 1: scale = mean over users of the std over real items (column 0 is padding).
        spread = np.zeros(len(names))
        for s, e in spans:
            spread += scores(s, e)[:, :, 1:].double().std(dim=2).sum(dim=1).numpy()
        scales = spread / max(len(evalset), 1)
        usable = scales > 1e-12
        # The model alone is always a candidate; with no spread to measure (no validation users
        # in the group, or constant scores) its scale is 1, so it keeps its own scores.
        scales[0], usable[0] = scales[0] if usable[0] else 1.0, True
        points = grid[np.all((grid[:, ~usable] == 0), axis=1)]
        weights = torch.from_numpy(points / np.where(usable, scales, 1.0)).float()
        # Pass 2: NDCG@10 of every user under every grid point, chunk by chunk.
        per_user = np.zeros((len(evalset), len(points)))
        for s, e in spans:
            parts = scores(s, e)
            blocked = torch.zeros(parts.shape[1:], dtype=torch.bool)
            blocked[:, 0] = True
            relevant = torch.zeros(parts.shape[1:], dtype=torch.bool)
            for row, (history, labels) in enumerate(
                zip(evalset.target_histories[s:e], evalset.labels[s:e], strict=True)
            ):
                blocked[row, torch.from_numpy(history)] = True
                relevant[row, torch.from_numpy(labels)] = True
            for p in range(len(points)):
                blend = torch.tensordot(weights[p], parts, dims=1).masked_fill(blocked, -torch.inf)
                top = torch.topk(blend, min(10, n_items), dim=1).indices
                per_user[s:e, p] = _chunk_metrics(top, relevant)["ndcg@10"].double().numpy()
        ndcg = per_user.sum(axis=0) / max(len(evalset), 1)
        best = int(np.argmax(ndcg))  # row 0 (the model alone) wins ties
        fit.grid_points[group] = len(points)
        fit.groups[group] = GroupFit(
            weights={n: float(w) for n, w in zip(names, points[best], strict=True)},
            scales={n: float(v) for n, v in zip(names, scales, strict=True)},
            valid_ndcg_model=float(ndcg[0]),
            valid_ndcg_fused=float(ndcg[best]),
            users=len(evalset),
            valid_ndcg_cross_fitted=cross_fitted_ndcg(per_user),
        )
    return fit


def fusion_markdown(fits: dict[int, FusionFit], label: str) -> str:
    """results.md section: per seed and group, the weights and validation NDCG@10 without / with."""
    lines = [
        f"### Score fusion ({label})",
        "",
        "Weights fitted per user group on validation only (trainer/fusion.py); "
        "NDCG@10 on validation without / with fusion: in-sample (the users the weights were "
        "picked on) and cross-fitted (picked on one half of the users, scored on the other: "
        "the figure model selection uses).",
        "",
        "| seed | group | weights | valid NDCG@10 model | fused, in-sample | fused, cross-fitted |",
        "|---|---|---|---|---|---|",
    ]
    for seed, fit in fits.items():
        for group, g in fit.groups.items():
            weights = ", ".join(f"{n} {w:.1f}" for n, w in g.weights.items() if w > 0)
            lines.append(
                f"| {seed} | {group} | {weights} | {g.valid_ndcg_model:.4f} | "
                f"{g.valid_ndcg_fused:.4f} | {g.valid_ndcg_cross_fitted:.4f} |"
            )
    first = next(iter(fits.values()), None)
    if first is not None and first.recent_window is not None:
        lines += [
            "",
            f"Recent-popularity window (picked on validation): {first.recent_window:.0%}.",
        ]
    return "\n".join(lines)


__all__ = [
    "Components",
    "FusionFit",
    "FusionOutcome",
    "FusionStage",
    "GroupFit",
    "build_components",
    "cross_fitted_ndcg",
    "fit_weights",
    "fused_model",
    "simplex_grid",
]
