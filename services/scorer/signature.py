"""A model's input/output signature and the validation of request tensors against it.

Why validate before ONNX Runtime: ORT's errors for a wrong dtype or a short buffer are cryptic
and arrive as run-time failures. Checking names, dtypes, ranks, fixed dimensions, symbolic
dimensions shared between inputs (e.g. the batch axis ``B``), the element budget and the byte
count up front gives the caller INVALID_ARGUMENT / RESOURCE_EXHAUSTED with a message that names
the tensor. Both the xdrec Predict API and the v2 ModelInfer API go through ``decode_inputs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.tensors import V2_DATATYPES, element_count, from_raw

V2_CODES: dict[str, int] = {name: code for code, name in V2_DATATYPES.items()}


@dataclass(frozen=True)
class TensorSignature:
    """One input or output: name, wire dtype code, shape (-1 = dynamic), symbolic axis names."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    dim_names: tuple[str | None, ...]

    @property
    def dtype_name(self) -> str:
        return V2_DATATYPES[self.dtype]


@dataclass(frozen=True)
class RawTensor:
    """A request tensor before decoding: what both wire formats reduce to."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    data: bytes


def dtype_code_from_v2(name: str, field: str) -> int:
    """v2 datatype string -> wire dtype code; INVALID_ARGUMENT for types the scorer cannot run."""
    try:
        return V2_CODES[name]
    except KeyError:
        supported = ", ".join(V2_CODES)
        raise InvalidArgument(field, f"datatype '{name}' is not supported ({supported})") from None


def _field(name: str) -> str:
    return f"inputs['{name}']"


def decode_inputs(
    model_label: str,
    specs: Sequence[TensorSignature],
    tensors: Iterable[RawTensor],
    max_elements: int,
    max_bytes: int = 0,
) -> dict[str, np.ndarray]:
    """Validates request tensors against ``specs`` and decodes them (zero-copy) into arrays."""
    by_name: dict[str, RawTensor] = {}
    for tensor in tensors:
        if not tensor.name:
            raise InvalidArgument("inputs", "a tensor has no name")
        if tensor.name in by_name:
            raise InvalidArgument(_field(tensor.name), "given more than once")
        by_name[tensor.name] = tensor
    expected = {spec.name: spec for spec in specs}
    for name in by_name:
        if name not in expected:
            raise InvalidArgument(
                _field(name),
                f"unexpected tensor; {model_label} takes {', '.join(expected)}",
            )
    for name in expected:
        if name not in by_name:
            raise InvalidArgument(_field(name), f"missing; {model_label} requires it")

    total = 0
    total_bytes = 0
    for spec in specs:
        tensor = by_name[spec.name]
        if tensor.dtype != spec.dtype:
            given = V2_DATATYPES.get(tensor.dtype, str(tensor.dtype))
            raise InvalidArgument(
                _field(spec.name), f"dtype {given} given, the model expects {spec.dtype_name}"
            )
        if len(tensor.shape) != len(spec.shape):
            raise InvalidArgument(
                _field(spec.name),
                f"rank {len(tensor.shape)} given (shape {list(tensor.shape)}), the model expects "
                f"rank {len(spec.shape)} (shape {list(spec.shape)})",
            )
        for axis, (given, wanted) in enumerate(zip(tensor.shape, spec.shape, strict=True)):
            if given < 0:
                raise InvalidArgument(_field(spec.name), f"negative dimension {given}")
            if wanted >= 0 and given != wanted:
                raise InvalidArgument(
                    _field(spec.name), f"dimension {axis} is {given}, the model expects {wanted}"
                )
        total += element_count(tensor.shape)
        if total > max_elements:
            raise ResourceExhausted(
                f"{_field(spec.name)}: the request has more than {max_elements} input elements "
                f"(this tensor alone has {element_count(tensor.shape)})"
            )
        total_bytes += len(tensor.data)
        if max_bytes and total_bytes > max_bytes:
            raise ResourceExhausted(
                f"{_field(spec.name)}: the request has more than {max_bytes} bytes of input "
                f"(this tensor alone has {len(tensor.data)})"
            )
    _check_shared_dims(specs, by_name)
    return {
        spec.name: from_raw(
            spec.name, spec.dtype, by_name[spec.name].shape, by_name[spec.name].data
        )
        for spec in specs
    }


def _check_shared_dims(specs: Sequence[TensorSignature], tensors: dict[str, RawTensor]) -> None:
    """Axes the model names alike (e.g. every input's batch axis ``B``) must have equal sizes."""
    seen: dict[str, tuple[str, int]] = {}
    for spec in specs:
        for axis, dim_name in enumerate(spec.dim_names):
            if not dim_name:
                continue
            size = tensors[spec.name].shape[axis]
            if dim_name in seen and seen[dim_name][1] != size:
                other, other_size = seen[dim_name]
                raise InvalidArgument(
                    _field(spec.name),
                    f"axis {axis} ('{dim_name}') is {size} but '{other}' has {other_size}",
                )
            seen.setdefault(dim_name, (spec.name, size))


def select_outputs(
    specs: Sequence[TensorSignature], requested: Sequence[str], field: str
) -> list[str]:
    """Output names to compute: all when none are requested; INVALID_ARGUMENT for unknown names."""
    names = [spec.name for spec in specs]
    if not requested:
        return names
    for name in requested:
        if name not in names:
            raise InvalidArgument(
                field, f"unknown output '{name}'; the model has {', '.join(names)}"
            )
    return list(dict.fromkeys(requested))
