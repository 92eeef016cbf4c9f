"""Prometheus metrics shared by the services, exported on a separate HTTP port.

Why a separate port: scraping must work while the gRPC port is saturated or not yet serving, and
Kubernetes ServiceMonitors expect plain HTTP ``/metrics``. Metrics are module-level singletons in
the default registry (prometheus_client refuses duplicates); the ``service`` label keeps the three
services apart even when a test runs them in one process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from services.common.endpoints import LOOPBACK

log = logging.getLogger("xdrec.metrics")

# Buckets from 0.5 ms to 10 s: the services answer in milliseconds, timeouts are seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RPC_REQUESTS = Counter(
    "xdrec_rpc_requests",
    "gRPC requests handled, by service, method and status code",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "xdrec_rpc_latency_seconds",
    "gRPC request latency in seconds, by service and method",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
READY = Gauge("xdrec_ready", "1 while the service reports SERVING, else 0", ["service"])
INFERENCE_LATENCY = Histogram(
    "xdrec_inference_seconds",
    "ONNX Runtime run time per request, by model and version",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_QUEUE = Gauge("xdrec_inference_queue", "inference requests waiting or running")
QUEUE_WAIT = Histogram(
    "xdrec_inference_queue_seconds",
    "time a request waited in the batching queue before its run started, by model and version",
    ["model", "version"],
    buckets=(0.0001, 0.00025, *LATENCY_BUCKETS),
)
INFERENCE_COMPUTE = Histogram(
    "xdrec_inference_compute_seconds",
    "ONNX Runtime time per (batched) run, by model and version",
    ["model", "version"],
    buckets=(0.0001, 0.00025, *LATENCY_BUCKETS),
)
BATCH_SIZE = Histogram(
    "xdrec_inference_batch_size",
    "rows (users) per ONNX Runtime run, by model and version",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
LOADED_VERSIONS = Gauge(
    "xdrec_model_version_loaded",
    "1 for every model version being served (scorer and encoder)",
    ["service", "model", "version"],
)
MODEL_UNLOADED = Gauge(
    "xdrec_model_unloaded",
    "1 while a served model is unloaded through the repository control API, else 0",
    ["service", "model"],
)
LOAD_FAILURES = Counter(
    "xdrec_model_load_failures",
    "model versions refused (bad file or hash, ONNX load error, signature mismatch, failed "
    "warm-up), by service and model",
    ["service", "model"],
)


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server; ``close`` stops it."""

    port: int
    _server: Any = None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_metrics_endpoint(port: int, host: str = LOOPBACK) -> MetricsEndpoint | None:
    """Starts the /metrics endpoint on ``port``; returns None when ``port`` is 0 (disabled)."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics endpoint listening", extra={"metrics_port": port})
    return MetricsEndpoint(port=port, _server=server)
