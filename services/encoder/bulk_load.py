"""Bulk-loads a features snapshot (features.tsv or Parquet) into the Redis feature store.

Why batches of rows grouped per user: one pipeline per batch keeps the round trips few (the
ML-1M snapshot is a million rows) while memory stays bounded. Snapshot rows get content-derived
event ids (``redis_store.snapshot_event_ids``), so loading the same snapshot twice adds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from services.encoder.feature_store import FeatureStoreError
from services.encoder.memory_store import COLUMNS, read_snapshot
from services.encoder.redis_store import RedisFeatureStore, snapshot_event_id

Row = tuple[str, str, str, float]


@dataclass(frozen=True)
class LoadProgress:
    """Where a load stands (passed to the progress callback after every batch)."""

    rows: int
    added: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def read_rows(path: str | Path) -> Iterator[Row]:
    """The snapshot's ``(user_id, domain, item_id, timestamp)`` rows: ``.parquet`` through
    pyarrow (columns as in features.tsv), anything else as features.tsv."""
    if str(path).endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise FeatureStoreError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        table = pq.read_table(path)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise FeatureStoreError(f"{path}: lacks column(s) {missing}")
        columns = [table.column(c).to_pylist() for c in COLUMNS]
        for user, domain, item, ts in zip(*columns, strict=True):
            yield str(user), str(domain), str(item), float(ts)
        return
    yield from read_snapshot(path)


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


async def load_snapshot(
    store: RedisFeatureStore,
    rows: Iterable[Row],
    batch_size: int = 20_000,
    progress: Callable[[LoadProgress], None] | None = None,
) -> LoadProgress:
    """Writes every row; returns the totals (``added`` = members that were new).

    Event ids are derived per user across the whole snapshot: a row repeated in the file keeps
    its repetition, and ids never depend on how the rows fall into batches.
    """
    start = time.perf_counter()
    done = added = 0
    ids_of = _SnapshotIds()
    for batch in _batches(rows, batch_size):
        added += await store.load(batch, ids_of(batch))
        done += len(batch)
        if progress is not None:
            progress(LoadProgress(done, added, time.perf_counter() - start))
    return LoadProgress(done, added, time.perf_counter() - start)


class _SnapshotIds:
    """``snapshot_event_ids`` with the occurrence counts carried across batches."""

    def __init__(self) -> None:
        self._count: dict[Row, int] = {}

    def __call__(self, batch: list[Row]) -> list[str]:
        ids = []
        for row in batch:
            n = self._count.get(row, 0) + 1
            self._count[row] = n
            ids.append(snapshot_event_id(row, n))
        return ids
