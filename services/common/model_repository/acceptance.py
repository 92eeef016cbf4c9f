"""ONE rule for whether a version may be served, run by the encoder and the scorer alike.

A version is acceptable when

1. its manifest parses and names its own directories (``ModelRepository.open``);
2. every file the manifest lists exists with the recorded size and sha256 (``verify``), and the
   documented files (model, vocab_source, vocab_target, catalog) are listed, the vocabularies
   are JSON lists of unique ids and every catalogue entry agrees with the target vocabulary;
3. its model graph loads in an ONNX Runtime CPU session;
4. the graph's inputs and outputs match the manifest signature (names, dtypes, ranks);
5. one warm-up run on a tiny batch built from the signature gives outputs of the declared rank,
   batch size 1 and only finite values.

Why one rule: before it, the encoder checked hashes only and the scorer also loaded the graph,
so a version with a garbage ``model.onnx`` whose manifest hash had been recomputed was served by
the encoder and refused by the scorer (and a malformed catalogue the other way round). Both services now run exactly this function (with the same
fixed ``ACCEPTANCE`` settings, never their own flags), so a version is accepted by both or by
neither. The CPU session is built only for the check and dropped; the scorer then builds its own
session with its configured providers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from services.common.model_repository.errors import (
    IntegrityError,
    ManifestError,
    VersionRefused,
)
from services.common.model_repository.manifest import TensorSpec
from services.common.model_repository.repository import ModelRepository, ModelVersion
from services.common.model_repository.vocabulary import check_item_files

CPU_PROVIDER = "CPUExecutionProvider"

# ONNX Runtime type strings -> the manifest's v2 dtype names.
ORT_DTYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}
NUMPY_DTYPES: dict[str, type] = {
    "BOOL": np.bool_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass(frozen=True)
class AcceptanceRule:
    """Settings of the check. Fixed for the whole project: a service must not pass its own."""

    warmup_batch: int = 1  # rows of the warm-up batch (dynamic axis 0)
    warmup_length: int = 2  # every other dynamic axis (history length, candidates)
    threads: int = 1  # ORT intra-op threads: the check must not starve serving traffic


ACCEPTANCE = AcceptanceRule()


def warmup_feeds(inputs: tuple[TensorSpec, ...], batch: int, length: int) -> dict[str, np.ndarray]:
    """Inputs from the signature alone: integers 0 (padding, valid in every embedding table),
    floats 1 (a mask that keeps every position), so any recommender graph runs."""
    feeds = {}
    for spec in inputs:
        shape = tuple(
            d if d >= 0 else (batch if axis == 0 else length) for axis, d in enumerate(spec.shape)
        )
        dtype = NUMPY_DTYPES[spec.dtype]
        fill = 1 if np.issubdtype(dtype, np.floating) else 0
        feeds[spec.name] = np.full(shape, fill, dtype=dtype)
    return feeds


def check_signature(
    label: str,
    kind: str,
    declared: tuple[TensorSpec, ...],
    actual: list,
    error: type[Exception] = VersionRefused,
) -> None:
    """Raises ``error`` unless the graph's ``kind`` ("inputs"/"outputs") match the manifest's
    names, dtypes and ranks. The scorer runs it again on its own (possibly GPU) session with
    its own error type, so both checks are this one function."""
    graph = {arg.name: arg for arg in actual}
    expected = {spec.name for spec in declared}
    if set(graph) != expected:
        raise error(
            f"{label}: graph {kind} {sorted(graph)} differ from manifest {kind} {sorted(expected)}"
        )
    for spec in declared:
        arg = graph[spec.name]
        dtype = ORT_DTYPES.get(arg.type)
        if dtype != spec.dtype:
            raise error(
                f"{label}: {kind[:-1]} '{spec.name}' is {arg.type} in the graph, "
                f"{spec.dtype} in the manifest"
            )
        rank = len(arg.shape or [])
        if rank != len(spec.shape):
            raise error(
                f"{label}: {kind[:-1]} '{spec.name}' has rank {rank} in the graph, "
                f"{len(spec.shape)} in the manifest"
            )


def _session(version: ModelVersion, rule: AcceptanceRule) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = rule.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(
            str(version.model_path), sess_options=options, providers=[CPU_PROVIDER]
        )
    except Exception as exc:  # ORT raises its own exception types for unloadable graphs
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VersionRefused(
            f"{version.label}: '{version.manifest.model_file}' does not load in ONNX Runtime "
            f"({first})"
        ) from None


def _check_warmup(
    version: ModelVersion, session: ort.InferenceSession, rule: AcceptanceRule
) -> None:
    manifest = version.manifest
    feeds = warmup_feeds(manifest.inputs, rule.warmup_batch, rule.warmup_length)
    names = [spec.name for spec in manifest.outputs]
    try:
        results = session.run(names, feeds)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VersionRefused(f"{version.label}: warm-up run failed ({first})") from None
    for spec, got in zip(manifest.outputs, results, strict=True):
        got = np.asarray(got)
        if got.ndim != len(spec.shape) or (got.ndim and got.shape[0] != rule.warmup_batch):
            raise VersionRefused(
                f"{version.label}: warm-up output '{spec.name}' has shape {list(got.shape)} for "
                f"batch {rule.warmup_batch}, the manifest says {list(spec.shape)}"
            )
        if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
            raise VersionRefused(f"{version.label}: warm-up output '{spec.name}' is not finite")


def accept(version: ModelVersion, rule: AcceptanceRule = ACCEPTANCE) -> float:
    """Runs steps 2-5 on an opened version; raises VersionRefused (or IntegrityError for files
    that do not match the manifest). Returns the seconds the check took (blocking)."""
    started = time.perf_counter()
    version.verify()
    check_item_files(version)
    session = _session(version, rule)
    check_signature(version.label, "inputs", version.manifest.inputs, session.get_inputs())
    check_signature(version.label, "outputs", version.manifest.outputs, session.get_outputs())
    _check_warmup(version, session, rule)
    return time.perf_counter() - started


def open_accepted(
    repository: ModelRepository, name: str, version: str, rule: AcceptanceRule = ACCEPTANCE
) -> ModelVersion:
    """Steps 1-5: the opened version when acceptable.

    Raises FileNotFoundError when the version does not exist and VersionRefused (whose message
    names the file or field) for any other reason.
    """
    try:
        opened = repository.open(name, version)
        accept(opened, rule)
    except (ManifestError, IntegrityError) as exc:
        raise VersionRefused(str(exc)) from None
    return opened
