"""Conversion between numpy arrays and the wire ``Tensor`` message.

Tensors travel as raw little-endian bytes plus dtype and shape. Decoding is zero-copy
(``np.frombuffer``) and validates that the byte count matches the declared shape, so a malformed
tensor is rejected with a message that names it instead of surfacing as a reshape error deep in
ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from xdrec.common.v1 import tensor_pb2

# Wire dtype <-> numpy dtype (explicitly little-endian).
_TO_NUMPY: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("bool"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_FP16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FP64: np.dtype("<f8"),
}
_FROM_NUMPY: dict[str, int] = {dt.str.lstrip("<|="): code for code, dt in _TO_NUMPY.items()}

# Names used by the Open Inference Protocol v2 and by ONNX Runtime's type strings.
V2_DATATYPES: dict[int, str] = {
    tensor_pb2.DATA_TYPE_BOOL: "BOOL",
    tensor_pb2.DATA_TYPE_INT32: "INT32",
    tensor_pb2.DATA_TYPE_INT64: "INT64",
    tensor_pb2.DATA_TYPE_FP16: "FP16",
    tensor_pb2.DATA_TYPE_FP32: "FP32",
    tensor_pb2.DATA_TYPE_FP64: "FP64",
}
ORT_TYPES: dict[str, int] = {
    "tensor(bool)": tensor_pb2.DATA_TYPE_BOOL,
    "tensor(int32)": tensor_pb2.DATA_TYPE_INT32,
    "tensor(int64)": tensor_pb2.DATA_TYPE_INT64,
    "tensor(float16)": tensor_pb2.DATA_TYPE_FP16,
    "tensor(float)": tensor_pb2.DATA_TYPE_FP32,
    "tensor(double)": tensor_pb2.DATA_TYPE_FP64,
}


class TensorError(ValueError):
    """A tensor on the wire is malformed; the message names the tensor and what is wrong."""


def numpy_dtype(code: int) -> np.dtype:
    try:
        return _TO_NUMPY[code]
    except KeyError:
        raise TensorError(f"unsupported dtype {code}") from None


def dtype_code(dtype: np.dtype | type) -> int:
    # Byte order is normalised: to_proto converts big-endian arrays to little-endian bytes.
    key = np.dtype(dtype).newbyteorder("<").str.lstrip("<|=")
    try:
        return _FROM_NUMPY[key]
    except KeyError:
        raise TensorError(f"unsupported numpy dtype {np.dtype(dtype)}") from None


def to_proto(name: str, array: np.ndarray) -> tensor_pb2.Tensor:
    """Encodes ``array`` (any layout) as a little-endian C-order wire tensor."""
    code = dtype_code(array.dtype)
    data = np.ascontiguousarray(array, dtype=_TO_NUMPY[code]).tobytes()
    return tensor_pb2.Tensor(name=name, dtype=code, shape=list(array.shape), data=data)


def from_proto(tensor: tensor_pb2.Tensor, *, max_elements: int | None = None) -> np.ndarray:
    """Decodes a wire tensor, checking dtype, shape and byte count; raises TensorError."""
    return from_raw(tensor.name, tensor.dtype, tensor.shape, tensor.data, max_elements=max_elements)


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of ``shape`` (1 for a scalar); exact Python ints, so no overflow."""
    return math.prod(int(d) for d in shape)


def from_raw(
    name: str, dtype: int, shape: Sequence[int], data: bytes, *, max_elements: int | None = None
) -> np.ndarray:
    """Decodes raw little-endian bytes of a given wire dtype and shape (the codec behind
    ``from_proto``, also used for the v2 protocol's ``raw_input_contents``); raises TensorError."""
    label = f"tensor '{name}'" if name else "tensor"
    if dtype not in _TO_NUMPY:
        raise TensorError(f"{label}: unsupported dtype {dtype}")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{label}: negative dimension in shape {list(shape)}")
    count = element_count(shape)
    if max_elements is not None and count > max_elements:
        raise TensorError(f"{label}: {count} elements exceed the limit of {max_elements}")
    np_dtype = _TO_NUMPY[dtype]
    expected = count * np_dtype.itemsize
    if len(data) != expected:
        raise TensorError(
            f"{label}: shape {list(shape)} of {np_dtype.name} needs {expected} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=np_dtype).reshape(shape)
