"""Optimised variants of an exported FP32 graph, and their drift against it on real requests.

* ``fp16``: weights and activations in float16 for GPUs (``onnxruntime.transformers.float16``,
  ``keep_io_types=True`` so the signature - int64 indices, float32 masks and scores - does not
  change). ONNX Runtime's CPU provider has no fast FP16 kernels, but the graph loads and runs
  there (Cast nodes around unsupported ops), so its drift is measured on any machine.
* ``int8``: dynamic INT8 quantisation for CPUs (``onnxruntime.quantization.quantize_dynamic``:
  MatMul/Gemm weights and Gather embedding tables in int8, activations quantised per run).

The drift is measured on the same real-user cases as the parity check (``export.parity``):
max / mean absolute score difference and top-10 overlap (``overlap@10``, the share of each
user's FP32 top 10 that the variant also ranks in its top 10) against the FP32 graph.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.parity import ScoreComparison

VARIANTS = ("fp32", "fp16", "int8")
# Ops the fp16 variant keeps in float32 (ORT has no float16 kernel for them on every provider).
FP32_OPS = ("ScatterElements",)


@dataclass
class DriftReport:
    """Score drift of a variant against the FP32 graph."""

    reference: str
    max_abs_diff: float
    mean_abs_diff: float
    overlap_at_10: float
    cases: int
    rows: int

    def to_dict(self) -> dict:
        return asdict(self)


def to_fp16(source: Path, target: Path) -> Path:
    """FP32 graph -> FP16 graph with FP32 inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=False,
        # ScatterElements (reduction=add: the score-fusion item-KNN, trainer/models/fused.py) has
        # no float16 kernel on ONNX Runtime's CPU provider: it stays float32.
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
    )
    _topological_sort(converted.graph)  # the converter appends its input Casts at the end
    onnx.save(converted, str(target))
    onnx.checker.check_model(str(target))
    return target


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorders ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def to_int8(source: Path, target: Path) -> Path:
    """FP32 graph -> dynamically quantised INT8 graph (weights int8, activations per run)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + ORT's basic optimisations first, as the quantiser recommends.
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation, not a requirement
            prepared = source
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
        )
    onnx.checker.check_model(str(target))
    return target


def make_variant(variant: str, source: Path, target: Path) -> Path:
    if variant == "fp16":
        return to_fp16(source, target)
    if variant == "int8":
        return to_int8(source, target)
    raise ValueError(f"unknown variant '{variant}' (choose from {', '.join(VARIANTS)})")


def measure_drift(
    reference: Path, variant: Path, cases: list[dict[str, np.ndarray]], output: str = "scores"
) -> DriftReport:
    """Scores every case with both graphs on the CPU and compares them."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(str(reference), options, providers=["CPUExecutionProvider"])
    other = ort.InferenceSession(str(variant), options, providers=["CPUExecutionProvider"])
    comparison = ScoreComparison()
    for case in cases:
        comparison.add(fp32.run([output], case)[0], other.run([output], case)[0])
    return DriftReport(
        "fp32",
        comparison.max_abs_diff,
        comparison.mean_abs_diff,
        comparison.top10_agreement,
        len(cases),
        comparison.rows,
    )
