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
        "", "pin one model version to encode for (empty = follow the version policy)"
    )
    version_policy: str = option(
        "latest:2",
        "versions held (vocabularies): 'latest:N'; a request may pin any of them, the newest is "
        "the default",
    )
    variant: str = option(
        "", "hold only versions whose manifest exporter.variant is this (as the scorer's --variant)"
    )
    poll_interval_s: float = option(
        10.0, "seconds between model repository scans for new versions (0 = off)"
    )
    features: str = option(
        "", "feature store snapshot: the features.tsv event log (empty = no stored histories)"
    )
    max_candidates: int = option(
        5000, "most candidate item ids per request (RESOURCE_EXHAUSTED above)"
    )
    max_recent_events: int = option(
        1000, "most recent_events per request (RESOURCE_EXHAUSTED above)"
    )
    max_user_id_length: int = option(256, "longest accepted user_id, in characters")
