"""From a raw request to the five model inputs (pure logic, no gRPC).

The contract is the model signature in docs/architecture.md:

* ``src_items`` / ``tgt_items``: int64 ``[1, L]`` vocabulary indices, most recent last; the
  stored history plus the request's ``recent_events`` merged by time, unknown items dropped, the
  last ``max_*_history`` kept. An empty history is ``[[0]]`` with mask ``[[0.0]]``.
* ``src_mask`` / ``tgt_mask``: float32 ``[1, L]``, 1.0 on real items.
* ``candidates``: int64 ``[1, C]`` target indices: the requested ids (ids not in the catalogue
  reported and dropped, duplicates dropped) or the whole catalogue when none are requested, then
  passed through the candidate filters (``services.encoder.filters``: by default seen items
  unless ``include_seen``, then ``exclude_item_ids``), so it holds exactly the items to score.

Also computed: ``candidate_indices`` (the same indices, flat: what each score belongs to),
``seen_indices`` (every target item the user interacted with) and the user status: WARM with
target history, COLD_START with only source history, UNKNOWN with neither.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from xdrec.common.v1 import tensor_pb2

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.validation import validate_user_id
from services.encoder.config import EncoderConfig
from services.encoder.feature_store import (
    EMPTY,
    FeatureStore,
    FeatureStoreUnavailable,
    History,
)
from services.encoder.filters import CandidatePipeline, CandidateSet, build_candidate_filters
from services.encoder.store_metrics import DEGRADED_ENCODES
from services.encoder.vocab import ModelVocabulary

WARM = tensor_pb2.USER_STATUS_WARM
COLD_START = tensor_pb2.USER_STATUS_COLD_START
UNKNOWN = tensor_pb2.USER_STATUS_UNKNOWN

INPUT_NAMES = ("src_items", "src_mask", "tgt_items", "tgt_mask", "candidates")


@dataclass(frozen=True)
class EncoderLimits:
    """Request limits (see ``EncoderConfig`` for their documented defaults)."""

    max_candidates: int = 5000
    max_excluded: int = 5000
    max_recent_events: int = 1000
    max_user_id_length: int = 256

    @classmethod
    def from_config(cls, config: EncoderConfig) -> EncoderLimits:
        return cls(
            max_candidates=config.max_candidates,
            max_excluded=config.max_excluded,
            max_recent_events=config.max_recent_events,
            max_user_id_length=config.max_user_id_length,
        )


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
    exclude_item_ids: Sequence[str] = ()
    include_seen: bool = False


@dataclass
class Encoded:
    """The model inputs and what the ranker needs besides them (``candidate_indices``: which
    catalogue item each score belongs to)."""

    inputs: dict[str, np.ndarray]
    candidate_indices: np.ndarray
    seen_indices: np.ndarray
    user_status: int
    unknown_candidate_ids: list[str] = field(default_factory=list)
    source_history_length: int = 0
    target_history_length: int = 0
    features_unavailable: bool = False
    """The store did not answer: encoded from the request's recent events only."""


def history_tensors(indices: list[int], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_length`` indices as ``[1, L]`` items and mask (``[[0]]``/``[[0.]]`` if empty)."""
    window = indices[-max_length:]
    if not window:
        return np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1), dtype=np.float32)
    items = np.asarray(window, dtype=np.int64).reshape(1, -1)
    return items, np.ones(items.shape, dtype=np.float32)


class Encoder:
    """Validates queries and encodes them for one model vocabulary and one feature store."""

    def __init__(
        self,
        vocab: ModelVocabulary,
        store: FeatureStore,
        limits: EncoderLimits,
        filters: CandidatePipeline | None = None,
    ) -> None:
        self.vocab = vocab
        self.store = store
        self.limits = limits
        self.filters = build_candidate_filters() if filters is None else filters

    @classmethod
    def from_config(
        cls, vocab: ModelVocabulary, store: FeatureStore, config: EncoderConfig
    ) -> Encoder:
        return cls(
            vocab,
            store,
            EncoderLimits.from_config(config),
            build_candidate_filters(config.candidate_filters),
        )

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
        if len(query.exclude_item_ids) > self.limits.max_excluded:
            raise ResourceExhausted(
                f"exclude_item_ids: {len(query.exclude_item_ids)} ids exceed the limit of "
                f"{self.limits.max_excluded}"
            )
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

    def _indices(self, stored: History, domain: str, recent: list[tuple[float, str]]) -> list[int]:
        """Stored history + recent events of ``domain``, merged by time, as known indices."""
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

    async def encode(self, query: EncodeQuery, now: float | None = None) -> Encoded:
        """Validates ``query``, awaits the user's histories and encodes (a bad request never
        reaches the store). A store that does not answer degrades the answer (flagged
        ``features_unavailable``) instead of failing it: the ranker then serves popularity."""
        self.validate(query)
        domains = (self.vocab.source_domain, self.vocab.target_domain)
        try:
            histories = await self.store.histories(query.user_id, domains)
        except FeatureStoreUnavailable:
            DEGRADED_ENCODES.inc()
            encoded = self.encode_histories(query, {}, now)
            encoded.features_unavailable = True
            return encoded
        return self.encode_histories(query, histories, now)

    def encode_histories(
        self, query: EncodeQuery, histories: Mapping[str, History], now: float | None = None
    ) -> Encoded:
        """Encodes a validated ``query`` given the user's stored histories (CPU only)."""
        now = time.time() if now is None else now
        source_domain, target_domain = self.vocab.source_domain, self.vocab.target_domain
        recent: dict[str, list[tuple[float, str]]] = {source_domain: [], target_domain: []}
        for event in query.recent_events:
            domain = event.domain or self.vocab.domain_of(event.item_id)
            if domain is not None:  # items unknown to both vocabularies are dropped
                recent[domain].append((event.timestamp or now, event.item_id))

        source = self._indices(
            histories.get(source_domain, EMPTY), source_domain, recent[source_domain]
        )
        target = self._indices(
            histories.get(target_domain, EMPTY), target_domain, recent[target_domain]
        )
        src_items, src_mask = history_tensors(source, self.vocab.features.max_source_history)
        tgt_items, tgt_mask = history_tensors(target, self.vocab.features.max_target_history)

        requested, unknown = self.candidates(query.candidate_item_ids)
        seen = np.unique(np.asarray(target, dtype=np.int64))
        candidates = self.filters.apply(
            CandidateSet(
                indices=requested,
                seen=seen,
                excluded=self.catalog_indices(query.exclude_item_ids),
                include_seen=query.include_seen,
            )
        ).indices
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
            seen_indices=seen,
            user_status=status,
            unknown_candidate_ids=unknown,
            source_history_length=int(src_mask.sum()),
            target_history_length=int(tgt_mask.sum()),
        )

    def candidates(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Catalogue indices of the requested ids (first occurrence wins) and the ids that are
        not in the catalogue."""
        if not item_ids:
            return self.vocab.catalog_indices, []
        index = self.vocab.catalog_index
        known: dict[int, None] = {}
        unknown: dict[str, None] = {}
        for item in item_ids:
            position = index.get(item)
            if position is None:
                unknown[item] = None
            else:
                known.setdefault(position, None)
        return np.fromiter(known, dtype=np.int64, count=len(known)), list(unknown)

    def catalog_indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """Catalogue indices of the ids the catalogue holds (the others are ignored)."""
        index = self.vocab.catalog_index
        found = [index[item] for item in item_ids if item in index]
        return np.asarray(found, dtype=np.int64)
