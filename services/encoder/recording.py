"""RecordEvents and ForgetUser: validate events, then write them to the feature store.

Why validation lives in the encoder: it knows the model's domains, and the store is its own.
A batch is checked completely before anything is written, so a bad event never leaves half a
batch behind; the write is acknowledged only after the store accepted it, and a store that does
not answer is UNAVAILABLE (retryable: the event ids make a retry count once).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from xdrec.common.v1 import events_pb2

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.common.validation import validate_user_id
from services.encoder.config import EncoderConfig
from services.encoder.feature_store import (
    AppendResult,
    FeatureStore,
    FeatureStoreUnavailable,
    StoredEvent,
)
from services.encoder.store_metrics import RECORDED_EVENTS
from services.encoder.user_hash import UserHasher

log = logging.getLogger("xdrec.encoder.events")

KINDS = {
    events_pb2.EVENT_KIND_VIEW: "view",
    events_pb2.EVENT_KIND_CLICK: "click",
    events_pb2.EVENT_KIND_PURCHASE: "purchase",
}
FORBIDDEN = "\x1f"  # the Redis member separator


@dataclass(frozen=True)
class EventLimits:
    """What RecordEvents accepts (defaults documented on ``EncoderConfig``)."""

    max_events: int = 500
    max_age_s: float = 30 * 24 * 3600.0
    max_clock_skew_s: float = 300.0
    max_user_id_length: int = 256
    max_id_length: int = 256

    @classmethod
    def from_config(cls, config: EncoderConfig) -> EventLimits:
        return cls(
            max_events=config.max_record_events,
            max_age_s=config.max_event_age_s,
            max_clock_skew_s=config.max_clock_skew_s,
            max_user_id_length=config.max_user_id_length,
        )


def _check_id(field: str, value: str, max_length: int) -> None:
    if not value:
        raise InvalidArgument(field, "required (a non-empty string)")
    if len(value) > max_length:
        raise InvalidArgument(field, f"{len(value)} characters exceed the limit of {max_length}")
    if FORBIDDEN in value:
        raise InvalidArgument(field, "must not contain the control character U+001F")


def validate_events(
    request: events_pb2.RecordEventsRequest,
    domains: Sequence[str],
    limits: EventLimits,
    now: float | None = None,
) -> list[StoredEvent]:
    """The request's events as store events; INVALID_ARGUMENT / RESOURCE_EXHAUSTED naming the
    first offending field."""
    now = time.time() if now is None else now
    validate_user_id(request.user_id, limits.max_user_id_length)
    if not request.events:
        raise InvalidArgument("events", "required (at least one event)")
    if len(request.events) > limits.max_events:
        raise ResourceExhausted(
            f"events: {len(request.events)} events exceed the limit of {limits.max_events} "
            "per call (split the batch)"
        )
    events = []
    for i, event in enumerate(request.events):
        field = f"events[{i}]"
        _check_id(f"{field}.event_id", event.event_id, limits.max_id_length)
        _check_id(f"{field}.item_id", event.item_id, limits.max_id_length)
        if event.domain not in domains:
            raise InvalidArgument(
                f"{field}.domain",
                f"'{event.domain}' is not a domain of the served model (expected one of: "
                f"{', '.join(domains)})",
            )
        kind = KINDS.get(event.kind)
        if kind is None:
            raise InvalidArgument(f"{field}.kind", "required: VIEW, CLICK or PURCHASE")
        timestamp = event.timestamp or now
        if not math.isfinite(timestamp) or timestamp < 0:
            raise InvalidArgument(f"{field}.timestamp", "must be unix seconds >= 0 (0 = now)")
        if timestamp > now + limits.max_clock_skew_s:
            raise InvalidArgument(
                f"{field}.timestamp",
                f"{timestamp:.0f} is {timestamp - now:.0f} s in the future (allowed clock skew: "
                f"{limits.max_clock_skew_s:.0f} s)",
            )
        if timestamp < now - limits.max_age_s:
            raise InvalidArgument(
                f"{field}.timestamp",
                f"{timestamp:.0f} is older than the accepted {limits.max_age_s:.0f} s "
                "(unix seconds expected, not milliseconds or a training-log time)",
            )
        events.append(StoredEvent(event.event_id, event.domain, event.item_id, timestamp, kind))
    return events


class EventRecorder:
    """Writes validated events to the store and deletes users from it."""

    def __init__(self, store: FeatureStore, limits: EventLimits, hasher: UserHasher) -> None:
        self.store = store
        self.limits = limits
        self.hasher = hasher

    async def record(
        self, request: events_pb2.RecordEventsRequest, domains: Sequence[str]
    ) -> AppendResult:
        events = validate_events(request, domains, self.limits)
        try:
            result = await self.store.append(request.user_id, events)
        except FeatureStoreUnavailable as exc:
            raise Unavailable(
                f"events not recorded, retry with the same event ids: {exc}"
            ) from None
        RECORDED_EVENTS.labels("accepted").inc(result.accepted)
        RECORDED_EVENTS.labels("duplicate").inc(result.duplicates)
        return result

    async def forget(self, user_id: str) -> int:
        validate_user_id(user_id, self.limits.max_user_id_length)
        try:
            deleted = await self.store.forget(user_id)
        except FeatureStoreUnavailable as exc:
            raise Unavailable(f"user not forgotten, retry: {exc}") from None
        log.info("user forgotten", extra={"user": self.hasher(user_id), "events": deleted})
        return deleted
