"""Prometheus metrics of the feature store: call latency and outcome, pool, availability.

Why here and not in services/common/metrics.py: only the encoder talks to the store. The pool
gauges read the live pool on every scrape (a callback), so they cannot go stale.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

STORE_CALLS = Counter(
    "xdrec_feature_store_calls",
    "feature store calls by backend, operation and outcome (ok, timeout, error)",
    ["backend", "op", "outcome"],
)
STORE_LATENCY = Histogram(
    "xdrec_feature_store_call_seconds",
    "feature store call latency in seconds, by backend and operation",
    ["backend", "op"],
    buckets=LATENCY_BUCKETS,
)
STORE_UP = Gauge(
    "xdrec_feature_store_up",
    "1 while the feature store answers, 0 while reads degrade to the popularity fallback and "
    "RecordEvents answers UNAVAILABLE",
    ["backend"],
)
STORE_POOL = Gauge(
    "xdrec_feature_store_pool_connections",
    "feature store connection pool: connections in use, idle, and the pool's maximum",
    ["backend", "state"],
)
RECORDED_EVENTS = Counter(
    "xdrec_recorded_events",
    "events received by RecordEvents: accepted (new) or duplicate (retried event id)",
    ["outcome"],
)
DEGRADED_ENCODES = Counter(
    "xdrec_encodes_without_features",
    "Encode requests answered without stored histories because the feature store was unavailable",
)


def observe_call(backend: str, op: str, outcome: str, seconds: float) -> None:
    STORE_CALLS.labels(backend, op, outcome).inc()
    STORE_LATENCY.labels(backend, op).observe(seconds)


def watch_pool(backend: str, pool: Any) -> None:
    """Reports a redis-py connection pool's state at scrape time (last pool registered wins)."""
    STORE_POOL.labels(backend, "in_use").set_function(
        lambda: len(getattr(pool, "_in_use_connections", ()))
    )
    STORE_POOL.labels(backend, "idle").set_function(
        lambda: len(getattr(pool, "_available_connections", ()))
    )
    STORE_POOL.labels(backend, "max").set_function(lambda: pool.max_connections)
