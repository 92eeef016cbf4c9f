"""Which feature store the encoder runs: backend name -> builder.

Kept apart from the interface (``feature_store.py``) so the interface never imports its
implementations: each builder imports its backend only when selected, so a backend's client
library (redis) is needed only where it is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import get_args

from services.encoder.feature_store import Backend, FeatureStore, FeatureStoreConfig


def _memory(config: FeatureStoreConfig) -> FeatureStore:
    from services.encoder.memory_store import InMemoryFeatureStore

    return InMemoryFeatureStore.from_snapshot(config.snapshot, config)


def _redis(config: FeatureStoreConfig) -> FeatureStore:
    from services.encoder.redis_store import RedisFeatureStore

    return RedisFeatureStore.from_config(config)


BACKENDS: Mapping[str, Callable[[FeatureStoreConfig], FeatureStore]] = {
    "memory": _memory,
    "redis": _redis,
}
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
