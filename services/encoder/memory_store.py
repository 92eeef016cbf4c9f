"""The embedded feature store: every history in process memory, loaded once from a snapshot.

Snapshot format (docs/architecture.md): tab-separated with the header
``user_id  domain  item_id  timestamp``; rows in any order. The store keeps each user's items per
domain sorted by time (ties keep file order).
"""

from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.encoder.feature_store import EMPTY, FeatureStoreError, History

log = logging.getLogger("xdrec.encoder.features")

COLUMNS = ("user_id", "domain", "item_id", "timestamp")


class InMemoryFeatureStore:
    """All histories in process memory, loaded once from a snapshot."""

    def __init__(self, histories: dict[tuple[str, str], History] | None = None) -> None:
        self._histories = histories or {}

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        return {domain: self._histories.get((user_id, domain), EMPTY) for domain in domains}

    async def close(self) -> None:
        """Nothing to release: the histories live as long as the process."""

    def stats(self) -> dict[str, int]:
        return {
            "users": len({user for user, _ in self._histories}),
            "events": sum(len(h) for h in self._histories.values()),
        }

    @classmethod
    def from_events(cls, rows: Sequence[tuple[str, str, str, float]]) -> InMemoryFeatureStore:
        """Builds the store from ``(user_id, domain, item_id, timestamp)`` rows."""
        grouped: dict[tuple[str, str], list[tuple[float, int, str]]] = defaultdict(list)
        for order, (user, domain, item, timestamp) in enumerate(rows):
            grouped[(user, domain)].append((timestamp, order, item))
        histories = {}
        for key, events in grouped.items():
            events.sort()
            histories[key] = History(
                items=tuple(item for _, _, item in events),
                timestamps=tuple(ts for ts, _, _ in events),
            )
        return cls(histories)

    @classmethod
    def from_snapshot(cls, path: str | Path) -> InMemoryFeatureStore:
        """The store of a snapshot, or an empty one (every user UNKNOWN) without one."""
        if not path:
            log.warning("no --features snapshot given: every user starts without stored history")
            return cls()
        return cls.from_tsv(path)

    @classmethod
    def from_tsv(cls, path: str | Path) -> InMemoryFeatureStore:
        """Loads a features.tsv snapshot; raises FeatureStoreError naming the bad line."""
        rows: list[tuple[str, str, str, float]] = []
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise FeatureStoreError(f"{path}: empty file, expected a header {COLUMNS}")
            header = [h.strip() for h in header]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise FeatureStoreError(f"{path}: header lacks column(s) {missing}")
            positions = [header.index(c) for c in COLUMNS]
            width = max(positions) + 1
            for line_no, row in enumerate(reader, start=2):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) < width:
                    raise FeatureStoreError(
                        f"{path}:{line_no}: {len(row)} fields, expected {len(header)}"
                    )
                user, domain, item, raw_ts = (row[p].strip() for p in positions)
                try:
                    timestamp = float(raw_ts)
                except ValueError:
                    raise FeatureStoreError(
                        f"{path}:{line_no}: timestamp {raw_ts!r} is not a number"
                    ) from None
                if not user or not domain or not item or not math.isfinite(timestamp):
                    raise FeatureStoreError(
                        f"{path}:{line_no}: empty user, domain or item, or bad timestamp"
                    )
                rows.append((user, domain, item, timestamp))
        store = cls.from_events(rows)
        log.info("feature store loaded", extra={"path": str(path), **store.stats()})
        return store
