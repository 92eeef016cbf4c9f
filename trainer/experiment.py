"""Runs strategies x seeds on one split, reports the comparison table and saves the serving model.

The serving model is the configured strategy's run with the best *validation* score; test
metrics are computed once per finished run and only reported, never used to choose. With
``fusion.enabled`` each seed of that strategy is also blended with simple signals (trainer/fusion.py,
weights fitted on validation; its own table row), and the saved model is the blend of the chosen
seed when the blend beat the model alone on validation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from trainer.baselines import BASELINES as SIMPLE_BASELINE_CLASSES
from trainer.baselines.runner import run_baselines
from trainer.checkpoints import CheckpointStore
from trainer.config import ExperimentConfig
from trainer.config_checks import check_config
from trainer.data import load_dataset
from trainer.data_checks import check_text_fusion
from trainer.dataset_report import format_dataset_report
from trainer.distributed import DistributedContext
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.fusion import FusionFit, FusionOutcome, FusionStage, fusion_markdown
from trainer.item_features import refresh_item_features
from trainer.progress import format_seconds
from trainer.results_table import RunRecord, results_markdown
from trainer.run_artifacts import save_run
from trainer.splits import CrossDomainSplit, split_dataset
from trainer.strategies import table_entries
from trainer.training import Trainer, TrainResult

log = logging.getLogger(__name__)
# Model baselines trained here; the simple ones (popularity, recent popularity, item-KNN,
# BPR-MF) come from trainer/baselines/ and always head the table.
BASELINES = ("target_only",)
SIMPLE_BASELINES = {kind.name for kind in SIMPLE_BASELINE_CLASSES}


@dataclass
class StrategyRuns(RunRecord):
    """Test (and validation) metrics of one trained strategy over seeds."""

    seeds: list[int] = field(default_factory=list)

    def add_trained(self, trainer: Trainer, seed: int, strategy: str | None = None) -> TrainResult:
        """Trains one seed (selection on validation inside ``fit``), then scores the test split once."""
        from trainer.strategies import get_strategy

        strategy = strategy or self.strategy
        result = trainer.fit(strategy, seed)
        m = trainer.config.model
        use_source = get_strategy(strategy).uses_source
        self.seeds.append(seed)
        self.valid.append(result.valid)
        # Item features known at the test cutoff (what the exported, served model holds too).
        refresh_item_features(result.model, trainer.split, m.recent_popularity_window, "test")
        self.test.append(
            {
                k: evaluate_model(
                    result.model,
                    v,
                    m.max_source_history,
                    m.max_target_history,
                    trainer.device,
                    use_source,
                    popularity=trainer.split.target_popularity,
                )
                for k, v in trainer.split.test.items()
            }
        )
        self.curves.append(result.curve)
        self.seconds.append(result.seconds)
        return result

    def to_json(self) -> dict:
        return {**super().to_json(), "seeds": self.seeds}


def strategies_to_run(config: ExperimentConfig, extra: list[str] | None = None) -> list[str]:
    """Baselines always come first: no table without them (design brief, section 3). Unknown
    names fail here, before any data is loaded or model trained."""
    ordered = [*BASELINES, *(extra or []), config.train.strategy]
    valid = [*table_entries(), *sorted(SIMPLE_BASELINES)]
    unknown = [s for s in ordered if s not in valid]
    if unknown:
        raise ValueError(
            f"unknown strategy {unknown}; choose from {', '.join(dict.fromkeys(valid))}"
        )
    return list(dict.fromkeys(s for s in ordered))


def run_experiment(
    config: ExperimentConfig,
    out_dir: Path,
    extra_strategies: list[str] | None = None,
    show_progress: bool = True,
    split: CrossDomainSplit | None = None,
    context: DistributedContext | None = None,
    resume: bool = False,
) -> dict:
    """Under torchrun every rank trains (data parallel); only rank 0 prints and writes files.

    Seeds are the outer loop so the per-seed shared work (source pre-training, target-only model)
    is trained once and reused. Every finished strategy/seed leaves a checkpoint and refreshes
    results.json/md, so an interrupted run keeps what it finished and ``resume`` skips it.
    """
    context = context or DistributedContext()
    say = print if context.is_main else (lambda *a, **k: None)
    check_config(config)
    names = strategies_to_run(config, extra_strategies)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if split is None:
        raw = load_dataset(config.data)
        split = split_dataset(raw, config.data, config.split)
    check_text_fusion(split.dataset_report.get("has_titles", True), config)
    stats = split.stats()
    log.info("split: %s", json.dumps(stats))
    say(format_dataset_report(split.dataset_report), flush=True)
    say("data split: " + ", ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    store = CheckpointStore(out_dir, config, split.fingerprint)
    if resume:
        store.check_resumable(writer=context.is_main)
    elif context.is_main:
        store.clear()
    trainer = Trainer(config, split, show_progress=show_progress, context=context)
    if trainer.content_report is not None:  # item-vector coverage goes into results.json / md
        split.dataset_report["item_vectors"] = trainer.content_report.to_dict()
    # The simple baselines need no other rank (no collective ops): rank 0 alone fits them.
    runs: dict[str, RunRecord] = (
        dict(run_baselines(split, config.train.seeds, config.baselines, say))
        if context.is_main
        else {}
    )
    models = [n for n in names if n not in SIMPLE_BASELINES]
    for name in models:
        runs[name] = StrategyRuns(name, is_baseline=name in BASELINES)
    # Score fusion (trainer/fusion.py) of the configured strategy, per seed: its own table row.
    fusion = FusionStage(split, config, trainer.device) if config.fusion.enabled else None
    fused_label = f"{config.train.strategy} + fusion"
    fusion_fits: dict[int, FusionFit] = {}
    if fusion is not None and context.is_main:
        runs[fused_label] = RunRecord(fused_label, notes="validation-fitted blend, per user group")
    best_fused: FusionOutcome | None = None
    best: TrainResult | None = None
    best_score = -np.inf
    todo = [(seed, name) for seed in config.train.seeds for name in models]
    eta = RunClock(sum(not store.has(name, seed) for seed, name in todo))
    for seed, strategy in todo:
        record = runs[strategy]
        assert isinstance(record, StrategyRuns)
        if resume and store.has(strategy, seed):
            result = store.load(strategy, seed, trainer, record)
            how = "resumed from checkpoint"
        else:
            result = record.add_trained(trainer, seed)
            if context.is_main:
                store.save(result, record)
            eta.finished()
            how = f"{result.seconds:.1f}s; {eta.line()}"
        score = pooled_ndcg(result.valid, split.valid)
        say(
            f"  {strategy:<18} seed={seed} best_epoch={result.best_epoch:<3} "
            f"valid_ndcg@10={score:.4f} ({how})",
            flush=True,
        )
        outcome = None
        if fusion is not None and context.is_main and strategy == config.train.strategy:
            outcome = apply_fusion(fusion, result, runs[fused_label], fusion_fits, say)
        if strategy == config.train.strategy and score > best_score:
            best, best_score, best_fused = result, score, outcome
        if context.is_main:
            write_results(
                out_dir, config, split, runs, started, context, False, fusion_fits, fused_label
            )
    report = write_results(
        out_dir, config, split, runs, started, context, True, fusion_fits, fused_label
    )
    if context.is_main:
        write_plots(runs, out_dir)
        if best is not None and best_fused is not None and best_fused.fit.helps:
            # The served model is the blend: it beat the model alone on validation.
            metrics = {"valid": best_fused.valid, "test": best_fused.test}
            extra = {"metrics": metrics, "fusion": best_fused.fit.to_dict()}
            save_run(out_dir, config, split, replace(best, model=best_fused.model), report, extra)
            say(f"saved model: {best.strategy} seed {best.seed} + score fusion", flush=True)
        elif best is not None:
            save_run(out_dir, config, split, best, report)
            why = " (score fusion did not beat it on validation)" if best_fused else ""
            say(f"saved model: {best.strategy} seed {best.seed}{why}", flush=True)
    return report


def apply_fusion(
    fusion: FusionStage,
    result: TrainResult,
    record: RunRecord,
    fits: dict[int, FusionFit],
    say,
) -> FusionOutcome:
    """Fits the blend around one seed's model (validation only), scores test once, records it."""
    from trainer.strategies import get_strategy

    outcome = fusion.apply(result.model, get_strategy(result.strategy).uses_source)
    record.valid.append(outcome.valid)
    record.test.append(outcome.test)
    record.seconds.append(outcome.fit.seconds)
    fits[result.seed] = outcome.fit
    groups = ", ".join(
        f"{g} {f.valid_ndcg_model:.4f} -> {f.valid_ndcg_cross_fitted:.4f} cross-fitted "
        f"({f.valid_ndcg_fused:.4f} in-sample, model weight {f.weights['model']:.1f})"
        for g, f in outcome.fit.groups.items()
    )
    say(
        f"  {'+ fusion':<18} seed={result.seed} valid ndcg@10 {groups} "
        f"({outcome.fit.seconds:.1f}s)",
        flush=True,
    )
    return outcome


def write_results(
    out_dir: Path,
    config: ExperimentConfig,
    split: CrossDomainSplit,
    runs: dict[str, RunRecord],
    started: float,
    context: DistributedContext,
    complete: bool,
    fusion_fits: dict[int, FusionFit] | None = None,
    fused_label: str = "",
) -> dict:
    """results.json and results.md as they stand; ``complete`` says whether every run is in.
    ``fusion_fits``: per seed, the score-fusion weights of ``fused_label`` (trainer/fusion.py)."""
    report = {
        "config": config.to_dict(),
        "split": split.stats(),
        "split_method": split.split_method,
        "dataset": split.dataset_report,
        "boundaries": split.boundaries,
        "data_fingerprint": split.fingerprint,
        "complete": complete,
        "strategies": {name: r.to_json() for name, r in runs.items()},
        "seconds": time.perf_counter() - started,
        "world_size": context.world_size,
    }
    if fusion_fits:
        report["fusion"] = {
            "label": fused_label,
            "fits": {str(seed): fit.to_dict() for seed, fit in fusion_fits.items()},
        }
    if context.is_main:
        (out_dir / "results.json").write_text(json.dumps(report, indent=2))
        note = "" if complete else "\n(partial: the run is still going or was interrupted)\n"
        table = results_markdown(runs, split.dataset_report, split.split_method)
        if fusion_fits:
            table += "\n\n" + fusion_markdown(fusion_fits, fused_label)
        (out_dir / "results.md").write_text(table + "\n" + note)
    return report


class RunClock:
    """Estimated time left for the strategy/seed runs still to train (mean so far x remaining)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def finished(self) -> None:
        self.done += 1

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = elapsed / max(self.done, 1) * (self.total - self.done)
        return f"run {self.done}/{self.total}, eta {format_seconds(left)}"


def write_plots(runs: dict[str, RunRecord], out_dir: Path, stem: str = "results") -> None:
    """NDCG@10 per strategy (warm vs cold, error bars = std over seeds) and validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, 5))
    names = list(runs)
    x = np.arange(len(names))
    for offset, group in ((-0.2, "warm"), (0.2, "cold")):
        stats = [
            runs[n].summary().get(group, {}).get("ndcg@10", {"mean": 0, "std": 0}) for n in names
        ]
        bars.bar(
            x + offset,
            [s["mean"] for s in stats],
            0.4,
            yerr=[s["std"] for s in stats],
            capsize=3,
            label=group,
        )
    bars.set_xticks(x, names, rotation=20, ha="right")
    bars.set_ylabel("test NDCG@10")
    bars.set_title("Test NDCG@10 (mean ± std over seeds)")
    bars.legend()
    for name, record in runs.items():
        for i, curve in enumerate(record.curves):
            points = [(p["epoch"], p["valid_ndcg@10"]) for p in curve if "valid_ndcg@10" in p]
            if points:
                curves.plot(
                    *zip(*points, strict=True),
                    label=name if i == 0 else None,
                    color=f"C{names.index(name)}",
                    alpha=0.8,
                )
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation NDCG@10 (warm + cold)")
    curves.set_title("Training curves")
    curves.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{stem}.png", dpi=110)
    plt.close(fig)
