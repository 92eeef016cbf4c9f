"""A report's JSON as the store of finished runs: read at start (resume), rewritten after each run.

Layout (``<out>/<report>/transfer.json``; the report module adds the derived summaries, the
selection and the targets on every write)::

    sections.<name>.split                 fingerprint, sizes, split method, dataset report
    sections.<name>.baselines             {hash, records: {name: RunRecord.to_json()}}
    sections.<name>.rows.<label>.meta     family, strategy, baseline?, note, config, config_hash
    sections.<name>.rows.<label>.runs.<seed>  {hash, best_epoch, valid, test, curve, seconds}

A run is reused when its stored hash equals the planned one (same effective config, see
bench/transfer/plan.py); a section whose data fingerprint changed forgets all its runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.transfer.plan import PlannedRow, PlannedSection
from trainer.results_table import RunRecord

STORE_FILE = "transfer.json"


class ReportStore:
    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.data: dict = {"sections": {}}
        if path.exists() and not fresh:
            # Only the runs carry over; everything derived is recomputed on the next write (an
            # older report's other keys are dropped).
            old = json.loads(path.read_text())
            self.data = {"sections": old.get("sections", {}), "seconds": old.get("seconds")}

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"rows": {}, "baselines": None})

    # -- runs ------------------------------------------------------------------------------------
    def finished(self, section: str, row: PlannedRow, seed: int) -> dict | None:
        entry = self.section(section)["rows"].get(row.label, {}).get("runs", {}).get(str(seed))
        return entry if entry and entry.get("hash") == row.config_hash else None

    def pending(self, section: PlannedSection, seeds: list[int]) -> int:
        return sum(not self.finished(section.name, r, s) for s in seeds for r in section.rows)

    def record_run(self, section: str, row: PlannedRow, seed: int, entry: dict) -> None:
        stored = self.section(section)["rows"].setdefault(row.label, {"runs": {}})
        if stored.get("meta", {}).get("config_hash") != row.config_hash:
            # A changed row keeps only runs of its new config.
            stored["runs"] = {
                s: e for s, e in stored["runs"].items() if e.get("hash") == row.config_hash
            }
        stored["meta"] = row.meta()
        stored["runs"][str(seed)] = {"hash": row.config_hash, "seed": seed, **entry}

    # -- splits and baselines --------------------------------------------------------------------
    def set_split(self, section: str, info: dict) -> None:
        stored = self.section(section)
        old = stored.get("split", {}).get("fingerprint")
        if old and old != info["fingerprint"]:
            stored["rows"], stored["baselines"] = {}, None  # other data: nothing carries over
        stored["split"] = info

    def baselines(self, section: str, hash_: str) -> dict[str, RunRecord] | None:
        stored = self.section(section).get("baselines")
        if not stored or stored.get("hash") != hash_:
            return None
        return {name: record_from_json(name, r) for name, r in stored["records"].items()}

    def record_baselines(self, section: str, hash_: str, records: dict[str, RunRecord]) -> None:
        self.section(section)["baselines"] = {
            "hash": hash_,
            "records": {name: r.to_json() for name, r in records.items()},
        }

    def write(self, extra: dict) -> None:
        """Writes the store plus ``extra`` (derived figures) atomically (a reader never sees half)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**self.data, **extra}, indent=2))
        tmp.replace(self.path)


def record_from_json(name: str, raw: dict) -> RunRecord:
    return RunRecord(
        name,
        test=list(raw.get("test", [])),
        valid=list(raw.get("valid", [])),
        seconds=list(raw.get("seconds", [])),
        is_baseline=bool(raw.get("baseline", True)),
        notes=raw.get("notes", ""),
    )


def row_record(label: str, stored: dict) -> tuple[RunRecord, list[int], list[int]]:
    """A stored row as a RunRecord (runs in seed order), its seeds and best epochs."""
    meta = stored.get("meta", {})
    runs = [stored["runs"][k] for k in sorted(stored.get("runs", {}), key=int)]
    record = RunRecord(
        label,
        test=[r["test"] for r in runs],
        valid=[r["valid"] for r in runs],
        curves=[r.get("curve", []) for r in runs],
        seconds=[r.get("seconds", 0.0) for r in runs],
        is_baseline=bool(meta.get("baseline", False)),
        notes=meta.get("note", ""),
    )
    return record, [r["seed"] for r in runs], [r.get("best_epoch", 0) for r in runs]
