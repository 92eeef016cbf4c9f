"""Encoder configuration (flags ``xdrec serve encoder --help``; env ``XDREC_<FLAG>``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, option
from services.common.endpoints import ENCODER

DEFAULT_PORT = ENCODER.grpc_port
DEFAULT_METRICS_PORT = ENCODER.metrics_port


@dataclass(frozen=True)
class EncoderConfig(ServerConfig):
    """Which model version to encode for, where the feature snapshot is, request limits."""

    port: int = option(DEFAULT_PORT, "gRPC port (EncoderService)")
    metrics_port: int = option(DEFAULT_METRICS_PORT, "Prometheus /metrics port (0 disables)")
    model_repo: str = option("", "model repository root directory (required)")
    model: str = option("", "model name to encode for (empty = the only model in the repository)")
    version: str = option(
        "",
        "pin one model version (alias for --version-policy specific:V; empty = follow the policy)",
    )
    version_policy: str = option(
        "latest:2",
        "versions held (vocabularies), as the scorer's: 'latest:N' or 'specific:V1,V2'; a request "
        "may pin any of them, the newest is the default",
    )
    variant: str = option(
        "", "hold only versions whose manifest exporter.variant is this (as the scorer's --variant)"
    )
    poll_interval_s: float = option(
        10.0, "seconds between model repository scans for new versions (0 = off)"
    )
    feature_store: str = option(
        "memory",
        "feature store backend: 'memory' (the --features snapshot held in process memory) or "
        "'redis' (shared by every encoder replica, updated online by RecordEvents)",
        choices=("memory", "redis"),
    )
    redis_url: str = option(
        "redis://127.0.0.1:6379/0",
        "redis backend: server URL (redis:// or rediss:// for TLS); put no password in it",
    )
    redis_password_file: str = option(
        "",
        "redis backend: file holding the password (else env XDREC_REDIS_PASSWORD; never a flag)",
    )
    redis_prefix: str = option(
        "xdrec", "redis backend: key prefix (several deployments, one Redis)"
    )
    redis_timeout_s: float = option(
        0.05, "redis backend: bound on every read in seconds (beyond it Encode degrades)"
    )
    redis_write_timeout_s: float = option(
        1.0,
        "redis backend: bound on every write in seconds (AOF fsync); RecordEvents is UNAVAILABLE "
        "beyond it",
    )
    redis_max_connections: int = option(64, "redis backend: connection pool size")
    max_history: int = option(
        5000, "most events kept per user and domain on append (oldest dropped)"
    )
    event_id_ttl_s: float = option(
        7 * 24 * 3600.0, "seconds an accepted event id is remembered (RecordEvents idempotency)"
    )
    max_record_events: int = option(
        500, "most events per RecordEvents call (RESOURCE_EXHAUSTED above)"
    )
    max_event_age_s: float = option(
        30 * 24 * 3600.0, "RecordEvents refuses events older than this many seconds"
    )
    store_check_interval_s: float = option(
        1.0, "seconds between feature store pings (the xdrec_feature_store_up gauge)"
    )
    user_hash_key_file: str = option(
        "",
        "file holding the key of the user-id hash in logs (else env XDREC_USER_HASH_KEY, else a "
        "random key per process)",
    )
    max_clock_skew_s: float = option(
        300.0, "RecordEvents refuses events more than this many seconds in the future"
    )
    features: str = option(
        "", "feature store snapshot: the features.tsv event log (empty = no stored histories)"
    )
    candidate_filters: str = option(
        "exclude_seen,exclude_listed",
        "candidate filters applied in this order before scoring (comma-separated): "
        "exclude_seen (unless the request says include_seen), exclude_listed (exclude_item_ids)",
    )
    max_candidates: int = option(
        5000, "most candidate item ids per request (RESOURCE_EXHAUSTED above)"
    )
    max_excluded: int = option(5000, "most exclude_item_ids per request (RESOURCE_EXHAUSTED above)")
    max_recent_events: int = option(
        1000, "most recent_events per request (RESOURCE_EXHAUSTED above)"
    )
    max_user_id_length: int = option(256, "longest accepted user_id, in characters")
    max_in_flight: int = option(
        256,
        "most calls (Encode, GetCatalog, RecordEvents, ...) worked on at once; more are refused "
        "at once with RESOURCE_EXHAUSTED before their body is parsed (health checks are never "
        "refused; 0: no limit). The ranker answers a refused Encode by popularity, flagged",
    )
    max_batch_requests: int = option(
        256, "most requests in one EncodeBatch call (RESOURCE_EXHAUSTED above)"
    )
