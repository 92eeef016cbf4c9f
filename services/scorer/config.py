"""Scorer configuration (flags ``xdrec serve scorer --help``; env ``XDREC_<FLAG>``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, option
from services.common.endpoints import SCORER

DEFAULT_PORT = SCORER.grpc_port
DEFAULT_METRICS_PORT = SCORER.metrics_port


@dataclass(frozen=True)
class ScorerConfig(ServerConfig):
    """Where the models are, how ONNX Runtime runs them, and how much one request may ask."""

    port: int = option(DEFAULT_PORT, "gRPC port (ScorerService and inference.GRPCInferenceService)")
    metrics_port: int = option(DEFAULT_METRICS_PORT, "Prometheus /metrics port (0 disables)")
    model_repo: str = option("", "model repository root directory (required)")
    models: str = option("", "comma-separated model names to load (empty = every model found)")
    version_policy: str = option(
        "latest:2",
        "versions served per model: 'latest:N' (the N newest good versions; 2 lets encoder and "
        "scorer be one version apart during a roll-out) or 'specific:V1,V2'",
    )
    poll_interval_s: float = option(
        10.0, "seconds between model repository scans for new/removed versions (0 = off)"
    )
    variant: str = option(
        "",
        "serve only versions whose manifest exporter.variant is this (fp32, fp16, int8); "
        "empty = any",
    )
    providers: str = option(
        "auto",
        "execution providers in priority order, comma-separated from tensorrt,cuda,cpu; "
        "'auto' = cuda if a GPU and the CUDA libraries are usable, else cpu",
    )
    device_id: int = option(0, "GPU index for the CUDA / TensorRT providers")
    intra_op_threads: int = option(0, "ONNX Runtime threads per run (0 = one per physical core)")
    inter_op_threads: int = option(0, "ONNX Runtime threads across graph nodes (0 = ORT default)")
    spin_wait: bool = option(
        False,
        "let ONNX Runtime's worker threads spin-wait for the next run: a little lower latency on "
        "cores of their own, but they burn CPU between runs that the gRPC threads of this and "
        "the other services need (measured: 12.3 ms of CPU per Recommend with spinning at the "
        "default thread count vs 1.66 ms with one thread, docs/results/capacity)",
    )
    graph_optimization: str = option(
        "all",
        "ONNX Runtime graph optimisation level",
        choices=("disable", "basic", "extended", "all"),
    )
    inference_threads: int = option(
        2, "ONNX Runtime runs in flight at once, over all models (worker threads)"
    )
    max_queue: int = option(
        256,
        "per model version: requests waiting or running before new ones get RESOURCE_EXHAUSTED",
    )
    max_in_flight: int = option(
        128,
        "most calls (Predict, ModelInfer, ...) worked on at once over all models; more are "
        "refused at once with RESOURCE_EXHAUSTED before their body is parsed, which also bounds "
        "the memory that request bodies hold (health checks are never refused; 0: no limit). "
        "The ranker answers a refused Predict by popularity, flagged",
    )
    batching: bool = option(True, "dynamic batching: merge concurrent requests into one run")
    max_batch_size: int = option(32, "most rows (users) per batched run")
    max_queue_delay_ms: float = option(
        2.0, "longest a request waits for others to join its batch, in milliseconds"
    )
    pad_batch_to_bucket: bool = option(
        False,
        "pad the batch axis to the next warmed-up size (powers of two up to max-batch-size); "
        "for TensorRT / CUDA graphs that want few shapes",
    )
    model_config: str = option(
        "",
        "per-model overrides as JSON (inline or a file path): "
        '{"<model>": {"batching": true, "max_batch_size": 16, "max_queue_delay_ms": 1, '
        '"max_queue_size": 128, "ragged": "pad|exact", "pad_batch_to_bucket": false}}',
    )
    io_binding: bool = option(
        True, "on CUDA / TensorRT, bind outputs to device memory (IO binding) and copy once"
    )
    optimized_model_cache: str = option(
        "",
        "directory where ONNX Runtime's optimised graphs are saved and reused across restarts "
        "(empty = off)",
    )
    max_request_elements: int = option(
        4_194_304,
        "largest total number of input elements in one request (RESOURCE_EXHAUSTED above)",
    )
    max_request_bytes: int = option(
        8 * 1024 * 1024,
        "largest total input bytes of one request (RESOURCE_EXHAUSTED above); with "
        "--max-batch-bytes it bounds the scorer's working memory (docs: memory budget)",
    )
    max_batch_bytes: int = option(
        32 * 1024 * 1024,
        "largest input bytes of one merged batch, padding included: the batcher never merges "
        "beyond it (0 = no byte limit; must be >= --max-request-bytes)",
    )
    cpu_mem_arena: bool = option(
        False,
        "ONNX Runtime's CPU memory arena: slightly faster allocation, but it keeps the peak of "
        "every run for the life of the session; off returns memory after each run",
    )
    malloc_threshold_kb: int = option(
        1024,
        "buffers above this size are returned to the OS when freed (glibc mmap/trim "
        "thresholds; 0 = the allocator's own, which keeps large freed buffers resident)",
    )
    model_control: str = option(
        "none",
        "repository control RPCs (v2 RepositoryModelLoad/Unload): 'none' refuses them "
        "(UNIMPLEMENTED), 'explicit' allows them for admins (the admin token or a client "
        "certificate named in --admin-identities)",
        choices=("none", "explicit"),
    )
    admin_token_file: str = option(
        "",
        "file holding the admin bearer token that --model-control explicit requires "
        "('authorization: Bearer <token>' metadata; at least 16 characters)",
    )
    admin_identities: str = option(
        "",
        "comma-separated client certificate names (DNS/URI SAN or CN) that are admins under "
        "--model-control explicit, without the token; needs client certificates "
        "(--tls-client-auth or --mtls-port). They are admitted by --tls-allowed-clients too",
    )
    warmup_runs: int = option(
        3, "inference runs per batch-size bucket per model before it is reported ready"
    )
    warmup_length: int = option(16, "size of every dynamic non-batch axis in warm-up inputs")

    @property
    def allowed_client_names(self) -> str:
        """``--tls-allowed-clients`` plus the admin identities: an admin certificate must get
        past the transport's allow list to reach the control RPCs (which then check it)."""
        if not self.tls_allowed_clients or not self.admin_identities:
            return self.tls_allowed_clients
        return f"{self.tls_allowed_clients},{self.admin_identities}"
