"""The wire tensor codec: round trips, and precise errors for malformed tensors."""

from __future__ import annotations

import numpy as np
import pytest
from xdrec.common.v1 import tensor_pb2

from services.common.tensors import TensorError, from_proto, from_raw, to_proto


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.linspace(0, 1, 5, dtype=np.float32),
        np.array([[True, False]]),
        np.arange(4, dtype=np.float16),
        np.float64(3.5),
        np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    ],
)
def test_round_trip_keeps_dtype_shape_and_values(array: np.ndarray) -> None:
    decoded = from_proto(to_proto("x", np.asarray(array)))
    assert decoded.dtype == np.asarray(array).dtype
    assert decoded.shape == np.asarray(array).shape
    np.testing.assert_array_equal(decoded, array)


def test_wire_bytes_are_little_endian_row_major() -> None:
    tensor = to_proto("x", np.array([[1, 2], [3, 4]], dtype=">i4"))
    assert tensor.dtype == tensor_pb2.DATA_TYPE_INT32
    assert tensor.data == np.array([1, 2, 3, 4], dtype="<i4").tobytes()


def test_byte_count_mismatch_names_the_tensor() -> None:
    tensor = to_proto("candidates", np.arange(4, dtype=np.int64))
    tensor.data = tensor.data[:-1]
    with pytest.raises(TensorError, match="tensor 'candidates'.*needs 32 bytes, got 31"):
        from_proto(tensor)


def test_unknown_dtype_negative_dims_and_element_limit() -> None:
    with pytest.raises(TensorError, match="unsupported dtype"):
        from_raw("a", 99, [1], b"\0")
    with pytest.raises(TensorError, match="negative dimension"):
        from_raw("a", tensor_pb2.DATA_TYPE_INT64, [-1, 2], b"")
    with pytest.raises(TensorError, match="exceed the limit of 10"):
        from_raw("a", tensor_pb2.DATA_TYPE_INT64, [2**40, 2**40], b"", max_elements=10)


def test_decoding_is_zero_copy_view() -> None:
    data = np.arange(3, dtype=np.int64).tobytes()
    decoded = from_raw("a", tensor_pb2.DATA_TYPE_INT64, [3], data)
    assert not decoded.flags.writeable  # a view on the message bytes, not a copy
