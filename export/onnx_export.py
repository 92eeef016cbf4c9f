"""PyTorch -> ONNX for every model behind :class:`trainer.models.CrossDomainModel`.

Uses the TorchScript-based exporter (``dynamo=False``): for these small gather/matmul graphs it
gives a clean, fully dynamic graph with no extra dependency; every axis is dynamic so one graph
serves any batch size, history length and candidate count.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from trainer.models.base import INPUT_NAMES, OUTPUT_NAMES, CrossDomainModel

DEFAULT_OPSET = 17
DYNAMIC_AXES = {
    "src_items": {0: "batch", 1: "source_history"},
    "src_mask": {0: "batch", 1: "source_history"},
    "tgt_items": {0: "batch", 1: "target_history"},
    "tgt_mask": {0: "batch", 1: "target_history"},
    "candidates": {0: "batch", 1: "candidates"},
    "scores": {0: "batch", 1: "candidates"},
}


def example_inputs(
    batch: int = 2, src_len: int = 3, tgt_len: int = 4, candidates: int = 5
) -> tuple[torch.Tensor, ...]:
    """Tracing inputs; sizes differ per axis so the exporter cannot confuse them."""
    return (
        torch.ones(batch, src_len, dtype=torch.long),
        torch.ones(batch, src_len),
        torch.ones(batch, tgt_len, dtype=torch.long),
        torch.ones(batch, tgt_len),
        torch.ones(batch, candidates, dtype=torch.long),
    )


def export_onnx(model: CrossDomainModel, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    model = model.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            example_inputs(),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path
