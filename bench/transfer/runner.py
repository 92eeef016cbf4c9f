"""Runs a plan: one split per section (built once, reused by every row), the simple baselines
once per split (cached in the JSON), then seeds x rows, each finished run written at once.

Seeds are the outer loop so that the work every strategy of a seed shares (source
pre-training, the target-only model that EMCDR / PTUPCDR reuse) is trained once per seed and
config (``Trainer.shared``), however many rows use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.transfer.plan import Plan, PlannedReport, PlannedRow, PlannedSection, config_hash
from bench.transfer.report import write_report
from bench.transfer.store import STORE_FILE, ReportStore
from trainer.baselines.runner import run_baselines
from trainer.data import load_dataset
from trainer.dataset_report import format_dataset_report
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.experiment import StrategyRuns
from trainer.fusion import FusionStage
from trainer.progress import format_seconds
from trainer.splits import CrossDomainSplit, split_dataset
from trainer.strategies import get_strategy
from trainer.training import SeedWork, Trainer, TrainResult

# Train fields that only the fine-tuning / joint / bridge stage reads: rows differing only in
# these share the seed's source pre-training and target-only model.
STAGE_ONLY_FIELDS = ("strategy", "freeze", "transferred_lr_scale", "joint_lambda", "bridge_epochs")


def shared_work_key(row: PlannedRow) -> str:
    c = row.config.to_dict()
    c.pop("fusion", None)  # fusion is applied after training: it changes nothing trained
    train = {k: v for k, v in c["train"].items() if k not in STAGE_ONLY_FIELDS}
    return config_hash({**c, "train": train})


def trained_model_key(row: PlannedRow) -> str:
    """Rows with equal keys train the same model (they differ only in score fusion)."""
    c = row.config.to_dict()
    c.pop("fusion", None)
    return config_hash({**c, "strategy": row.strategy})


@dataclass
class Clock:
    """Elapsed time and an ETA for the runs left: the mean time of finished runs of the same
    row in the same report, else of the same report, else of all (runs differ a lot in cost)."""

    total: int
    started: float = field(default_factory=time.perf_counter)
    done: list[tuple[str, str, float]] = field(default_factory=list)  # report, row, seconds
    left: list[tuple[str, str]] = field(default_factory=list)

    def finished(self, report: str, row: str, seconds: float) -> None:
        self.done.append((report, row, seconds))
        if (report, row) in self.left:
            self.left.remove((report, row))

    def _estimate(self, report: str, row: str) -> float | None:
        for keep in (
            lambda r, w: r == report and w == row,
            lambda r, w: r == report,
            lambda r, w: True,
        ):
            times = [s for r, w, s in self.done if keep(r, w)]
            if times:
                return sum(times) / len(times)
        return None

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        estimates = [self._estimate(r, w) for r, w in self.left]
        eta = format_seconds(sum(estimates)) if all(e is not None for e in estimates) else "unknown"
        return f"run {len(self.done)}/{self.total}, elapsed {format_seconds(elapsed)}, eta {eta}"


@dataclass
class SectionState:
    """What one section keeps while its rows train: the split, per-config shared seed work,
    trainers per row, and this seed's teacher models for the student rows."""

    split: CrossDomainSplit
    works: dict[str, SeedWork] = field(default_factory=dict)
    trainers: dict[str, Trainer] = field(default_factory=dict)
    teachers: dict[str, TrainResult] = field(default_factory=dict)
    # This seed's trained models and their test metrics, by trained_model_key: a fusion row
    # blends the model its plain row trained instead of training it again.
    trained: dict[str, tuple[TrainResult, dict]] = field(default_factory=dict)
    fusions: dict[str, FusionStage] = field(default_factory=dict)

    def fusion(self, row: PlannedRow) -> FusionStage:
        """One fusion stage (components at both cutoffs) per fusion / baseline / model settings."""
        c = row.config.to_dict()
        key = config_hash({k: c[k] for k in ("fusion", "baselines", "model")})
        if key not in self.fusions:
            self.fusions[key] = FusionStage(self.split, row.config)
        return self.fusions[key]

    def trainer(self, row: PlannedRow, show_progress: bool) -> Trainer:
        if row.label not in self.trainers:
            trainer = Trainer(row.config, self.split, show_progress=show_progress)
            trainer.shared = self.works.setdefault(shared_work_key(row), SeedWork())
            self.trainers[row.label] = trainer
        return self.trainers[row.label]


def run_plan(
    plan: Plan,
    out_dir: Path,
    base_config: dict,
    fresh: bool = False,
    show_progress: bool = False,
    say: Callable[..., None] = print,
) -> dict[str, dict]:
    """Runs every pending run of ``plan``; returns each report's JSON as written."""
    stores = {r.name: ReportStore(out_dir / r.name / STORE_FILE, fresh) for r in plan.reports}
    clock = Clock(0)
    for report in plan.reports:
        for section in report.sections:
            store = stores[report.name]
            clock.left += [
                (report.name, row.label)
                for seed in plan.seeds
                for row in section.rows
                if not store.finished(section.name, row, seed)
            ]
    clock.total = len(clock.left)
    say(f"{clock.total} run(s) to train; the rest are already in the JSON", flush=True)
    written = {}
    for report in plan.reports:
        store = stores[report.name]
        started, trained_before = time.perf_counter(), len(clock.done)
        for section in report.sections:
            run_section(report, section, plan, store, clock, base_config, show_progress, say)
        # Wall time of this invocation, when it trained something (else the stored one stays).
        wall = time.perf_counter() - started if len(clock.done) > trained_before else None
        written[report.name] = write_report(report, store, plan, base_config, wall, complete=True)
        say(f"wrote {store.path.parent}/transfer.md, transfer.json, transfer.png", flush=True)
    return written


def rewrite_reports(plan: Plan, out_dir: Path, base_config: dict) -> dict[str, dict]:
    """Rewrites every report of ``plan`` (table, JSON, plot) from the runs already stored,
    training nothing: after a change to notes or report code, or to see the whole table after
    an ``--only`` invocation (whose report lists only the rows it ran, then the rest)."""
    written = {}
    for report in plan.reports:
        store = ReportStore(out_dir / report.name / STORE_FILE)
        complete = not any(store.pending(section, plan.seeds) for section in report.sections)
        written[report.name] = write_report(report, store, plan, base_config, None, complete)
    return written


def build_split(section: PlannedSection, say: Callable[..., None]) -> CrossDomainSplit:
    started = time.perf_counter()
    raw = load_dataset(section.config.data)
    split = split_dataset(raw, section.config.data, section.config.split)
    say(format_dataset_report(split.dataset_report), flush=True)
    say(
        "data split: "
        + ", ".join(f"{k}={v}" for k, v in split.stats().items())
        + f" ({time.perf_counter() - started:.0f}s)",
        flush=True,
    )
    return split


def run_section(
    report: PlannedReport,
    section: PlannedSection,
    plan: Plan,
    store: ReportStore,
    clock: Clock,
    base_config: dict,
    show_progress: bool,
    say: Callable[..., None],
) -> None:
    where = f"{report.name} / {section.name}"
    baselines_cached = store.baselines(section.name, section.baselines_hash) is not None
    if not store.pending(section, plan.seeds) and baselines_cached:
        say(f"== {where}: every run is already in {store.path}", flush=True)
        return
    say(f"== {where}: {section.note}", flush=True)
    state = SectionState(build_split(section, say))
    split = state.split
    store.set_split(
        section.name,
        {
            "fingerprint": split.fingerprint,
            "stats": split.stats(),
            "split_method": split.split_method,
            "dataset_report": split.dataset_report,
            "boundaries": split.boundaries,
        },
    )
    if store.baselines(section.name, section.baselines_hash) is None:
        c = section.config
        records = run_baselines(split, c.train.seeds, c.baselines, say)
        store.record_baselines(section.name, section.baselines_hash, records)
    else:
        say("  simple baselines: reused from the JSON (same split and settings)", flush=True)
    for seed in plan.seeds:
        state.teachers.clear()  # one seed's teachers (and trained models) at a time
        state.trained.clear()
        for row in section.rows:
            if store.finished(section.name, row, seed):
                continue
            entry = train_row(row, seed, section, state, show_progress, say)
            store.record_run(section.name, row, seed, entry)
            clock.finished(report.name, row.label, entry["seconds"])
            say(
                f"  [{where}] {row.label} seed={seed}: best epoch {entry['best_epoch']}, "
                f"valid ndcg@10 {entry['valid_ndcg@10']:.4f}, test warm "
                f"{entry['test']['warm'].get('ndcg@10', 0):.4f} cold "
                f"{entry['test']['cold'].get('ndcg@10', 0):.4f} ({entry['seconds']:.0f}s) | "
                f"{clock.line()}",
                flush=True,
            )
            write_report(report, store, plan, base_config, None, complete=False, plot=False)


def train_row(
    row: PlannedRow,
    seed: int,
    section: PlannedSection,
    state: SectionState,
    show_progress: bool,
    say: Callable[..., None],
) -> dict:
    """Trains one row for one seed (selection on validation inside), scores test once."""
    split = state.split
    if row.kind == "distill":
        from bench.transfer.distill_row import fit_student

        teacher = state.teachers.get(row.teacher or "")
        if teacher is None:  # the teacher's run came from the JSON: train it again for its model
            teacher_row = next(r for r in section.rows if r.label == row.teacher)
            say(f"  training the teacher {teacher_row.label} seed={seed} for {row.label}")
            teacher = state.trainer(teacher_row, show_progress).fit(teacher_row.strategy, seed)
            state.teachers[teacher_row.label] = teacher
        teacher_row = next(r for r in section.rows if r.label == row.teacher)
        trainer = state.trainer(row, show_progress)
        result = fit_student(trainer, teacher.model, teacher_row.config, seed)
        m = row.config.model
        test = {
            k: evaluate_model(
                result.model,
                v,
                m.max_source_history,
                m.max_target_history,
                trainer.device,
                popularity=split.target_popularity,
            )
            for k, v in split.test.items()
        }
    else:
        trainer = state.trainer(row, show_progress)
        key = trained_model_key(row)
        if key in state.trained:
            result, test = state.trained[key]
            say(f"  {row.label} seed={seed}: blends the model trained for the row without fusion")
        else:
            record = StrategyRuns(row.label, is_baseline=row.baseline)
            result = record.add_trained(trainer, seed, row.strategy)
            test = record.test[-1]
            state.trained[key] = (result, test)
        if any(r.teacher == row.label for r in section.rows):
            state.teachers[row.label] = result
        if row.config.fusion.enabled:
            outcome = state.fusion(row).apply(result.model, get_strategy(row.strategy).uses_source)
            return {
                "best_epoch": result.best_epoch,
                "valid": outcome.valid,
                "valid_ndcg@10": pooled_ndcg(outcome.valid, split.valid),
                "test": outcome.test,
                "curve": result.curve,
                "seconds": result.seconds + outcome.fit.seconds,
                "fusion": outcome.fit.to_dict(),
                "unfused": {"valid": result.valid, "test": test},
            }
    return {
        "best_epoch": result.best_epoch,
        "valid": result.valid,
        "valid_ndcg@10": pooled_ndcg(result.valid, split.valid),
        "test": test,
        "curve": result.curve,
        "seconds": result.seconds,
    }
