"""A report's markdown, JSON and plot, and the issue's targets, from the store of finished runs.

Every row is compared with the **best baseline** of each user group (the baseline with the highest
test mean: the hardest bar, a reference, not a selection), and warm rows also with the best of
popularity and recent popularity (the issue's warm target). The "best transfer" row is chosen on
**validation** (mean over seeds of the group's validation NDCG@10; the pooled validation NDCG@10
where one row must serve both groups); its test figure is then read, never used to choose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.transfer.plan import Plan, PlannedReport
from bench.transfer.store import ReportStore, record_from_json, row_record
from trainer.dataset_report import format_dataset_report
from trainer.results_table import RunRecord, cell, format_more_metrics

METRIC = "ndcg@10"
GROUPS = ("warm", "cold")
POPULARITY_BASELINES = ("popularity", "recent_popularity")
WARM_TARGET, COLD_TARGET, STUDENT_TARGET = 1.25, 1.35, 0.95
MAIN, ONE_SOURCE, TWO_SOURCES = "main", "3-domain, 1 source", "3-domain, 2 sources"


@dataclass
class SectionTable:
    """One section's rows as RunRecords plus what the table needs besides the test metrics."""

    name: str
    note: str
    split: dict
    runs: dict[str, RunRecord] = field(default_factory=dict)
    family: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    epochs: dict[str, list[int]] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    teacher: dict[str, str] = field(default_factory=dict)

    # -- figures ----------------------------------------------------------------------------
    def test_mean(self, label: str, group: str) -> float | None:
        value = self.runs[label].summary().get(group, {}).get(METRIC)
        return value["mean"] if value else None

    def valid_mean(self, label: str, group: str | None) -> float | None:
        """Mean over runs of the group's validation NDCG@10 (None = pooled, user-weighted)."""
        stats = self.split.get("stats", {})
        weights = {g: stats.get(f"valid_{g}_users", 1) for g in GROUPS}
        values = []
        for run in self.runs[label].valid:
            if group:
                if METRIC in run.get(group, {}):
                    values.append(run[group][METRIC])
            elif all(METRIC in run.get(g, {}) for g in GROUPS):
                total = sum(weights.values()) or 1
                values.append(sum(run[g][METRIC] * weights[g] for g in GROUPS) / total)
        return float(np.mean(values)) if values else None

    def baselines(self, names: tuple[str, ...] | None = None) -> list[str]:
        return [n for n, r in self.runs.items() if r.is_baseline and (names is None or n in names)]

    def transfer_rows(self) -> list[str]:
        return [n for n, r in self.runs.items() if not r.is_baseline and r.test]

    def best_reference(self, group: str, names: tuple[str, ...] | None = None):
        """(label, test mean) of the strongest baseline among ``names`` for ``group``."""
        scored = [
            (m, n) for n in self.baselines(names) if (m := self.test_mean(n, group)) is not None
        ]
        if not scored:
            return None
        mean, name = max(scored)
        return name, mean

    def best_transfer(self, group: str | None):
        """(label, validation mean) of the non-baseline row best on validation."""
        scored = [
            (v, n) for n in self.transfer_rows() if (v := self.valid_mean(n, group)) is not None
        ]
        if not scored:
            return None
        value, name = max(scored)
        return name, value


def section_tables(report: PlannedReport, store: ReportStore) -> list[SectionTable]:
    """Baselines first, then rows in declared order, then rows only the JSON still holds."""
    tables = []
    planned = {s.name: s for s in report.sections}
    names = [s.name for s in report.sections]
    names += [n for n in store.data["sections"] if n not in planned]
    for name in names:
        stored = store.data["sections"].get(name)
        if not stored or not stored.get("split"):
            continue
        section = planned.get(name)
        table = SectionTable(name, section.note if section else "", stored["split"])
        for base_name, raw in ((stored.get("baselines") or {}).get("records") or {}).items():
            table.runs[base_name] = record_from_json(base_name, raw)
            table.family[base_name] = "-"
            table.kind[base_name] = "simple baseline"
        order = [r.label for r in section.rows] if section else []
        order += [label for label in stored["rows"] if label not in order]
        for label in order:
            if label not in stored["rows"] or not stored["rows"][label].get("runs"):
                continue
            raw = stored["rows"][label]
            record, seeds, epochs = row_record(label, raw)
            table.runs[label] = record
            table.family[label] = raw.get("meta", {}).get("family", "?")
            table.kind[label] = raw.get("meta", {}).get("kind", "strategy")
            table.teacher[label] = raw.get("meta", {}).get("teacher") or ""
            table.seeds[label], table.epochs[label] = seeds, epochs
        tables.append(table)
    return tables


def _ratio(value: float | None, reference) -> str:
    if value is None or not reference or not reference[1]:
        return "n/a"
    return f"{value / reference[1]:.2f}x"


def _mean_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_section(table: SectionTable) -> str:
    pop = table.best_reference("warm", POPULARITY_BASELINES)
    best = {g: table.best_reference(g) for g in GROUPS}
    header = (
        "| row | family | seeds | best epochs | valid warm ndcg@10 | valid cold ndcg@10 | "
        "warm ndcg@10 | warm recall@10 | cold ndcg@10 | cold recall@10 | "
        f"warm vs best of pop/recent-pop ({pop[0] if pop else 'n/a'}) | "
        f"warm vs best baseline ({best['warm'][0] if best['warm'] else 'n/a'}) | "
        f"cold vs best baseline ({best['cold'][0] if best['cold'] else 'n/a'}) |"
    )
    lines = [header, "|" + "---|" * 13]
    for label, record in table.runs.items():
        s = record.summary()
        shown = f"{label} (baseline)" if record.is_baseline else label
        epochs = table.epochs.get(label)
        cells = [
            shown,
            table.family.get(label, "-"),
            str(len(record.test)),
            ",".join(map(str, epochs)) if epochs else "-",
            _mean_cell(table.valid_mean(label, "warm")),
            _mean_cell(table.valid_mean(label, "cold")),
            cell(s.get("warm", {}).get("ndcg@10")),
            cell(s.get("warm", {}).get("recall@10")),
            cell(s.get("cold", {}).get("ndcg@10")),
            cell(s.get("cold", {}).get("recall@10")),
            _ratio(table.test_mean(label, "warm"), pop),
            _ratio(table.test_mean(label, "warm"), best["warm"]),
            _ratio(table.test_mean(label, "cold"), best["cold"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_lines(table: SectionTable) -> list[str]:
    lines = []
    for group, what in (("warm", "warm"), ("cold", "cold-start"), (None, "both (pooled)")):
        pick = table.best_transfer(group)
        if pick:
            test = (
                f"test warm {_mean_cell(table.test_mean(pick[0], 'warm'))}, "
                f"cold {_mean_cell(table.test_mean(pick[0], 'cold'))}"
            )
            lines.append(
                f"- best transfer for {what} users on validation: **{pick[0]}** "
                f"(validation NDCG@10 {pick[1]:.4f}; {test})"
            )
    return lines


# -- targets of the issue ------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    status: str  # "met" | "missed" | "not measured"
    figure: str

    def line(self) -> str:
        mark = {"met": "**met**", "missed": "**missed**"}.get(self.status, "*not measured*")
        return f"- {self.name}: {mark}. {self.figure}"

    def to_json(self) -> dict:
        return {"target": self.name, "status": self.status, "figure": self.figure}


def _status(ok: bool) -> str:
    return "met" if ok else "missed"


def _group_target(
    t: SectionTable,
    group: str,
    factor: float,
    name: str,
    references: tuple[str, ...] | None = None,
    missing: str = "",
) -> Target:
    """The row picked on ``group`` validation against the best reference baseline's test mean."""
    pick, ref = t.best_transfer(group), t.best_reference(group, references)
    if not pick or not ref:
        return Target(name, "not measured", missing)
    value = t.test_mean(pick[0], group) or 0.0
    ratio = value / ref[1] if ref[1] else 0.0
    return Target(
        name,
        _status(ratio >= factor),
        f"{pick[0]} (best on {group} validation): test {group} NDCG@10 {value:.4f} = {ratio:.2f}x "
        f"{ref[0]} ({ref[1]:.4f}).",
    )


def warm_target(t: SectionTable) -> Target:
    name = f"warm users: NDCG@10 >= {WARM_TARGET}x the best of popularity and recent popularity"
    missing = "no transfer row or no popularity baseline ran"
    return _group_target(t, "warm", WARM_TARGET, name, POPULARITY_BASELINES, missing)


def cold_target(t: SectionTable) -> Target:
    name = f"cold-start users: NDCG@10 >= {COLD_TARGET}x the best baseline"
    return _group_target(t, "cold", COLD_TARGET, name, missing="no transfer row or no baseline ran")


def sparse_target(t: SectionTable) -> Target:
    name = (
        "sparse variant: the best transfer strategy beats every baseline on cold-start users "
        "and does not lose to target-only on warm users"
    )
    pick = t.best_transfer(None)
    ref = t.best_reference("cold")
    target_only = [n for n in t.baselines() if t.kind.get(n) == "strategy" and "target_only" in n]
    if not pick or not ref or not target_only:
        return Target(name, "not measured", "no transfer row, baseline or target-only row ran")
    cold = t.test_mean(pick[0], "cold") or 0.0
    warm = t.test_mean(pick[0], "warm") or 0.0
    warm_refs = [(t.test_mean(n, "warm") or 0.0, n) for n in target_only]
    warm_ref, warm_name = max(warm_refs)
    ok = cold > ref[1] and warm >= warm_ref
    return Target(
        name,
        _status(ok),
        f"{pick[0]} (best on pooled validation): test cold NDCG@10 {cold:.4f} vs best baseline "
        f"{ref[0]} {ref[1]:.4f} ({cold / ref[1]:.2f}x); test warm {warm:.4f} vs {warm_name} "
        f"{warm_ref:.4f} ({warm / warm_ref if warm_ref else 0:.2f}x).",
    )


def sources_target(tables: dict[str, SectionTable]) -> Target:
    name = "two sources >= one source on cold-start users"
    one, two = tables.get(ONE_SOURCE), tables.get(TWO_SOURCES)
    if not one or not two:
        return Target(
            name,
            "not measured",
            f"the sections '{ONE_SOURCE}' and '{TWO_SOURCES}' did not both run (see 'Not run on "
            "this branch')",
        )
    picks = {k: t.best_transfer("cold") for k, t in (("one", one), ("two", two))}
    if not picks["one"] or not picks["two"]:
        return Target(name, "not measured", "a section has no transfer row")
    v1 = one.test_mean(picks["one"][0], "cold") or 0.0
    v2 = two.test_mean(picks["two"][0], "cold") or 0.0
    verdict = "two sources do at least as well" if v2 >= v1 else "two sources do NOT beat one"
    return Target(
        name,
        _status(v2 >= v1),
        f"best on cold validation with one source: {picks['one'][0]} {v1:.4f}; with two: "
        f"{picks['two'][0]} {v2:.4f} ({v2 / v1 if v1 else 0:.2f}x): {verdict}.",
    )


def student_target(t: SectionTable) -> Target:
    name = f"student keeps >= {STUDENT_TARGET:.0%} of the teacher's NDCG@10"
    students = [n for n in t.runs if t.kind.get(n) == "distill"]
    if not students:
        return Target(name, "not measured", "no student row ran (distillation not on this branch)")
    student = students[0]
    teacher = t.teacher.get(student, "")
    if teacher not in t.runs:
        return Target(name, "not measured", f"the teacher row '{teacher}' is not in the table")
    parts, ok = [], True
    for group in GROUPS:
        s, te = t.test_mean(student, group), t.test_mean(teacher, group)
        if s is None or not te:
            continue
        ok &= s / te >= STUDENT_TARGET
        parts.append(f"{group} {s:.4f} / {te:.4f} = {s / te:.0%}")
    return Target(
        name,
        _status(ok) if parts else "not measured",
        f"{student} vs {teacher}: " + "; ".join(parts) + " (ONNX Runtime time per request: the "
        "distillation benchmark measures it).",
    )


def report_targets(variant: str, tables: dict[str, SectionTable]) -> list[Target]:
    main = tables.get(MAIN)
    targets = []
    if variant == "sparse":
        if main:
            targets.append(sparse_target(main))
    elif main:
        targets += [warm_target(main), cold_target(main), student_target(main)]
    targets.append(sources_target(tables))
    return targets


# -- outputs ---------------------------------------------------------------------------------------
def write_report(
    report: PlannedReport,
    store: ReportStore,
    plan: Plan,
    base_config: dict,
    seconds: float | None,
    complete: bool,
    plot: bool = True,
) -> dict:
    """Writes transfer.md and transfer.json (and transfer.png when ``plot``); returns the JSON."""
    tables = section_tables(report, store)
    by_name = {t.name: t for t in tables}
    targets = report_targets(report.variant.name, by_name)
    out_dir = store.path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = store.data.get("seconds")
    extra = {
        "benchmark": "transfer",
        "report": report.name,
        "variant": {
            "name": report.variant.name,
            "overrides": list(report.variant.overrides),
            "note": report.variant.note,
        },
        "seeds": plan.seeds,
        "base_config": base_config,
        "skipped": [s for s in plan.skipped if s.startswith(f"{report.name} ")],
        "complete": complete,
        "seconds": seconds if seconds is not None else previous,
        "run_seconds": run_seconds(store),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "derived": {t.name: derived(t) for t in tables},
        "targets": [x.to_json() for x in targets],
    }
    store.write(extra)
    (out_dir / "transfer.md").write_text(markdown(report, tables, targets, extra))
    if plot:
        write_plot(tables, out_dir / "transfer.png", report.name)
    return {**store.data, **extra}


def run_seconds(store: ReportStore) -> float:
    """Training and fitting time of every stored run and baseline (the cost of a fresh run of
    this report, whatever was resumed)."""
    total = 0.0
    for section in store.data["sections"].values():
        for record in ((section.get("baselines") or {}).get("records") or {}).values():
            total += sum(record.get("seconds", []))
        for row in section.get("rows", {}).values():
            total += sum(run.get("seconds", 0.0) for run in row.get("runs", {}).values())
    return total


def derived(t: SectionTable) -> dict:
    return {
        "summary": {label: r.summary() for label, r in t.runs.items()},
        "valid_ndcg@10": {
            label: {g or "pooled": t.valid_mean(label, g) for g in (*GROUPS, None)}
            for label in t.runs
        },
        "best_baseline": {g: t.best_reference(g) for g in GROUPS},
        "best_of_popularity_warm": t.best_reference("warm", POPULARITY_BASELINES),
        "best_transfer_on_validation": {g or "pooled": t.best_transfer(g) for g in (*GROUPS, None)},
    }


def markdown(
    report: PlannedReport, tables: list[SectionTable], targets: list[Target], extra: dict
) -> str:
    seconds = extra.get("seconds")
    took = f"; the runs in it took {extra['run_seconds'] / 60:.1f} min of training in total"
    if seconds:
        took += f" (the last invocation {seconds / 60:.1f} min wall)"
    parts = [
        f"# Transfer benchmark: {report.name}",
        "",
        f"Variant **{report.variant.name}** ({report.variant.note}); seeds {extra['seeds']}"
        f"{took}. Generated by `bench/transfer_benchmark.py` at {extra['written_at']}"
        + (
            ""
            if extra["complete"]
            else " (**partial**: some declared runs are not in the JSON: still going, interrupted or not run)"
        )
        + ".",
        "",
        "Each row's test NDCG@10 is divided by the best baseline's (the baseline with the highest "
        "test mean: the hardest bar); warm rows also by the best of popularity and recent "
        "popularity (window chosen on validation). The best transfer row is chosen on "
        "validation only. Cells are mean ± std over seeds (`± -`: one run).",
        "",
        "## Targets (issue 10)",
        "",
        *[t.line() for t in targets],
    ]
    for table in tables:
        stats = table.split.get("stats", {})
        parts += [
            "",
            f"## {table.name}" + (f": {table.note}" if table.note else ""),
            "",
            f"Split: **{table.split.get('split_method', '?')}**; "
            + ", ".join(f"{k}={v}" for k, v in stats.items()),
            "",
            "```",
            format_dataset_report(table.split.get("dataset_report", {})),
            "```",
            "",
            format_section(table),
            "",
            *selection_lines(table),
            "",
            "More metrics (test; coverage and novelty show a gain bought with blockbusters):",
            "",
            format_more_metrics(table.runs),
        ]
        notes = [f"- {name}: {r.notes}" for name, r in table.runs.items() if r.notes]
        if notes:
            parts += ["", *notes]
    if extra["skipped"]:
        parts += ["", "## Not run on this branch", "", *[f"- {s}" for s in extra["skipped"]]]
    return "\n".join(parts) + "\n"


def write_plot(tables: list[SectionTable], path: Path, title: str) -> None:
    """NDCG@10 per row, warm vs cold, error bars = std over seeds; one panel per section."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [t for t in tables if t.runs]
    if not tables:
        return
    heights = [max(2.5, 0.38 * len(t.runs) + 1.2) for t in tables]
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(10, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    axes = np.atleast_1d(axes)
    for ax, table in zip(axes, tables, strict=True):
        labels = list(table.runs)
        y = np.arange(len(labels))
        for offset, group, color in ((-0.2, "warm", "C0"), (0.2, "cold", "C1")):
            stats = [
                table.runs[n].summary().get(group, {}).get(METRIC, {"mean": 0, "std": 0})
                for n in labels
            ]
            ax.barh(
                y + offset,
                [s["mean"] for s in stats],
                0.4,
                xerr=[s["std"] for s in stats],
                capsize=2,
                color=color,
                label=group,
            )
        for group, color in (("warm", "C0"), ("cold", "C1")):
            ref = table.best_reference(group)
            if ref:
                ax.axvline(ref[1], color=color, linestyle="--", linewidth=1)
        ax.set_yticks(y, [f"{n} (baseline)" if table.runs[n].is_baseline else n for n in labels])
        ax.invert_yaxis()
        ax.set_xlabel("test NDCG@10 (mean ± std over seeds; dashed: best baseline per group)")
        ax.set_title(f"{title}: {table.name}")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
