"""The feature store: per user and domain, the interactions known at serving time.

Why an interface: the embedded default keeps the trainer's ``features.tsv`` snapshot in memory
(no external database on a laptop), while a production deployment wants a shared store (Redis,
a feature platform) that is updated online. The encoder only depends on ``FeatureStore``, and
``build_feature_store`` picks the implementation from ``FeatureStoreConfig.backend``.

Why async: the encoder calls the store inside its async gRPC handlers; a network store must not
block the event loop. Why ``histories`` takes several domains: the encoder needs the source and
the target history of one user per request, which a network store answers in one round trip.

Writes (``append``, ``forget``) come from the ``RecordEvents`` and ``ForgetUser`` RPCs. ``append``
is idempotent on the client event id (an id seen within ``event_id_ttl_s`` is counted once) and
returns only after the store accepted the events; a store that cannot answer raises
``FeatureStoreUnavailable`` (the encoder degrades reads and refuses writes with UNAVAILABLE).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


class FeatureStoreError(ValueError):
    """The store's data is malformed (for a snapshot: the message names the line)."""


class FeatureStoreUnavailable(RuntimeError):
    """The store did not answer in time or is unreachable (retryable: writes are idempotent)."""


@dataclass(frozen=True)
class History:
    """One user's items in one domain, oldest first, with their unix timestamps."""

    items: tuple[str, ...] = ()
    timestamps: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.items)


EMPTY = History()


@dataclass(frozen=True)
class StoredEvent:
    """One interaction written online (``RecordEvents``) or by the bulk loader.

    ``event_id`` is the client's id (idempotency key); ``kind`` is view / click / purchase ("" for
    snapshot rows, which carry none).
    """

    event_id: str
    domain: str
    item_id: str
    timestamp: float
    kind: str = ""


@dataclass(frozen=True)
class AppendResult:
    """How many events were new and how many were retries of events already accepted."""

    accepted: int = 0
    duplicates: int = 0


class FeatureStore(Protocol):
    """Read access to user histories; the encoder awaits every call."""

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        """The user's interactions per domain in ``domains``, oldest first (``EMPTY`` for a
        domain, or a user, the store does not know)."""
        ...

    async def append(self, user_id: str, events: Sequence[StoredEvent]) -> AppendResult:
        """Adds ``events`` to the user's histories (each capped at ``max_history``, newest kept);
        events whose id was already accepted are skipped. Returns once the store holds them."""
        ...

    async def forget(self, user_id: str) -> int:
        """Deletes every history of the user in every domain (idempotent); the number of events
        deleted."""
        ...

    async def events(self, user_id: str | None = None) -> AsyncIterator[tuple[str, StoredEvent]]:
        """Every stored ``(user_id, event)`` (of one user when given), for export."""
        ...

    async def ping(self) -> None:
        """Raises ``FeatureStoreUnavailable`` when the store does not answer."""
        ...

    async def close(self) -> None:
        """Releases connections; the encoder calls it once on shutdown."""
        ...


Backend = Literal["memory", "redis"]
"""Feature store backends (each one also in ``store_factory.BACKENDS``)."""


@dataclass(frozen=True)
class FeatureStoreConfig:
    """Which store the encoder reads histories from."""

    backend: Backend = "memory"
    """``memory``: histories in process memory, loaded once from ``snapshot``."""
    snapshot: str = ""
    """``memory`` only: the features.tsv event log (empty = no stored histories)."""
    max_history: int = 5000
    """Most events kept per user and domain (oldest dropped on append); the model windows
    its inputs much shorter, the rest serves the seen-item filter."""
    event_id_ttl_s: float = 7 * 24 * 3600.0
    """How long an accepted event id is remembered, so a retried batch is counted once."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``redis`` only: the server (``redis://`` or ``rediss://`` for TLS); no password in it."""
    redis_password: str = field(default="", repr=False)
    """``redis`` only: the password (read from a file or the environment, never from argv)."""
    redis_prefix: str = "xdrec"
    """``redis`` only: key prefix, so several deployments can share one server."""
    redis_timeout_s: float = 0.05
    """``redis`` only: bound on every read (and connect), in seconds; beyond it Encode degrades."""
    redis_write_timeout_s: float = 1.0
    """``redis`` only: bound on every write (append, forget), in seconds: with AOF
    ``appendfsync always`` a write waits for the disk, which a busy disk can hold for a while."""
    redis_max_connections: int = 64
    """``redis`` only: connection pool size per encoder process."""
