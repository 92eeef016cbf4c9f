"""Ragged requests: merging them into one batch and splitting the outputs back (pure numpy).

Why the rules come from the model signature, not from input names (``batch_layout``): the same
scorer serves any model of the family, and only the symbolic axis names say which axes line up.

* axis 0 of every input and output must carry the same symbolic name (the batch axis);
* a dynamic non-batch input axis whose symbolic name also appears on an output (``candidates``
  -> ``scores``: the *output-aligned* axis) is padded by repeating the request's first element
  (a valid index) and every output is sliced back to the request's own size along that axis;
* any other named dynamic axis (history lengths) is padded with zeros (index 0 / mask 0.0): the
  models of this family mask padding out, so it is neutral. Models for which it is not declare
  ``ragged: exact`` (manifest ``serving.batching`` or the scorer's ``--model-config``): then only
  requests with identical shapes share a run;
* unnamed dynamic axes must match exactly to share a run; a model whose axis 0 is not a common
  named batch axis is never batched (each request runs alone).

No asyncio here: the queue (``services.scorer.batching.queue``) decides *which* requests share a
run (``request_key``), this module only says *how*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.scorer.signature import TensorSignature

ALIGNED = "aligned"  # pad with the first element, slice outputs back
ZERO = "zero"  # pad with zeros
EXACT = "exact"  # sizes must match to share a run


@dataclass(frozen=True)
class BatchLayout:
    """What the signature allows: per input, the dynamic non-batch axes and how to pad them."""

    batchable: bool
    reason: str = ""
    inputs: Mapping[str, tuple[tuple[int, str | None, str], ...]] = field(default_factory=dict)
    outputs: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)


def batch_layout(
    inputs: Sequence[TensorSignature], outputs: Sequence[TensorSignature], ragged: str = "pad"
) -> BatchLayout:
    """Derives the padding rules from the symbolic axis names of the signature."""
    specs = [*inputs, *outputs]
    if any(len(s.shape) == 0 or s.shape[0] != -1 for s in specs):
        return BatchLayout(False, "not every tensor has a dynamic axis 0")
    names = {s.dim_names[0] for s in specs}
    if len(names) != 1 or None in names:
        return BatchLayout(False, "axis 0 does not carry one symbolic name in every tensor")
    output_names = {n for s in outputs for n in s.dim_names[1:] if n}
    input_names = {n for s in inputs for n in s.dim_names[1:] if n}
    layout_in = {}
    for spec in inputs:
        axes = []
        for axis in range(1, len(spec.shape)):
            if spec.shape[axis] >= 0:
                continue
            name = spec.dim_names[axis]
            if name is None or ragged == "exact":
                kind = EXACT
            elif name in output_names:
                kind = ALIGNED
            else:
                kind = ZERO
            axes.append((axis, name, kind))
        layout_in[spec.name] = tuple(axes)
    layout_out = {
        spec.name: tuple(
            (axis, spec.dim_names[axis])
            for axis in range(1, len(spec.shape))
            if spec.shape[axis] < 0 and spec.dim_names[axis] in input_names
        )
        for spec in outputs
    }
    return BatchLayout(True, "", layout_in, layout_out)


def request_key(layout: BatchLayout, inputs: Mapping[str, np.ndarray]) -> tuple | None:
    """Requests with equal keys may share a run; None = this request must run alone."""
    if not layout.batchable:
        return None
    key = []
    for name, axes in layout.inputs.items():
        array = inputs[name]
        if array.shape[0] == 0:
            return None
        for axis, _dim, kind in axes:
            if kind == EXACT:
                key.append((name, axis, array.shape[axis]))
            elif kind == ALIGNED and array.shape[axis] == 0:
                return None  # no first element to pad with
    return tuple(key)


def merged_nbytes(
    layout: BatchLayout, requests: Sequence[Mapping[str, np.ndarray]], pad_rows_to: int = 0
) -> int:
    """Input bytes of ``merge(layout, requests, pad_rows_to)`` without building it: every
    request padded to the largest size per axis (one long request makes every row long)."""
    rows = sum(next(iter(r.values())).shape[0] for r in requests)
    rows = max(rows, pad_rows_to)
    total = 0
    for name in layout.inputs:
        arrays = [r[name] for r in requests]
        row_elements = 1
        for axis in range(1, arrays[0].ndim):
            row_elements *= max(a.shape[axis] for a in arrays)
        total += rows * row_elements * arrays[0].itemsize
    return total


def _dim_sizes(layout: BatchLayout, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes = {}
    for name, axes in layout.inputs.items():
        for axis, dim, _kind in axes:
            if dim:
                sizes[dim] = inputs[name].shape[axis]
    return sizes


def _pad(
    array: np.ndarray, axes: tuple[tuple[int, str | None, str], ...], target: tuple
) -> np.ndarray:
    for axis, _dim, kind in axes:
        missing = target[axis] - array.shape[axis]
        if missing <= 0:
            continue
        if kind == ALIGNED:
            fill = np.repeat(np.take(array, [0], axis=axis), missing, axis=axis)
        else:
            shape = list(array.shape)
            shape[axis] = missing
            fill = np.zeros(shape, dtype=array.dtype)
        array = np.concatenate([array, fill], axis=axis)
    return array


@dataclass(frozen=True)
class Merged:
    """One merged run: its inputs and, per request, its rows and own axis sizes."""

    inputs: dict[str, np.ndarray]
    rows: list[tuple[int, int]]
    sizes: list[dict[str, int]]


def merge(
    layout: BatchLayout, requests: Sequence[Mapping[str, np.ndarray]], pad_rows_to: int = 0
) -> Merged:
    """Pads every request to the largest size per axis and concatenates along axis 0."""
    rows, start = [], 0
    for request in requests:
        count = next(iter(request.values())).shape[0]
        rows.append((start, start + count))
        start += count
    merged = {}
    for name, axes in layout.inputs.items():
        arrays = [r[name] for r in requests]
        target = tuple(max(a.shape[i] for a in arrays) for i in range(arrays[0].ndim))
        padded = [_pad(a, axes, target) for a in arrays]
        if pad_rows_to > start:  # fill the bucket with copies of the first row
            padded.append(np.repeat(padded[0][:1], pad_rows_to - start, axis=0))
        merged[name] = np.concatenate(padded, axis=0)
    return Merged(merged, rows, [_dim_sizes(layout, r) for r in requests])


def split(
    layout: BatchLayout, outputs: Mapping[str, np.ndarray], merged: Merged
) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output, sliced back to its own output-aligned sizes."""
    results = []
    for (start, stop), sizes in zip(merged.rows, merged.sizes, strict=True):
        mine = {}
        for name, array in outputs.items():
            index: list[slice] = [slice(start, stop)] + [slice(None)] * (array.ndim - 1)
            for axis, dim in layout.outputs.get(name, ()):
                if dim in sizes:
                    index[axis] = slice(0, sizes[dim])
            mine[name] = array[tuple(index)]
        results.append(mine)
    return results
