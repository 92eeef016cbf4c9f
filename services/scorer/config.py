"""Scorer configuration (flags ``xdrec serve scorer --help``; env ``XDREC_<FLAG>``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, option

DEFAULT_PORT = 50052
DEFAULT_METRICS_PORT = 9092


@dataclass(frozen=True)
class ScorerConfig(ServerConfig):
    """Where the models are, how ONNX Runtime runs them, and how much one request may ask."""

    port: int = option(DEFAULT_PORT, "gRPC port (ScorerService and inference.GRPCInferenceService)")
    metrics_port: int = option(DEFAULT_METRICS_PORT, "Prometheus /metrics port (0 disables)")
    model_repo: str = option("", "model repository root directory (required)")
    models: str = option("", "comma-separated model names to load (empty = every model found)")
    versions_per_model: int = option(
        1, "how many of the newest versions of each model to load (older ones can then be pinned)"
    )
    providers: str = option(
        "auto",
        "execution providers in priority order, comma-separated from tensorrt,cuda,cpu; "
        "'auto' = cuda if a GPU and the CUDA libraries are usable, else cpu",
    )
    device_id: int = option(0, "GPU index for the CUDA / TensorRT providers")
    intra_op_threads: int = option(0, "ONNX Runtime threads per run (0 = one per physical core)")
    inter_op_threads: int = option(0, "ONNX Runtime threads across graph nodes (0 = ORT default)")
    graph_optimization: str = option(
        "all",
        "ONNX Runtime graph optimisation level",
        choices=("disable", "basic", "extended", "all"),
    )
    inference_threads: int = option(
        2, "worker threads that run ONNX Runtime (keeps the gRPC event loop responsive)"
    )
    max_queue: int = option(
        256, "inference requests waiting or running before new ones get RESOURCE_EXHAUSTED"
    )
    max_request_elements: int = option(
        4_194_304,
        "largest total number of input elements in one request (RESOURCE_EXHAUSTED above)",
    )
    warmup_runs: int = option(3, "inference runs per model before it is reported ready")
    warmup_length: int = option(16, "size of every dynamic non-batch axis in warm-up inputs")
