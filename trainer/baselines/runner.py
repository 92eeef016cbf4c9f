"""Fits and evaluates every baseline on a split: one call from the experiment and the benchmark.

Settings a baseline offers (``candidates``) are compared on validation only; the chosen one is
scored once on test. Deterministic baselines run once; the others once per seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trainer.baselines import BASELINES, Baseline
from trainer.baselines.base import TEST, VALID
from trainer.config import BaselineConfig
from trainer.evaluation import evaluate_ranking, pooled_ndcg
from trainer.results_table import RunRecord
from trainer.splits import CrossDomainSplit


def _evaluate(baseline: Baseline, split: CrossDomainSplit, sets: dict) -> dict:
    return {
        name: evaluate_ranking(
            lambda start, end, s=evalset: baseline.score(s, start, end),
            evalset,
            popularity=split.target_popularity,
        )
        for name, evalset in sets.items()
    }


def select_on_validation(
    kind: type[Baseline], split: CrossDomainSplit, config: BaselineConfig, seed: int = 0
) -> tuple[Baseline, dict]:
    """The baseline with the setting best on pooled validation NDCG@10, fitted at the validation
    cutoff, and its validation metrics (also what score fusion reuses, e.g. the recent window)."""
    best: tuple[float, Baseline | None, dict] = (-1.0, None, {})
    for settings in kind.candidates(config):
        baseline = kind(config, **settings)
        baseline.fit(split, VALID, seed)
        valid = _evaluate(baseline, split, split.valid)
        score = pooled_ndcg(valid, split.valid)
        if best[1] is None or score > best[0]:
            best = (score, baseline, valid)
    _, baseline, valid = best
    assert baseline is not None
    return baseline, valid


def run_baseline(
    kind: type[Baseline],
    split: CrossDomainSplit,
    seeds: list[int],
    config: BaselineConfig | None = None,
) -> RunRecord:
    config = config or BaselineConfig()
    record = RunRecord(kind.name, is_baseline=True)
    for seed in [0] if kind.deterministic else seeds:
        started = time.perf_counter()
        baseline, valid = select_on_validation(kind, split, config, seed)
        if kind.refit_for_test:
            baseline.fit(split, TEST, seed)
        record.valid.append(valid)
        record.test.append(_evaluate(baseline, split, split.test))
        record.seconds.append(time.perf_counter() - started)
        record.notes = baseline.describe()
    return record


def run_baselines(
    split: CrossDomainSplit,
    seeds: list[int],
    config: BaselineConfig | None = None,
    say: Callable[..., None] = print,
    kinds: tuple[type[Baseline], ...] = BASELINES,
) -> dict[str, RunRecord]:
    runs = {}
    for kind in kinds:
        record = runs[kind.name] = run_baseline(kind, split, seeds, config)
        test = record.test[-1]
        say(
            f"  {kind.name:<18} runs={len(record.test)} "
            f"test warm ndcg@10={test['warm'].get('ndcg@10', 0):.4f} "
            f"cold ndcg@10={test['cold'].get('ndcg@10', 0):.4f} "
            f"({sum(record.seconds):.1f}s){'; ' + record.notes if record.notes else ''}",
            flush=True,
        )
    return runs
