"""From a raw request to the five model inputs (pure logic, no gRPC).

The contract is the model signature in docs/architecture.md:

* ``src_items`` / ``tgt_items``: int64 ``[1, L]`` vocabulary indices, most recent last; the
  stored history plus the request's ``recent_events`` merged by time, unknown items dropped, the
  last ``max_*_history`` kept. An empty history is ``[[0]]`` with mask ``[[0.0]]``.
* ``src_mask`` / ``tgt_mask``: float32 ``[1, L]``, 1.0 on real items.
* ``candidates``: int64 ``[1, C]`` target indices: the requested ids (unknown ones reported and
  dropped, duplicates dropped) or the whole catalogue when none are requested.

Also computed: ``seen_indices`` (every target item the user interacted with, for the ranker's
seen-exclusion) and the user status: WARM with target history, COLD_START with only source
history, UNKNOWN with neither.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from xdrec.common.v1 import tensor_pb2

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.validation import validate_user_id
from services.encoder.feature_store import FeatureStore, History
from services.encoder.vocab import ModelVocabulary

WARM = tensor_pb2.USER_STATUS_WARM
COLD_START = tensor_pb2.USER_STATUS_COLD_START
UNKNOWN = tensor_pb2.USER_STATUS_UNKNOWN

INPUT_NAMES = ("src_items", "src_mask", "tgt_items", "tgt_mask", "candidates")


@dataclass(frozen=True)
class EncoderLimits:
    """Request limits (see ``EncoderConfig`` for their documented defaults)."""

    max_candidates: int = 5000
    max_recent_events: int = 1000
    max_user_id_length: int = 256


@dataclass(frozen=True)
class RecentEvent:
    """An interaction supplied with the request; empty domain = look it up, timestamp 0 = now."""

    item_id: str
    domain: str = ""
    timestamp: float = 0.0


@dataclass(frozen=True)
class EncodeQuery:
    """What the encoder needs from an EncodeRequest."""

    user_id: str
    domain: str = ""
    candidate_item_ids: Sequence[str] = ()
    recent_events: Sequence[RecentEvent] = ()


@dataclass
class Encoded:
    """The model inputs and what the ranker needs besides them."""

    inputs: dict[str, np.ndarray]
    candidate_indices: np.ndarray
    seen_indices: np.ndarray
    user_status: int
    unknown_candidate_ids: list[str] = field(default_factory=list)
    source_history_length: int = 0
    target_history_length: int = 0


def history_tensors(indices: list[int], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_length`` indices as ``[1, L]`` items and mask (``[[0]]``/``[[0.]]`` if empty)."""
    window = indices[-max_length:]
    if not window:
        return np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.float32)
    items = np.asarray(window, dtype=np.int64).reshape(1, -1)
    return items, np.ones(items.shape, dtype=np.float32)


class Encoder:
    """Validates queries and encodes them for one model vocabulary and one feature store."""

    def __init__(self, vocab: ModelVocabulary, store: FeatureStore, limits: EncoderLimits) -> None:
        self.vocab = vocab
        self.store = store
        self.limits = limits

    # -- validation ---------------------------------------------------------------------------

    def validate(self, query: EncodeQuery) -> None:
        """Raises INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the offending field."""
        validate_user_id(query.user_id, self.limits.max_user_id_length)
        self.check_domain(query.domain)
        if len(query.candidate_item_ids) > self.limits.max_candidates:
            raise ResourceExhausted(
                f"candidate_item_ids: {len(query.candidate_item_ids)} candidates exceed the limit "
                f"of {self.limits.max_candidates}"
            )
        for i, item in enumerate(query.candidate_item_ids):
            if not item:
                raise InvalidArgument(f"candidate_item_ids[{i}]", "empty item id")
        if len(query.recent_events) > self.limits.max_recent_events:
            raise ResourceExhausted(
                f"recent_events: {len(query.recent_events)} events exceed the limit of "
                f"{self.limits.max_recent_events}"
            )
        allowed = ("", self.vocab.source_domain, self.vocab.target_domain)
        for i, event in enumerate(query.recent_events):
            if not event.item_id:
                raise InvalidArgument(f"recent_events[{i}].item_id", "empty item id")
            if event.domain not in allowed:
                raise InvalidArgument(
                    f"recent_events[{i}].domain",
                    f"'{event.domain}' is neither '{self.vocab.source_domain}' nor "
                    f"'{self.vocab.target_domain}' (or empty to look it up)",
                )
            if not math.isfinite(event.timestamp) or event.timestamp < 0:
                raise InvalidArgument(
                    f"recent_events[{i}].timestamp", "must be unix seconds >= 0 (0 = now)"
                )

    def check_domain(self, domain: str) -> None:
        """The model recommends in its target domain only."""
        if domain and domain != self.vocab.target_domain:
            raise InvalidArgument(
                "domain",
                f"'{domain}' is not served; model '{self.vocab.name}' recommends in "
                f"'{self.vocab.target_domain}' (or leave it empty)",
            )

    # -- encoding -----------------------------------------------------------------------------

    def _indices(self, user_id: str, domain: str, recent: list[tuple[float, str]]) -> list[int]:
        """Stored history + recent events of ``domain``, merged by time, as known indices."""
        stored: History = self.store.history(user_id, domain)
        index = self.vocab.index_map(domain)
        if recent:
            merged = sorted(
                [*zip(stored.timestamps, stored.items, strict=True), *recent],
                key=lambda event: event[0],
            )
            items: Sequence[str] = [item for _, item in merged]
        else:
            items = stored.items
        return [i for i in (index.get(item, 0) for item in items) if i > 0]

    def encode(self, query: EncodeQuery, now: float | None = None) -> Encoded:
        """Validates and encodes ``query``."""
        self.validate(query)
        now = time.time() if now is None else now
        source_domain, target_domain = self.vocab.source_domain, self.vocab.target_domain
        recent: dict[str, list[tuple[float, str]]] = {source_domain: [], target_domain: []}
        for event in query.recent_events:
            domain = event.domain or self.vocab.domain_of(event.item_id)
            if domain is not None:  # items unknown to both vocabularies are dropped
                recent[domain].append((event.timestamp or now, event.item_id))

        source = self._indices(query.user_id, source_domain, recent[source_domain])
        target = self._indices(query.user_id, target_domain, recent[target_domain])
        src_items, src_mask = history_tensors(source, self.vocab.features.max_source_history)
        tgt_items, tgt_mask = history_tensors(target, self.vocab.features.max_target_history)

        candidates, unknown = self.candidates(query.candidate_item_ids)
        status = WARM if target else COLD_START if source else UNKNOWN
        return Encoded(
            inputs={
                "src_items": src_items,
                "src_mask": src_mask,
                "tgt_items": tgt_items,
                "tgt_mask": tgt_mask,
                "candidates": candidates.reshape(1, -1),
            },
            candidate_indices=candidates,
            seen_indices=np.unique(np.asarray(target, dtype=np.int64)),
            user_status=status,
            unknown_candidate_ids=unknown,
            source_history_length=int(src_mask.sum()),
            target_history_length=int(tgt_mask.sum()),
        )

    def candidates(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Indices of the requested ids (first occurrence wins) and the unknown ids."""
        if not item_ids:
            return self.vocab.catalog_indices, []
        index = self.vocab.target_index
        known: dict[int, None] = {}
        unknown: dict[str, None] = {}
        for item in item_ids:
            position = index.get(item)
            if position is None:
                unknown[item] = None
            else:
                known.setdefault(position, None)
        return np.fromiter(known, dtype=np.int64, count=len(known)), list(unknown)
