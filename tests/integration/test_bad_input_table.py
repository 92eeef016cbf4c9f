"""Bad input over all four public APIs against the real services on loopback: one table.

Every client mistake must come back with a precise status (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
NOT_FOUND, UNIMPLEMENTED...) whose message names the field, never UNKNOWN or INTERNAL, never a
file path or ONNX Runtime's text, and nothing returns OK with garbage (a negative index, NaN).
Malformed bodies (bytes that are not the message, invalid UTF-8 in a string) are sent raw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.ranker.v1 import ranker_pb2

from services.common.tensors import to_proto
from tests.fixtures.model_repo import MODEL_NAME, SOURCE_ITEMS, TARGET_ITEMS
from tests.fixtures.scorer_requests import predict, valid_arrays
from tests.fixtures.servers import Stack

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
VAGUE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

METHODS = {
    "ranker": "/xdrec.ranker.v1.RankerService/Recommend",
    "encoder": "/xdrec.encoder.v1.EncoderService/Encode",
    "predict": "/xdrec.scorer.v1.ScorerService/Predict",
    "v2": "/inference.GRPCInferenceService/ModelInfer",
    "v2-metadata": "/inference.GRPCInferenceService/ModelMetadata",
    "v2-ready": "/inference.GRPCInferenceService/ModelReady",
    "v2-load": "/inference.GRPCInferenceService/RepositoryModelLoad",
    "v2-unload": "/inference.GRPCInferenceService/RepositoryModelUnload",
}
SOURCE_LIMIT = len(SOURCE_ITEMS) + 1  # vocabulary size, padding included
TARGET_LIMIT = len(TARGET_ITEMS) + 1


@dataclass(frozen=True)
class Case:
    """One bad request: where it goes, what it is, the status and the field the message names."""

    api: str
    label: str
    request: Message | bytes
    code: grpc.StatusCode
    field: str


def infer(arrays: dict[str, np.ndarray] | None = None) -> v2.ModelInferRequest:
    arrays = valid_arrays() if arrays is None else arrays
    request = v2.ModelInferRequest(model_name=MODEL_NAME)
    for name, array in arrays.items():
        request.inputs.add(
            name=name,
            datatype="INT64" if array.dtype == np.int64 else "FP32",
            shape=list(array.shape),
        )
        request.raw_input_contents.append(array.tobytes())
    return request


def with_array(name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    arrays = valid_arrays()
    arrays[name] = array
    return arrays


def without(name: str) -> dict[str, np.ndarray]:
    arrays = valid_arrays()
    del arrays[name]
    return arrays


def tensor_cases() -> Iterator[tuple[str, dict[str, np.ndarray], grpc.StatusCode, str]]:
    """Bad tensors shared by Predict and ModelInfer: (label, arrays, code, field)."""
    for name in valid_arrays():
        yield f"missing {name}", without(name), INVALID, f"inputs['{name}']"
        wrong = valid_arrays()[name]
        other = np.float32 if wrong.dtype == np.int64 else np.int64
        yield f"{name} wrong dtype", with_array(name, wrong.astype(other)), INVALID, name
        yield f"{name} rank 1", with_array(name, wrong.reshape(-1)), INVALID, name
        yield f"{name} rank 3", with_array(name, wrong.reshape(1, 1, -1)), INVALID, name
    for name, limit, lowest in (
        ("src_items", SOURCE_LIMIT, 0),
        ("tgt_items", TARGET_LIMIT, 0),
        ("candidates", TARGET_LIMIT, 1),
    ):
        width = valid_arrays()[name].shape[1]
        for bad in (limit, limit + 1000, lowest - 1, -(2**62), 2**62):
            values = np.full((1, width), bad, dtype=np.int64)
            yield f"{name} index {bad}", with_array(name, values), INVALID, f"inputs['{name}']"
    yield (
        "zero candidates",
        with_array("candidates", np.zeros((1, 0), dtype=np.int64)),
        INVALID,
        "inputs['candidates']",
    )
    for mask in ("src_mask", "tgt_mask"):
        width = valid_arrays()[mask].shape[1]
        for value in (math.nan, math.inf, -math.inf):
            values = np.full((1, width), value, dtype=np.float32)
            yield f"{mask} {value}", with_array(mask, values), INVALID, f"inputs['{mask}']"
    yield (
        "batch axes disagree",
        with_array("candidates", np.ones((2, 3), dtype=np.int64)),
        INVALID,
        "inputs['candidates']",
    )
    yield (
        "history axes disagree",
        with_array("src_mask", np.ones((1, 3), dtype=np.float32)),
        INVALID,
        "inputs['src_mask']",
    )


def raw(*fields: tuple[int, bytes]) -> bytes:
    """A protobuf body of length-delimited fields (lets a test write invalid UTF-8)."""
    body = b""
    for number, value in fields:
        body += bytes([(number << 3) | 2, len(value)]) + value
    return body


MALFORMED = {
    "truncated length": b"\x0a\x05ab",
    "bad wire type": b"\x0f\x01",
    "field number 0": b"\x02\x01a",
    "garbage": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
}


def malformed_cases(api: str, utf8_body: bytes) -> Iterator[Case]:
    for label, body in MALFORMED.items():
        yield Case(api, f"malformed: {label}", body, INVALID, "request")
    yield Case(api, "invalid UTF-8 in a string", utf8_body, INVALID, "request")


def scorer_cases() -> Iterator[Case]:
    for label, arrays, code, field in tensor_cases():
        yield Case("predict", label, predict(arrays), code, field)
        yield Case("v2", label, infer(arrays), code, field)
    yield Case(
        "predict", "empty model name", predict(model=tensor_pb2.ModelRef()), INVALID, "model.name"
    )
    yield Case(
        "predict",
        "unknown model",
        predict(model=tensor_pb2.ModelRef(name="nope")),
        NOT_FOUND,
        "model 'nope'",
    )
    yield Case(
        "predict",
        "unknown version",
        predict(model=tensor_pb2.ModelRef(name=MODEL_NAME, version="99")),
        NOT_FOUND,
        "version 99",
    )
    yield Case(
        "predict", "unknown output", predict(output_names=("nope",)), INVALID, "output_names"
    )
    duplicate = predict()
    duplicate.inputs.append(duplicate.inputs[0])
    yield Case("predict", "tensor given twice", duplicate, INVALID, "inputs['src_items']")
    extra = predict()
    extra.inputs.append(to_proto("extra", np.zeros((1, 1), dtype=np.int64)))
    yield Case("predict", "unexpected tensor", extra, INVALID, "inputs['extra']")
    nameless = predict()
    nameless.inputs[0].name = ""
    yield Case("predict", "tensor without name", nameless, INVALID, "inputs")
    short = predict()
    short.inputs[4].data = short.inputs[4].data[:-1]
    yield Case("predict", "short tensor data", short, INVALID, "candidates")
    negative = predict()
    negative.inputs[4].shape[:] = [1, -3]
    yield Case("predict", "negative dimension", negative, INVALID, "candidates")
    unknown_dtype = predict()
    unknown_dtype.inputs[0].dtype = 77
    yield Case("predict", "unknown dtype code", unknown_dtype, INVALID, "src_items")
    # Limits (defaults): 4,194,304 elements, 8 MiB of input; bodies beyond 8 MiB + 64 KiB are
    # refused by the transport before they are buffered.
    many = predict()
    many.inputs[4].shape[:] = [1, 4_200_000]  # the element limit is checked before the bytes
    yield Case("predict", "too many elements", many, EXHAUSTED, "inputs['candidates']")
    too_big = predict(with_array("candidates", np.ones((1, 1_048_600), dtype=np.int64)))
    yield Case("predict", "too many bytes", too_big, EXHAUSTED, "inputs['candidates']")
    huge = predict(with_array("candidates", np.ones((1, 1_100_000), dtype=np.int64)))
    yield Case("predict", "body beyond the transport limit", huge, EXHAUSTED, "larger than max")
    yield from malformed_cases("predict", raw((1, raw((1, b"\xff\xfe")))))

    yield Case("v2", "empty model name", infer().__class__(), INVALID, "model_name")
    unknown = infer()
    unknown.model_name = "nope"
    yield Case("v2", "unknown model", unknown, NOT_FOUND, "model 'nope'")
    string_type = infer()
    string_type.inputs[0].datatype = "BYTES"
    yield Case("v2", "unsupported datatype", string_type, INVALID, "inputs['src_items'].datatype")
    bogus_type = infer()
    bogus_type.inputs[1].datatype = "FLOAT"
    yield Case("v2", "unknown datatype", bogus_type, INVALID, "inputs['src_mask'].datatype")
    missing_raw = infer()
    del missing_raw.raw_input_contents[-1]
    yield Case("v2", "raw contents count", missing_raw, INVALID, "raw_input_contents")
    typed = v2.ModelInferRequest(model_name=MODEL_NAME)
    typed.inputs.add(name="src_items", datatype="INT64", shape=[1, 2]).contents.int64_contents[
        :
    ] = [1]
    yield Case("v2", "typed contents count", typed, INVALID, "inputs['src_items']")
    varints = v2.ModelInferRequest(model_name=MODEL_NAME)
    varints.inputs.add(name="candidates", datatype="INT64", shape=[1, 1_100_000])
    varints.inputs[0].contents.int64_contents.extend([1] * 1_100_000)  # 1.1 MB on the wire
    yield Case("v2", "typed contents too large decoded", varints, EXHAUSTED, "inputs['candidates']")
    fp16 = v2.ModelInferRequest(model_name=MODEL_NAME)
    fp16.inputs.add(name="src_mask", datatype="FP16", shape=[1, 1])
    yield Case("v2", "FP16 without raw contents", fp16, INVALID, "inputs['src_mask']")
    unknown_output = infer()
    unknown_output.outputs.add(name="nope")
    yield Case("v2", "unknown output", unknown_output, INVALID, "outputs")
    short_raw = infer()
    short_raw.raw_input_contents[4] = short_raw.raw_input_contents[4][:-1]
    yield Case("v2", "short raw contents", short_raw, INVALID, "candidates")
    many_v2 = infer()
    many_v2.inputs[4].shape[:] = [1, 4_200_000]
    yield Case("v2", "too many elements", many_v2, EXHAUSTED, "inputs['candidates']")
    too_big_v2 = infer(with_array("candidates", np.ones((1, 1_048_600), dtype=np.int64)))
    yield Case("v2", "too many bytes", too_big_v2, EXHAUSTED, "inputs['candidates']")
    yield from malformed_cases("v2", raw((1, b"\xff\xfe")))
    yield Case("v2-metadata", "empty name", v2.ModelMetadataRequest(), INVALID, "name")
    yield Case("v2-metadata", "unknown model", v2.ModelMetadataRequest(name="x"), NOT_FOUND, "x")
    yield Case("v2-ready", "empty name", v2.ModelReadyRequest(), INVALID, "name")
    for api, request in (
        ("v2-load", v2.RepositoryModelLoadRequest(model_name=MODEL_NAME)),
        ("v2-unload", v2.RepositoryModelUnloadRequest(model_name=MODEL_NAME)),
    ):
        yield Case(
            api,
            "control plane off",
            request,
            grpc.StatusCode.UNIMPLEMENTED,
            "--model-control explicit",
        )


def encode(**fields) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(**{"user_id": "warm", **fields})


def recommend(**fields) -> ranker_pb2.RecommendRequest:
    return ranker_pb2.RecommendRequest(**{"user_id": "warm", "k": 2, **fields})


def event(item_id: str = "t01", domain: str = "", timestamp: float = 0.0) -> tensor_pb2.Event:
    return tensor_pb2.Event(item_id=item_id, domain=domain, timestamp=timestamp)


def shared_request_cases(api: str, build) -> Iterator[Case]:
    """What the encoder checks; the ranker relays the encoder's answer with the same status."""
    yield Case(api, "empty user_id", build(user_id=""), INVALID, "user_id")
    yield Case(api, "user_id too long", build(user_id="u" * 257), INVALID, "user_id")
    yield Case(api, "unserved domain", build(domain="books"), INVALID, "domain")
    yield Case(api, "empty candidate id", build(candidate_item_ids=["t01", ""]), INVALID, "[1]")
    yield Case(
        api,
        "event without item",
        build(recent_events=[event(item_id="")]),
        INVALID,
        "recent_events[0].item_id",
    )
    yield Case(
        api,
        "event domain",
        build(recent_events=[event(domain="books")]),
        INVALID,
        "recent_events[0].domain",
    )
    for value in (math.nan, math.inf, -math.inf, -1.0):
        yield Case(
            api,
            f"event timestamp {value}",
            build(recent_events=[event(), event(timestamp=value)]),
            INVALID,
            "recent_events[1].timestamp",
        )
    yield Case(
        api,
        "too many candidates",
        build(candidate_item_ids=["t01"] * 5001),
        EXHAUSTED,
        "candidate_item_ids",
    )
    yield Case(
        api, "too many excluded", build(exclude_item_ids=["t01"] * 5001), EXHAUSTED, "exclude"
    )
    yield Case(
        api,
        "unknown model",
        build(model=tensor_pb2.ModelRef(name="nope")),
        NOT_FOUND,
        "model 'nope'",
    )
    yield Case(
        api,
        "unknown version",
        build(model=tensor_pb2.ModelRef(name=MODEL_NAME, version="99")),
        NOT_FOUND,
        "version 99",
    )
    yield from malformed_cases(api, raw((1, b"\xc3\x28")))


def encoder_cases() -> Iterator[Case]:
    yield from shared_request_cases("encoder", encode)
    yield Case(
        "encoder",
        "too many recent events",
        encode(recent_events=[event()] * 1001),
        EXHAUSTED,
        "recent_events",
    )


def ranker_cases() -> Iterator[Case]:
    yield from shared_request_cases("ranker", recommend)
    for k in (0, -1, -(2**31)):
        yield Case("ranker", f"k {k}", recommend(k=k), INVALID, "k")
    yield Case("ranker", "k too large", recommend(k=101), EXHAUSTED, "k")


CASES = [*scorer_cases(), *encoder_cases(), *ranker_cases()]


def test_the_table_covers_every_api_with_at_least_100_cases() -> None:
    assert len(CASES) >= 100, len(CASES)
    assert {"ranker", "encoder", "predict", "v2"} <= {case.api for case in CASES}
    labels = [(case.api, case.label) for case in CASES]
    assert len(labels) == len(set(labels)), "case labels must be unique"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.api}: {c.label}" for c in CASES])
def test_bad_input_gets_a_precise_status_naming_the_field(stack: Stack, case: Case) -> None:
    address = {"ranker": stack.ranker.address, "encoder": stack.encoder.address}.get(
        case.api, stack.scorer.address
    )
    body = case.request if isinstance(case.request, bytes) else case.request.SerializeToString()
    channel = stack.channel(address)
    call = channel.unary_unary(METHODS[case.api])  # raw bytes in and out
    with pytest.raises(grpc.RpcError) as info:
        call(body, timeout=20)
    code, details = info.value.code(), info.value.details() or ""
    assert code not in VAGUE, f"{code.name}: {details}"
    assert code == case.code, f"{code.name}: {details}"
    assert case.field in details, details
    assert "ONNXRuntime" not in details and "/tmp" not in details, details
