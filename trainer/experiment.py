"""Runs strategies x seeds on one split, reports the comparison table and saves the serving model.

The serving model is the configured strategy's run with the best *validation* score; test
metrics are computed once per finished run and only reported, never used to choose.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.checkpoints import CheckpointStore
from trainer.config import ExperimentConfig
from trainer.config_checks import check_config
from trainer.data import load_dataset
from trainer.distributed import DistributedContext
from trainer.evaluation import evaluate_model, evaluate_popularity, pooled_ndcg
from trainer.progress import format_seconds
from trainer.run_artifacts import save_run
from trainer.splits import CrossDomainSplit, split_dataset
from trainer.strategies import table_entries
from trainer.training import Trainer, TrainResult

log = logging.getLogger(__name__)
REPORTED = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "hr@10")
BASELINES = ("popularity", "target_only")


@dataclass
class StrategyRuns:
    """Test (and validation) metrics of one strategy over seeds."""

    strategy: str
    test: list[dict[str, dict[str, float]]] = field(default_factory=list)
    valid: list[dict[str, dict[str, float]]] = field(default_factory=list)
    curves: list[list[dict[str, float]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def add_popularity(self, split: CrossDomainSplit) -> None:
        self.valid.append(
            {k: evaluate_popularity(split.target_popularity, v) for k, v in split.valid.items()}
        )
        self.test.append(
            {k: evaluate_popularity(split.target_popularity, v) for k, v in split.test.items()}
        )

    def add_trained(self, trainer: Trainer, seed: int, strategy: str | None = None) -> TrainResult:
        """Trains one seed (selection on validation inside ``fit``), then scores the test split once."""
        from trainer.strategies import get_strategy

        strategy = strategy or self.strategy
        result = trainer.fit(strategy, seed)
        m = trainer.config.model
        use_source = get_strategy(strategy).uses_source
        self.seeds.append(seed)
        self.valid.append(result.valid)
        self.test.append(
            {
                k: evaluate_model(
                    result.model,
                    v,
                    m.max_source_history,
                    m.max_target_history,
                    trainer.device,
                    use_source,
                )
                for k, v in trainer.split.test.items()
            }
        )
        self.curves.append(result.curve)
        self.seconds.append(result.seconds)
        return result

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for group in ("warm", "cold"):
            out[group] = {}
            for metric in REPORTED:
                values = [run[group][metric] for run in self.test if metric in run.get(group, {})]
                if values:
                    out[group][metric] = {
                        "mean": float(np.mean(values)),
                        "std": float(np.std(values)),
                    }
        return out


def strategies_to_run(config: ExperimentConfig, extra: list[str] | None = None) -> list[str]:
    """Baselines always come first: no table without them (design brief, section 3). Unknown
    names fail here, before any data is loaded or model trained."""
    ordered = [*BASELINES, *(extra or []), config.train.strategy]
    valid = table_entries()
    unknown = [s for s in ordered if s not in valid]
    if unknown:
        raise ValueError(f"unknown strategy {unknown}; choose from {', '.join(valid)}")
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
    stats = split.stats()
    log.info("split: %s", json.dumps(stats))
    say("data split: " + ", ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    store = CheckpointStore(out_dir, config, split.fingerprint)
    if resume:
        store.check_resumable(writer=context.is_main)
    elif context.is_main:
        store.clear()
    trainer = Trainer(config, split, show_progress=show_progress, context=context)
    runs: dict[str, StrategyRuns] = {name: StrategyRuns(name) for name in names}
    if "popularity" in runs:
        runs["popularity"].add_popularity(split)
    best: TrainResult | None = None
    best_score = -np.inf
    models = [n for n in names if n != "popularity"]
    todo = [(seed, name) for seed in config.train.seeds for name in models]
    eta = RunClock(sum(not store.has(name, seed) for seed, name in todo))
    for seed, strategy in todo:
        record = runs[strategy]
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
        if strategy == config.train.strategy and score > best_score:
            best, best_score = result, score
        if context.is_main:
            write_results(out_dir, config, split, runs, started, context, complete=False)
    report = write_results(out_dir, config, split, runs, started, context, complete=True)
    if context.is_main:
        write_plots(runs, out_dir)
        if best is not None:
            save_run(out_dir, config, split, best, report)
    return report


def write_results(
    out_dir: Path,
    config: ExperimentConfig,
    split: CrossDomainSplit,
    runs: dict[str, StrategyRuns],
    started: float,
    context: DistributedContext,
    complete: bool,
) -> dict:
    """results.json and results.md as they stand; ``complete`` says whether every run is in."""
    report = {
        "config": config.to_dict(),
        "split": split.stats(),
        "boundaries": split.boundaries,
        "data_fingerprint": split.fingerprint,
        "complete": complete,
        "strategies": {
            name: {
                "summary": r.summary(),
                "test": r.test,
                "valid": r.valid,
                "seconds": r.seconds,
                "seeds": r.seeds,
            }
            for name, r in runs.items()
        },
        "seconds": time.perf_counter() - started,
        "world_size": context.world_size,
    }
    if context.is_main:
        (out_dir / "results.json").write_text(json.dumps(report, indent=2))
        note = "" if complete else "\n(partial: the run is still going or was interrupted)\n"
        (out_dir / "results.md").write_text(format_table(runs) + "\n" + note)
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


def format_table(runs: dict[str, StrategyRuns], reference: str | None = "target_only") -> str:
    """Markdown table: mean +/- std over seeds of the test metrics, warm and cold users, and the
    relative change of cold NDCG@10 against ``reference`` (so a strategy that does not help shows)."""
    columns = [
        ("warm", "ndcg@10"),
        ("warm", "recall@10"),
        ("cold", "ndcg@10"),
        ("cold", "recall@10"),
        ("warm", "ndcg@20"),
        ("cold", "ndcg@20"),
    ]
    ref = runs[reference].summary().get("cold", {}).get("ndcg@10") if reference in runs else None
    header = "| strategy | seeds | " + " | ".join(f"{g} {m}" for g, m in columns) + " |"
    if ref:
        header += f" cold ndcg@10 vs {reference} |"
    lines = [header, "|" + "---|" * (len(columns) + 2 + bool(ref))]
    for name, record in runs.items():
        summary = record.summary()
        cells = []
        for group, metric in columns:
            value = summary.get(group, {}).get(metric)
            cells.append(f"{value['mean']:.4f} ± {value['std']:.4f}" if value else "n/a")
        row = f"| {name} | {len(record.test)} | " + " | ".join(cells) + " |"
        cold = summary.get("cold", {}).get("ndcg@10")
        if ref:
            row += f" {cold['mean'] / ref['mean'] - 1:+.1%} |" if cold and ref["mean"] else " n/a |"
        lines.append(row)
    return "\n".join(lines)


def write_plots(runs: dict[str, StrategyRuns], out_dir: Path, stem: str = "results") -> None:
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
