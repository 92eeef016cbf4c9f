"""Building one ONNX Runtime session for a model version and checking it against its manifest.

Why check: a version whose graph does not match its manifest (renamed input, different dtype or
rank) would fail on every request. It is refused at load time instead, so the version already
serving keeps serving. The check also yields the ``TensorSignature``s used to validate requests,
including the symbolic axis names ORT reports (``B``, ``C``...).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.common.model_repository import ModelVersion, TensorSpec
from services.common.model_repository.acceptance import check_signature, warmup_feeds
from services.scorer.config import ScorerConfig
from services.scorer.providers import CPU, resolve_providers
from services.scorer.signature import V2_CODES, TensorSignature

log = logging.getLogger("xdrec.scorer.session")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class SignatureMismatch(ValueError):
    """The ONNX graph does not match the inputs/outputs its manifest declares."""


@dataclass(frozen=True)
class SessionBundle:
    """A ready session with its checked signature and the providers ORT actually uses."""

    session: ort.InferenceSession
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    providers: tuple[str, ...]
    device_id: int = 0


def session_options(config: ScorerConfig) -> ort.SessionOptions:
    """Session options from the config (threads, graph optimisation)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    # Spinning worker threads keep a core busy after every run; next to Python gRPC threads on
    # the same cores that is CPU taken from serving (ScorerConfig.spin_wait).
    spinning = "1" if config.spin_wait else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization]
    options.log_severity_level = 3  # errors only: ORT's warnings are not JSON and add noise
    # Without the arena, the buffers of a large run are freed when it ends instead of staying
    # reserved for the session's lifetime (bounded memory, docs: memory budget).
    options.enable_cpu_mem_arena = config.cpu_mem_arena
    return options


def _match(
    label: str, kind: str, declared: tuple[TensorSpec, ...], actual: list[ort.NodeArg]
) -> tuple[TensorSignature, ...]:
    """The acceptance rule's signature check on this session, then the request-validation view
    (wire dtype codes, symbolic axis names as ORT reports them)."""
    check_signature(label, kind, declared, actual, error=SignatureMismatch)
    graph = {arg.name: arg for arg in actual}
    return tuple(
        TensorSignature(
            spec.name,
            V2_CODES[spec.dtype],
            tuple(d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape),
            tuple(d if isinstance(d, str) and d else None for d in graph[spec.name].shape or []),
        )
        for spec in declared
    )


def _cache_path(version: ModelVersion, config: ScorerConfig, provider: str) -> Path | None:
    """Where the optimised graph of this version is cached (None when caching is off).

    The key holds the model hash, the provider, the optimisation level and the ORT version, so a
    cached graph is only reused for exactly what produced it.
    """
    if not config.optimized_model_cache:
        return None
    model_entry = version.manifest.files.get("model")
    digest = model_entry.sha256[:16] if model_entry else version.version
    name = (
        f"{version.name}-{version.version}-{digest}-{provider}-{config.graph_optimization}"
        f"-ort{ort.__version__}.onnx"
    )
    return Path(config.optimized_model_cache) / name


def _open(version: ModelVersion, config: ScorerConfig, requested: list) -> ort.InferenceSession:
    """An InferenceSession, through the optimised-graph cache when one is configured."""
    first = requested[0] if isinstance(requested[0], str) else requested[0][0]
    cached = _cache_path(version, config, first)
    options = session_options(config)
    if cached is None:
        return ort.InferenceSession(
            str(version.model_path), sess_options=options, providers=requested
        )
    if cached.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), sess_options=options, providers=requested)
        except Exception as exc:  # a stale or damaged cache entry: rebuild it
            log.warning(
                "optimised-model cache entry unusable: %s", exc, extra={"path": str(cached)}
            )
            options = session_options(config)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    options.optimized_model_filepath = str(staging)
    session = ort.InferenceSession(
        str(version.model_path), sess_options=options, providers=requested
    )
    if staging.is_file():
        os.replace(staging, cached)  # atomic: a reader never sees half a cached graph
    return session


def create_session(version: ModelVersion, config: ScorerConfig) -> SessionBundle:
    """Opens the model with the configured providers and checks it against the manifest."""
    requested = resolve_providers(config.providers, config.device_id)
    try:
        session = _open(version, config, requested)
    except Exception as exc:
        if requested == [CPU]:
            raise
        # A GPU provider that passed the probe can still fail to initialise (e.g. no cuDNN):
        # serve on the CPU rather than not at all, and say so.
        log.warning(
            "GPU session failed; retrying on the CPU: %s",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            extra={"model": version.name, "version": version.version},
        )
        requested = [CPU]
        session = _open(version, config, requested)
    providers = tuple(session.get_providers())
    wanted = [p if isinstance(p, str) else p[0] for p in requested]
    if wanted[0] != CPU and providers[0] != wanted[0]:
        log.warning(
            "GPU execution provider requested but not used; running on %s",
            providers[0],
            extra={"model": version.name, "version": version.version, "requested": wanted},
        )
    inputs = _match(version.label, "inputs", version.manifest.inputs, session.get_inputs())
    outputs = _match(version.label, "outputs", version.manifest.outputs, session.get_outputs())
    return SessionBundle(
        session=session,
        inputs=inputs,
        outputs=outputs,
        providers=providers,
        device_id=config.device_id,
    )


def warmup_inputs(
    inputs: tuple[TensorSignature, ...], length: int, batch: int = 1
) -> dict[str, np.ndarray]:
    """The acceptance rule's warm-up feeds (index 0, mask 1: any recommender graph runs them)
    for this session's signature: ``batch`` rows, every other dynamic axis ``length``."""
    specs = tuple(TensorSpec(s.name, s.dtype_name, s.shape) for s in inputs)
    return warmup_feeds(specs, batch=batch, length=length)
