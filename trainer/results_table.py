"""The results tables of ``xdrec train`` and ``bench/transfer_benchmark.py``: one producer.

Rows are baselines (``is_baseline``) and strategies, each with test metrics per run (seed).
Cells are mean ± std over runs; a single run prints its value with "-" for std, because a
deterministic baseline run once has no spread to show (``± 0.0000`` would read as certainty).
Gains are reported against the *best* baseline of each user group, never a weak one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.dataset_report import format_dataset_report

REPORTED = (
    "ndcg@10",
    "recall@10",
    "ndcg@20",
    "recall@20",
    "hr@10",
    "precision@10",
    "f1@10",
    "coverage@10",
    "novelty@10",
)
ACCURACY_COLUMNS = [
    ("warm", "ndcg@10"),
    ("warm", "recall@10"),
    ("warm", "ndcg@20"),
    ("cold", "ndcg@10"),
    ("cold", "recall@10"),
    ("cold", "ndcg@20"),
]
MORE_COLUMNS = [
    (group, metric)
    for group in ("warm", "cold")
    for metric in ("recall@20", "hr@10", "precision@10", "f1@10", "coverage@10", "novelty@10")
]
GAIN_METRIC = "ndcg@10"


@dataclass
class RunRecord:
    """Test (and validation) metrics of one row over its runs."""

    strategy: str
    test: list[dict[str, dict[str, float]]] = field(default_factory=list)
    valid: list[dict[str, dict[str, float]]] = field(default_factory=list)
    curves: list[list[dict[str, float]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    is_baseline: bool = False
    notes: str = ""

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
                        "runs": len(values),
                    }
        return out

    def to_json(self) -> dict:
        return {
            "summary": self.summary(),
            "test": self.test,
            "valid": self.valid,
            "seconds": self.seconds,
            "baseline": self.is_baseline,
            "notes": self.notes,
        }


def cell(value: dict[str, float] | None) -> str:
    if not value:
        return "n/a"
    if value.get("runs", 2) < 2:
        return f"{value['mean']:.4f} ± -"
    return f"{value['mean']:.4f} ± {value['std']:.4f}"


def best_baseline(runs: dict[str, RunRecord], group: str) -> tuple[str, float] | None:
    """The baseline row with the highest mean test NDCG@10 for ``group`` (warm / cold)."""
    scored = [
        (r.summary()[group][GAIN_METRIC]["mean"], name)
        for name, r in runs.items()
        if r.is_baseline and GAIN_METRIC in r.summary().get(group, {})
    ]
    if not scored:
        return None
    mean, name = max(scored)
    return name, mean


def _gain(value: dict | None, reference: tuple[str, float] | None) -> str:
    if not value or not reference or not reference[1]:
        return "n/a"
    return f"{value['mean'] / reference[1] - 1:+.1%}"


def format_table(runs: dict[str, RunRecord]) -> str:
    """Accuracy table with the change of warm and cold NDCG@10 against the best baseline."""
    refs = {group: best_baseline(runs, group) for group in ("warm", "cold")}
    header = "| strategy | runs | " + " | ".join(f"{g} {m}" for g, m in ACCURACY_COLUMNS)
    for group in ("warm", "cold"):
        ref = refs[group]
        header += f" | {group} {GAIN_METRIC} vs best baseline ({ref[0] if ref else 'n/a'})"
    lines = [header + " |", "|" + "---|" * (len(ACCURACY_COLUMNS) + 4)]
    for name, record in runs.items():
        summary = record.summary()
        cells = [cell(summary.get(g, {}).get(m)) for g, m in ACCURACY_COLUMNS]
        cells += [_gain(summary.get(g, {}).get(GAIN_METRIC), refs[g]) for g in ("warm", "cold")]
        label = f"{name} (baseline)" if record.is_baseline else name
        lines.append(f"| {label} | {len(record.test)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_more_metrics(runs: dict[str, RunRecord]) -> str:
    """Precision, F1, HR, coverage and novelty: a gain bought with blockbusters shows here."""
    header = "| strategy | " + " | ".join(f"{g} {m}" for g, m in MORE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(MORE_COLUMNS) + 1)]
    for name, record in runs.items():
        summary = record.summary()
        cells = [cell(summary.get(g, {}).get(m)) for g, m in MORE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(runs: dict[str, RunRecord], dataset_report: dict, split_method: str) -> str:
    """results.md / transfer.md body: the split and dataset, then both tables, then notes."""
    parts = [f"Split: **{split_method}**.", ""]
    if dataset_report:
        parts += ["```", format_dataset_report(dataset_report), "```", ""]
    parts += [format_table(runs), "", format_more_metrics(runs)]
    notes = [f"- {name}: {r.notes}" for name, r in runs.items() if r.notes]
    if notes:
        parts += ["", *notes]
    return "\n".join(parts)
