"""The feature store: per user and domain, the interactions known at serving time.

Why an interface: the embedded default keeps the trainer's ``features.tsv`` snapshot in memory
(no external database on a laptop), while a production deployment wants a shared store (Redis,
a feature platform) that is updated online. The encoder only depends on ``FeatureStore``, and
``build_feature_store`` picks the implementation from ``FeatureStoreConfig.backend``.

Why async: the encoder calls the store inside its async gRPC handlers; a network store must not
block the event loop. Why ``histories`` takes several domains: the encoder needs the source and
the target history of one user per request, which a network store answers in one round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args


class FeatureStoreError(ValueError):
    """The store's data is malformed (for a snapshot: the message names the line)."""


@dataclass(frozen=True)
class History:
    """One user's items in one domain, oldest first, with their unix timestamps."""

    items: tuple[str, ...] = ()
    timestamps: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.items)


EMPTY = History()


class FeatureStore(Protocol):
    """Read access to user histories; the encoder awaits every call."""

    async def histories(self, user_id: str, domains: Sequence[str]) -> Mapping[str, History]:
        """The user's interactions per domain in ``domains``, oldest first (``EMPTY`` for a
        domain, or a user, the store does not know)."""
        ...

    async def close(self) -> None:
        """Releases connections; the encoder calls it once on shutdown."""
        ...


Backend = Literal["memory"]
"""Feature store backends; "redis" is planned (it would be added here and in ``BACKENDS``)."""


@dataclass(frozen=True)
class FeatureStoreConfig:
    """Which store the encoder reads histories from."""

    backend: Backend = "memory"
    """``memory``: histories in process memory, loaded once from ``snapshot``."""
    snapshot: str = ""
    """``memory`` only: the features.tsv event log (empty = no stored histories)."""


def _memory(config: FeatureStoreConfig) -> FeatureStore:
    from services.encoder.memory_store import InMemoryFeatureStore

    return InMemoryFeatureStore.from_snapshot(config.snapshot)


BACKENDS: Mapping[str, Callable[[FeatureStoreConfig], FeatureStore]] = {"memory": _memory}
"""Backend name -> builder; each builder imports its implementation only when selected, so a
backend's client library is needed only where it is used."""

assert set(BACKENDS) == set(get_args(Backend)), "Backend and BACKENDS must list the same names"


def feature_store_backend(name: str) -> Callable[[FeatureStoreConfig], FeatureStore]:
    """The builder of backend ``name``; a clear ValueError for an unknown one."""
    builder = BACKENDS.get(name)
    if builder is None:
        raise ValueError(
            f"feature store backend '{name}' is unknown (known: {', '.join(sorted(BACKENDS))})"
        )
    return builder


def build_feature_store(config: FeatureStoreConfig) -> FeatureStore:
    """The configured store (may block while it loads: call it off the event loop)."""
    return feature_store_backend(config.backend)(config)
