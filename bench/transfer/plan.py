"""The runs of one benchmark invocation: declared variants resolved into concrete configs.

Every row gets its effective ``ExperimentConfig`` (base config + dataset variant + source
setting + family + strategy overrides) and a hash of it: a finished run in the report's JSON
with the same hash is not run again (resume), a changed config runs anew.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.transfer.variants import (
    DATASET_VARIANTS,
    EXTRA_ROWS,
    FAMILIES,
    SOURCE_SETTINGS,
    STRATEGY_ROWS,
    DatasetVariant,
    SourceSetting,
    row_label,
)
from trainer.config import ExperimentConfig, apply_overrides
from trainer.config_checks import config_problems

ROOT = Path(__file__).resolve().parents[2]
# A strategy every branch registers: stands in for rows trained outside the strategy registry
# (the distilled student) when their config is checked.
CHECK_STRATEGY = "target_only"
# Config sections added after runs were stored (hashes of runs that do not use them must not move).
LATER_SECTIONS = ("fusion",)


@dataclass
class PlannedRow:
    label: str  # "<family> · <strategy label>" or an extra row's label
    family: str
    strategy: str  # a registered strategy, or the extra row's kind ("distill")
    kind: str  # "strategy" | "distill"
    config: ExperimentConfig
    baseline: bool = False
    note: str = ""
    teacher: str | None = None
    config_hash: str = ""

    def meta(self) -> dict:
        return {
            "family": self.family,
            "strategy": self.strategy,
            "kind": self.kind,
            "baseline": self.baseline,
            "note": self.note,
            "teacher": self.teacher,
            "config_hash": self.config_hash,
            "config": self.config.to_dict(),
        }


@dataclass
class PlannedSection:
    """One split of a report and the rows trained on it."""

    name: str
    config: ExperimentConfig  # data / split / baselines of the section
    rows: list[PlannedRow] = field(default_factory=list)
    note: str = ""

    @property
    def baselines_hash(self) -> str:
        c = settings(self.config)
        return config_hash(
            {k: c[k] for k in ("data", "split", "baselines")} | {"seeds": self.config.train.seeds}
        )


@dataclass
class PlannedReport:
    """One dataset variant: one markdown table per section, one JSON, one plot."""

    name: str  # e.g. "ml1m-sparse": the folder under --out
    variant: DatasetVariant
    sections: list[PlannedSection] = field(default_factory=list)


@dataclass
class Plan:
    reports: list[PlannedReport]
    seeds: list[int]
    skipped: list[str]  # one line per variant left out, with the reason


def config_hash(value: dict) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings(config: ExperimentConfig | dict) -> dict[str, dict]:
    """Per section, the fields that differ from the defaults. Hashing these (not the whole
    config) means a field added later whose default keeps the old behaviour does not orphan the
    runs already stored; changing a default's *value* is not noticed: ``--fresh`` then."""
    c = config if isinstance(config, dict) else config.to_dict()
    defaults = ExperimentConfig().to_dict()
    missing = object()
    out = {
        section: {k: v for k, v in values.items() if defaults[section].get(k, missing) != v}
        for section, values in c.items()
        if isinstance(values, dict) and section in defaults
    }
    # A config section added later is left out while at its defaults, for the same reason.
    return {k: v for k, v in out.items() if v or k not in LATER_SECTIONS}


def run_hash(config: ExperimentConfig | dict, kind: str, teacher_hash: str = "") -> str:
    """The hash a finished run is stored under: its settings without the seed list (each seed
    is stored on its own) and thread count, what kind of row it is, and its teacher's hash."""
    c = copy.deepcopy(settings(config))
    c["train"].pop("seeds", None)
    c["train"].pop("num_threads", None)  # threads change speed, not results
    return config_hash({"config": c, "kind": kind, "teacher": teacher_hash})


def limit_sources(config: ExperimentConfig, n: int) -> None:
    """Keeps the first ``n`` source domains of a multi-source config (``data.source_domains``):
    the later ones are disabled when the config can switch a source off, else dropped."""
    sources = getattr(config.data, "source_domains", None)
    if not sources:
        raise ValueError("the config lists no data.source_domains (one source domain only)")
    if len(sources) < n:
        raise ValueError(f"the config lists {len(sources)} source domain(s), fewer than {n}")
    if all(hasattr(s, "enabled") for s in sources):
        for k, s in enumerate(sources):
            s.enabled = s.enabled and k < n
    else:
        config.data.source_domains = sources[:n]


def section_config(
    base: ExperimentConfig, stem: str, variant: DatasetVariant, setting: SourceSetting
) -> ExperimentConfig:
    """The config of one section; ValueError / FileNotFoundError says why it cannot run here."""
    if setting.config is None:
        config = copy.deepcopy(base)
    else:
        path = ROOT / setting.config.format(stem=stem)
        if not path.exists():
            raise FileNotFoundError(f"{path.relative_to(ROOT)} does not exist on this branch")
        config = ExperimentConfig.load(path)
    config = apply_overrides(config, list(variant.overrides))
    if setting.max_sources is not None:
        limit_sources(config, setting.max_sources)
    return config


def _matches(filters: list[str] | None, *names: str) -> bool:
    return not filters or any(f in names for f in filters)


def build_plan(
    base: ExperimentConfig,
    stem: str,
    seeds: list[int],
    only_rows: list[str] | None = None,
    only_variants: list[str] | None = None,
    only_sections: list[str] | None = None,
) -> Plan:
    """Resolves the declared variants against this branch; filters keep only the named ones
    (rows by full label, strategy label or family; variants and sections by name)."""
    skipped: list[str] = []
    reports = []
    for variant in DATASET_VARIANTS:
        if not _matches(only_variants, variant.name):
            continue
        report = PlannedReport(f"{stem}{variant.suffix}", variant)
        for setting in SOURCE_SETTINGS:
            if not _matches(only_sections, setting.name):
                continue
            try:
                config = section_config(base, stem, variant, setting)
            except (ValueError, FileNotFoundError) as error:
                skipped.append(f"{report.name} / {setting.name}: {error}")
                continue
            config.train.seeds = list(seeds)
            section = PlannedSection(setting.name, config, note=setting.note)
            section.rows = _section_rows(section, setting, only_rows, skipped, report.name)
            report.sections.append(section)
        if report.sections:
            reports.append(report)
    return Plan(reports, list(seeds), skipped)


def _section_rows(
    section: PlannedSection,
    setting: SourceSetting,
    only_rows: list[str] | None,
    skipped: list[str],
    report_name: str,
) -> list[PlannedRow]:
    where = f"{report_name} / {section.name}"
    rows: list[PlannedRow] = []
    for family in FAMILIES:
        family_rows = [t for t in STRATEGY_ROWS if setting.rows is None or t.label in setting.rows]
        problem = _config_or_problem(section.config, list(family.overrides))
        if family_rows and isinstance(problem, str):  # the family itself is not on this branch
            skipped.append(f"{where}: family {family.name} ({len(family_rows)} rows): {problem}")
            continue
        for template in family_rows:
            label = row_label(family.name, template.label)
            if not _matches(only_rows, label, template.label, family.name):
                continue
            overrides = [*family.overrides, *template.overrides]
            overrides.append(f"train.strategy={template.strategy}")
            problem = _config_or_problem(section.config, overrides)
            if isinstance(problem, str):
                skipped.append(f"{where}: {label}: {problem}")
                continue
            rows.append(
                PlannedRow(
                    label,
                    family.name,
                    template.strategy,
                    "strategy",
                    problem,
                    baseline=family.name in template.baseline_for,
                    note=template.note,
                )
            )
    by_label = {r.label: r for r in rows}
    for extra in EXTRA_ROWS:
        if setting.rows is not None and extra.label not in setting.rows:
            continue
        if not _matches(only_rows, extra.label, extra.family, extra.kind):
            continue
        if extra.kind == "distill" and importlib.util.find_spec("trainer.distillation") is None:
            skipped.append(f"{where}: {extra.label}: trainer.distillation is not on this branch")
            continue
        teacher = by_label.get(extra.teacher)
        if teacher is None:
            skipped.append(f"{where}: {extra.label}: its teacher '{extra.teacher}' is not run")
            continue
        # The student reads the teacher's history windows (what serving feeds the teacher).
        overrides = [
            f"model.max_source_history={teacher.config.model.max_source_history}",
            f"model.max_target_history={teacher.config.model.max_target_history}",
            *extra.overrides,
            f"train.strategy={CHECK_STRATEGY}",
        ]
        family = next((f for f in FAMILIES if f.name == extra.family), None)
        overrides = [*(family.overrides if family else ()), *overrides]
        problem = _config_or_problem(section.config, overrides)
        if isinstance(problem, str):
            skipped.append(f"{where}: {extra.label}: {problem}")
            continue
        rows.append(
            PlannedRow(
                extra.label,
                extra.family,
                extra.kind,
                extra.kind,
                problem,
                note=extra.note,
                teacher=teacher.label,
            )
        )
    for row in rows:
        teacher_hash = by_label[row.teacher].config_hash if row.teacher else ""
        row.config_hash = run_hash(row.config, row.kind, teacher_hash)
    return rows


def _config_or_problem(base: ExperimentConfig, overrides: list[str]) -> ExperimentConfig | str:
    try:
        config = apply_overrides(base, overrides)
    except (ValueError, TypeError) as error:
        return str(error).split("; known:")[0]
    problems = config_problems(config)
    return "; ".join(problems) if problems else config
