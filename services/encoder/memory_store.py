"""The embedded feature store: every history in process memory, loaded once from a snapshot.

Snapshot format (docs/architecture.md): tab-separated with the header
``user_id  domain  item_id  timestamp``; rows in any order. The store keeps each user's items per
domain sorted by time (ties keep file order).

Online writes (``RecordEvents``) change only this process's memory: replicas do not share them
and a restart forgets them (the Redis store is the shared, durable one).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

from services.encoder.feature_store import (
    EMPTY,
    AppendResult,
    FeatureStoreConfig,
    FeatureStoreError,
    History,
    StoredEvent,
)

log = logging.getLogger("xdrec.encoder.features")

COLUMNS = ("user_id", "domain", "item_id", "timestamp")


class InMemoryFeatureStore:
    """All histories in process memory, loaded once from a snapshot."""

    def __init__(
        self,
        histories: dict[tuple[str, str], History] | None = None,
        config: FeatureStoreConfig | None = None,
    ) -> None:
        self._histories = histories or {}
        self.config = config or FeatureStoreConfig()
        # Online events' ids and kinds, keyed by (user, domain, item, timestamp), for export.
        self._recorded: dict[tuple[str, str, str, float], tuple[str, str]] = {}
        # Accepted event ids per user with their acceptance time (idempotency window).
        self._event_ids: dict[str, dict[str, float]] = defaultdict(dict)

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        return {domain: self._histories.get((user_id, domain), EMPTY) for domain in domains}

    async def append(self, user_id: str, events: Sequence[StoredEvent]) -> AppendResult:
        """Synchronous inside: on one event loop the batch is applied atomically."""
        now = time.time()
        seen = self._event_ids[user_id]
        expired = [eid for eid, at in seen.items() if now - at > self.config.event_id_ttl_s]
        for eid in expired:
            del seen[eid]
        fresh: dict[str, list[StoredEvent]] = defaultdict(list)
        duplicates = 0
        for event in events:
            if event.event_id in seen:
                duplicates += 1
                continue
            seen[event.event_id] = now
            fresh[event.domain].append(event)
        for domain, new in fresh.items():
            key = (user_id, domain)
            old = self._histories.get(key, EMPTY)
            merged = sorted(
                [*zip(old.timestamps, old.items, strict=True)]
                + [(e.timestamp, e.item_id) for e in new],
                key=lambda pair: pair[0],  # stable: equal times keep arrival order
            )[-self.config.max_history :]
            self._histories[key] = History(
                items=tuple(item for _, item in merged),
                timestamps=tuple(ts for ts, _ in merged),
            )
            for e in new:
                self._recorded[(user_id, domain, e.item_id, e.timestamp)] = (e.event_id, e.kind)
        return AppendResult(accepted=len(events) - duplicates, duplicates=duplicates)

    async def forget(self, user_id: str) -> int:
        keys = [key for key in self._histories if key[0] == user_id]
        deleted = sum(len(self._histories.pop(key)) for key in keys)
        self._event_ids.pop(user_id, None)
        for key in [k for k in self._recorded if k[0] == user_id]:
            del self._recorded[key]
        return deleted

    async def events(self, user_id: str | None = None) -> AsyncIterator[tuple[str, StoredEvent]]:
        for (user, domain), history in list(self._histories.items()):
            if user_id is not None and user != user_id:
                continue
            for item, timestamp in zip(history.items, history.timestamps, strict=True):
                event_id, kind = self._recorded.get((user, domain, item, timestamp), ("", ""))
                yield user, StoredEvent(event_id, domain, item, timestamp, kind)

    async def ping(self) -> None:
        """Always answers: the histories are in this process."""

    async def close(self) -> None:
        """Nothing to release: the histories live as long as the process."""

    def stats(self) -> dict[str, int]:
        return {
            "users": len({user for user, _ in self._histories}),
            "events": sum(len(h) for h in self._histories.values()),
        }

    @classmethod
    def from_events(
        cls,
        rows: Sequence[tuple[str, str, str, float]],
        config: FeatureStoreConfig | None = None,
    ) -> InMemoryFeatureStore:
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
        return cls(histories, config)

    @classmethod
    def from_snapshot(
        cls, path: str | Path, config: FeatureStoreConfig | None = None
    ) -> InMemoryFeatureStore:
        """The store of a snapshot, or an empty one (every user UNKNOWN) without one."""
        if not path:
            log.warning("no --features snapshot given: every user starts without stored history")
            return cls(config=config)
        return cls.from_tsv(path, config)

    @classmethod
    def from_tsv(
        cls, path: str | Path, config: FeatureStoreConfig | None = None
    ) -> InMemoryFeatureStore:
        """Loads a features.tsv snapshot; raises FeatureStoreError naming the bad line."""
        store = cls.from_events(list(read_snapshot(path)), config)
        log.info("feature store loaded", extra={"path": str(path), **store.stats()})
        return store


def read_snapshot(path: str | Path) -> Iterator[tuple[str, str, str, float]]:
    """The ``(user_id, domain, item_id, timestamp)`` rows of a features.tsv snapshot, in file
    order; raises FeatureStoreError naming the bad line."""
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
            yield user, domain, item, timestamp
