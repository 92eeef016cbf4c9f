"""Small generic-format logs written to temporary files, for data-check and baseline tests."""

from __future__ import annotations

import csv
from pathlib import Path

from trainer.config import ExperimentConfig


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def two_domain_rows(users: int = 40, timestamps: bool = True) -> list[dict]:
    """Every user: 5 source and 5 target interactions among 10 items per domain, one per hour;
    no source item shares its user set with a target item (Jaccard <= 0.67)."""
    rows = []
    for u in range(users):
        for k in range(5):
            for domain, prefix in (("source", "s"), ("target", "t")):
                row = {
                    "user_id": f"u{u}",
                    "item_id": f"{prefix}{(u + k * 3) % 10 if prefix == 's' else (u * 3 + k * 7) % 10}",
                    "domain": domain,
                }
                if timestamps:
                    row["timestamp"] = str(
                        1_000_000 + 3600 * (u * 10 + k * 2 + (domain == "target"))
                    )
                rows.append(row)
    return rows


def generic_config(interactions: Path, items: Path | None = None, **data) -> ExperimentConfig:
    config = ExperimentConfig(name="generic-test")
    config.data.dataset = "generic"
    config.data.interactions_path = str(interactions)
    config.data.items_path = str(items) if items else None
    for key, value in data.items():
        setattr(config.data, key, value)
    return config
