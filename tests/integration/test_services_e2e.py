"""The three real services over loopback gRPC, called only through the generated stubs."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.ranker.v1 import ranker_pb2
from xdrec.scorer.v1 import scorer_pb2

from services.common.tensors import from_proto, to_proto
from tests.fixtures.model_repo import BuiltRepo, reference_scores
from tests.fixtures.servers import Stack, health_status

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


def recommend(stack: Stack, **kwargs) -> ranker_pb2.RecommendResponse:
    return stack.ranker_stub.Recommend(ranker_pb2.RecommendRequest(**kwargs), timeout=10)


def expect_error(call, request, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    return info.value.details()


def encoded_scores(stack: Stack, repo: BuiltRepo, user: str) -> dict[str, float]:
    """What the model gives every catalogue item for ``user``, recomputed in numpy."""
    encoded = stack.encoder_stub.Encode(encoder_pb2.EncodeRequest(user_id=user), timeout=10)
    inputs = {t.name: from_proto(t) for t in encoded.inputs}
    scores = reference_scores(repo.weights[repo.latest], inputs)[0]
    return {
        repo.vocab_target[i]: float(s) for i, s in zip(inputs["candidates"][0], scores, strict=True)
    }


# -- Recommend -------------------------------------------------------------------------------


def test_warm_user_top_k_excludes_seen_items(stack: Stack, repo: BuiltRepo) -> None:
    response = recommend(stack, user_id="warm", k=5)
    assert response.model.name == repo.name and response.model.version == repo.latest
    assert response.user_status == tensor_pb2.USER_STATUS_WARM
    assert response.fallback == ranker_pb2.FALLBACK_NONE
    ids = [i.item_id for i in response.items]
    assert len(ids) == 5 and not {"t01", "t02", "t03"} & set(ids)
    assert [i.rank for i in response.items] == [1, 2, 3, 4, 5]
    assert all(i.title == repo.title(i.item_id) for i in response.items)
    expected = encoded_scores(stack, repo, "warm")
    unseen = sorted((s, i) for i, s in expected.items() if i not in {"t01", "t02", "t03"})[::-1]
    assert ids == [i for _, i in unseen[:5]]
    for item in response.items:
        assert item.score == pytest.approx(expected[item.item_id], rel=1e-5, abs=1e-6)


def test_include_seen_returns_seen_items(stack: Stack) -> None:
    response = recommend(stack, user_id="warm", k=20, include_seen=True)
    assert len(response.items) == 20
    assert {"t01", "t02", "t03"} <= {i.item_id for i in response.items}


def test_cold_start_user_is_scored_from_source_history(stack: Stack, repo: BuiltRepo) -> None:
    response = recommend(stack, user_id="cold", k=3)
    assert response.user_status == tensor_pb2.USER_STATUS_COLD_START
    assert response.fallback == ranker_pb2.FALLBACK_NONE
    expected = encoded_scores(stack, repo, "cold")
    assert [i.item_id for i in response.items] == sorted(expected, key=expected.get, reverse=True)[
        :3
    ]


@pytest.mark.parametrize("user", ["never-seen", "stale"])
def test_unknown_user_gets_the_flagged_popularity_fallback(
    stack: Stack, repo: BuiltRepo, user: str
) -> None:
    response = recommend(stack, user_id=user, k=4)
    assert response.user_status == tensor_pb2.USER_STATUS_UNKNOWN
    assert response.fallback == ranker_pb2.FALLBACK_POPULARITY
    assert [i.item_id for i in response.items] == ["t01", "t02", "t03", "t04"]
    total = sum(c["popularity"] for c in repo.catalog)
    assert response.items[0].score == pytest.approx(repo.popularity("t01") / total)


def test_k_larger_than_what_is_left(stack: Stack) -> None:
    response = recommend(stack, user_id="heavy", k=10)  # 16 of 20 items seen
    assert sorted(i.item_id for i in response.items) == ["t17", "t18", "t19", "t20"]


def test_explicit_candidates_with_unknown_ids_and_exclusions(stack: Stack) -> None:
    response = recommend(
        stack,
        user_id="warm",
        k=10,
        candidate_item_ids=["t02", "t05", "nope", "t07", "t09", "s01"],
        exclude_item_ids=["t09"],
    )
    assert sorted(i.item_id for i in response.items) == ["t05", "t07"]  # t02 seen, t09 excluded
    assert list(response.unknown_candidate_ids) == ["nope", "s01"]


def test_all_candidates_filtered_gives_an_empty_answer(stack: Stack) -> None:
    response = recommend(stack, user_id="warm", k=3, candidate_item_ids=["t01", "zzz"])
    assert list(response.items) == [] and list(response.unknown_candidate_ids) == ["zzz"]


def test_recent_events_change_the_status(stack: Stack) -> None:
    event = tensor_pb2.Event(item_id="t11", domain="target")
    response = recommend(stack, user_id="brand-new", k=20, recent_events=[event])
    assert response.user_status == tensor_pb2.USER_STATUS_WARM
    assert "t11" not in {i.item_id for i in response.items}  # a seen item now


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"user_id": "warm", "k": 0}, grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        ({"user_id": "warm", "k": 101}, grpc.StatusCode.RESOURCE_EXHAUSTED, "k:"),
        ({"user_id": "", "k": 5}, grpc.StatusCode.INVALID_ARGUMENT, "user_id:"),
        (
            {"user_id": "warm", "k": 5, "candidate_item_ids": ["t01"] * 5001},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "candidate_item_ids:",
        ),
        (
            {"user_id": "warm", "k": 5, "domain": "books"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "domain:",
        ),
        (
            {"user_id": "warm", "k": 5, "model": tensor_pb2.ModelRef(name="nope")},
            grpc.StatusCode.NOT_FOUND,
            "model 'nope'",
        ),
        (
            {"user_id": "warm", "k": 5, "model": tensor_pb2.ModelRef(name="tiny-xd", version="9")},
            grpc.StatusCode.NOT_FOUND,
            "version 9",
        ),
    ],
)
def test_bad_recommend_requests(stack: Stack, kwargs, code, field: str) -> None:
    expect_error(stack.ranker_stub.Recommend, ranker_pb2.RecommendRequest(**kwargs), code, field)


def test_request_id_is_propagated_and_returned(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="xdrec.rpc"):
        response, call = stack.ranker_stub.Recommend.with_call(
            ranker_pb2.RecommendRequest(user_id="warm", k=2),
            metadata=(("x-request-id", "req-e2e-42"),),
            timeout=10,
        )
    assert response.request_id == "req-e2e-42"
    assert ("x-request-id", "req-e2e-42") in tuple(call.trailing_metadata())
    seen = {
        (r.server, r.method) for r in caplog.records if getattr(r, "request_id", "") == "req-e2e-42"
    }
    assert {("ranker", "Recommend"), ("encoder", "Encode"), ("scorer", "Predict")} <= seen


def test_request_id_is_generated_when_absent(stack: Stack) -> None:
    _, call = stack.ranker_stub.Recommend.with_call(
        ranker_pb2.RecommendRequest(user_id="warm", k=1), timeout=10
    )
    metadata = dict(call.trailing_metadata())
    assert len(metadata["x-request-id"]) == 32


def test_tiny_deadline_then_still_serving(stack: Stack) -> None:
    # 1 us always expires (0.5 ms did not: the in-process suite can answer faster than that).
    # That the ranker forwards the caller's deadline downstream is checked in test_lifecycle.
    with pytest.raises(grpc.RpcError) as info:
        stack.ranker_stub.Recommend(
            ranker_pb2.RecommendRequest(user_id="warm", k=5), timeout=0.000001
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(recommend(stack, user_id="warm", k=5).items) == 5


# -- encoder ---------------------------------------------------------------------------------


def test_encoder_builds_the_signature_tensors(stack: Stack, repo: BuiltRepo) -> None:
    response = stack.encoder_stub.Encode(
        encoder_pb2.EncodeRequest(user_id="warm", candidate_item_ids=["t04", "t05", "bogus"]),
        timeout=10,
    )
    tensors = {t.name: from_proto(t) for t in response.inputs}
    assert list(tensors) == ["src_items", "src_mask", "tgt_items", "tgt_mask", "candidates"]
    assert tensors["candidates"].tolist() == [[4, 5]]
    assert from_proto(response.seen_indices).tolist() == [1, 2, 3]
    assert list(response.unknown_candidate_ids) == ["bogus"]
    assert response.model.version == repo.latest
    assert (response.source_history_length, response.target_history_length) == (3, 3)


def test_encoder_catalog(stack: Stack, repo: BuiltRepo) -> None:
    response = stack.encoder_stub.GetCatalog(encoder_pb2.GetCatalogRequest(), timeout=10)
    assert [i.item_id for i in response.items] == repo.vocab_target[1:]
    assert response.items[0].title == repo.title("t01") and response.items[0].popularity == 96


def test_encoder_validation(stack: Stack) -> None:
    expect_error(
        stack.encoder_stub.Encode,
        encoder_pb2.EncodeRequest(user_id="x" * 300),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    )
    expect_error(
        stack.encoder_stub.Encode,
        encoder_pb2.EncodeRequest(user_id="u", candidate_item_ids=["t01"] * 5001),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "candidate_item_ids",
    )


# -- scorer ----------------------------------------------------------------------------------


def sample_inputs(candidates: list[int]) -> dict[str, np.ndarray]:
    return {
        "src_items": np.array([[1, 2, 3], [4, 0, 0]], dtype=np.int64),
        "src_mask": np.array([[1, 1, 1], [1, 0, 0]], dtype=np.float32),
        "tgt_items": np.array([[5, 6], [0, 0]], dtype=np.int64),
        "tgt_mask": np.array([[1, 1], [0, 0]], dtype=np.float32),
        "candidates": np.array([candidates, candidates[::-1]], dtype=np.int64),
    }


def predict_request(inputs: dict[str, np.ndarray], **model) -> scorer_pb2.PredictRequest:
    return scorer_pb2.PredictRequest(
        model=tensor_pb2.ModelRef(
            name=model.get("name", "tiny-xd"), version=model.get("version", "")
        ),
        inputs=[to_proto(n, a) for n, a in inputs.items()],
    )


def v2_request(model: str, inputs: dict[str, np.ndarray], **fields) -> v2.ModelInferRequest:
    """A v2 ModelInfer request with every tensor in ``raw_input_contents`` (as tritonclient does)."""
    request = v2.ModelInferRequest(model_name=model, **fields)
    for name, array in inputs.items():
        datatype = "INT64" if array.dtype == np.int64 else "FP32"
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request


def test_predict_v2_and_in_process_onnxruntime_agree(stack: Stack, repo: BuiltRepo) -> None:
    inputs = sample_inputs([1, 7, 20, 3])
    predicted = stack.scorer_stub.Predict(predict_request(inputs), timeout=10)
    assert predicted.model.version == repo.latest
    via_predict = from_proto(predicted.outputs[0])

    request = v2_request(repo.name, inputs, id="abc")
    inferred = stack.v2_stub.ModelInfer(request, timeout=10)
    assert (inferred.id, inferred.model_version) == ("abc", repo.latest)
    output = inferred.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("scores", "FP32", [2, 4])
    via_v2 = np.frombuffer(inferred.raw_output_contents[0], dtype="<f4").reshape(2, 4)

    session = ort.InferenceSession(str(repo.model_path()), providers=["CPUExecutionProvider"])
    (in_process,) = session.run(["scores"], inputs)
    np.testing.assert_array_equal(via_predict, via_v2)
    np.testing.assert_allclose(via_predict, in_process, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        via_predict, reference_scores(repo.weights[repo.latest], inputs), rtol=1e-5, atol=1e-5
    )


def test_pinned_versions_latest_two_are_served_others_not_found(stack: Stack) -> None:
    # version policy latest:2: both published versions are served, a pinned older one works
    response = stack.scorer_stub.Predict(
        predict_request(sample_inputs([1]), version="1"), timeout=5
    )
    assert response.model.version == "1"
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(sample_inputs([1]), version="7"),
        grpc.StatusCode.NOT_FOUND,
        "version 7",
    )
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(sample_inputs([1]), name="other"),
        grpc.StatusCode.NOT_FOUND,
        "model 'other'",
    )
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(sample_inputs([1]), name=""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model.name",
    )


def test_malformed_tensors_get_invalid_argument_naming_them(stack: Stack) -> None:
    inputs = sample_inputs([1, 2])
    request = predict_request(inputs)
    request.inputs[4].data = request.inputs[4].data[:-3]
    expect_error(
        stack.scorer_stub.Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "'candidates'",
        "bytes",
    )

    wrong_dtype = dict(inputs, src_mask=inputs["src_mask"].astype(np.float64))
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(wrong_dtype),
        grpc.StatusCode.INVALID_ARGUMENT,
        "src_mask",
        "FP64",
    )

    wrong_rank = dict(inputs, candidates=np.array([1, 2], dtype=np.int64))
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(wrong_rank),
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidates",
        "rank 1",
    )

    missing = {k: v for k, v in inputs.items() if k != "tgt_mask"}
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(missing),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tgt_mask",
        "missing",
    )

    extra = dict(inputs, bonus=np.zeros((2, 1), dtype=np.int64))
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(extra),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bonus",
        "unexpected",
    )

    request = predict_request(inputs)
    request.output_names.append("logits")
    expect_error(
        stack.scorer_stub.Predict,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "output_names",
        "logits",
    )


def test_oversized_request_is_resource_exhausted(stack: Stack) -> None:
    # Over the element limit (the tensor's bytes are not needed: elements are checked first).
    request = predict_request(sample_inputs([1]))
    candidates = next(t for t in request.inputs if t.name == "candidates")
    candidates.shape[:] = [2, 2_200_000]
    expect_error(
        stack.scorer_stub.Predict, request, grpc.StatusCode.RESOURCE_EXHAUSTED, "candidates"
    )
    # The same request with its 35 MB of data: refused by the transport's receive limit
    # (--max-request-bytes + 64 KiB) before it is buffered.
    huge = sample_inputs([1])
    huge["candidates"] = np.ones((2, 2_200_000), dtype=np.int64)
    expect_error(
        stack.scorer_stub.Predict,
        predict_request(huge),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    )


def test_out_of_range_index_is_invalid_argument_and_the_scorer_survives(stack: Stack) -> None:
    # Checked against the vocabulary before ONNX Runtime runs (it used to fail inside ORT with
    # INTERNAL and ORT's text; a negative index even returned OK with other items' scores).
    for bad in (999, -1):
        details = expect_error(
            stack.scorer_stub.Predict,
            predict_request(sample_inputs([1, bad])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs['candidates']",
            f"index {bad}",
            "vocab_target",
        )
        assert "ONNXRuntime" not in details
    assert from_proto(
        stack.scorer_stub.Predict(predict_request(sample_inputs([1, 2])), timeout=10).outputs[0]
    ).shape == (2, 2)


def test_v2_metadata_and_liveness(stack: Stack, repo: BuiltRepo) -> None:
    assert stack.v2_stub.ServerLive(v2.ServerLiveRequest(), timeout=5).live
    assert stack.v2_stub.ServerReady(v2.ServerReadyRequest(), timeout=5).ready
    assert stack.v2_stub.ModelReady(v2.ModelReadyRequest(name=repo.name), timeout=5).ready
    assert stack.v2_stub.ModelReady(  # latest:2 serves both versions
        v2.ModelReadyRequest(name=repo.name, version="1"), timeout=5
    ).ready
    assert not stack.v2_stub.ModelReady(
        v2.ModelReadyRequest(name=repo.name, version="3"), timeout=5
    ).ready
    server = stack.v2_stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=5)
    assert server.name == "xdrec-scorer"
    meta = stack.v2_stub.ModelMetadata(v2.ModelMetadataRequest(name=repo.name), timeout=5)
    assert list(meta.versions) == repo.versions and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs][-1] == (
        "candidates",
        "INT64",
        [-1, -1],
    )
    assert [(t.name, t.datatype) for t in meta.outputs] == [("scores", "FP32")]
    expect_error(
        stack.v2_stub.ModelMetadata,
        v2.ModelMetadataRequest(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        "nope",
    )


def test_v2_bad_requests(stack: Stack, repo: BuiltRepo) -> None:
    inputs = sample_inputs([1, 2])
    request = v2_request(repo.name, inputs)
    bad_type = v2.ModelInferRequest()
    bad_type.CopyFrom(request)
    bad_type.inputs[0].datatype = "BYTES"
    expect_error(
        stack.v2_stub.ModelInfer, bad_type, grpc.StatusCode.INVALID_ARGUMENT, "src_items", "BYTES"
    )
    short = v2.ModelInferRequest()
    short.CopyFrom(request)
    del short.raw_input_contents[-1]
    expect_error(
        stack.v2_stub.ModelInfer, short, grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"
    )
    wrong = v2.ModelInferRequest()
    wrong.CopyFrom(request)
    wrong.model_name = "nope"
    expect_error(stack.v2_stub.ModelInfer, wrong, grpc.StatusCode.NOT_FOUND, "nope")


def test_v2_typed_contents_are_accepted(stack: Stack, repo: BuiltRepo) -> None:
    inputs = sample_inputs([3, 4])
    request = v2.ModelInferRequest(model_name=repo.name)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, shape=list(array.shape))
        if array.dtype == np.int64:
            tensor.datatype = "INT64"
            tensor.contents.int64_contents.extend(array.ravel().tolist())
        else:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    response = stack.v2_stub.ModelInfer(request, timeout=10)
    scores = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(
        scores, reference_scores(repo.weights[repo.latest], inputs), rtol=1e-5, atol=1e-5
    )


def test_list_models_reports_signature_and_provider(stack: Stack, repo: BuiltRepo) -> None:
    models = stack.scorer_stub.ListModels(scorer_pb2.ListModelsRequest(), timeout=5).models
    assert [m.model.version for m in models] == repo.versions  # latest:2, oldest first
    info = models[-1]
    assert (info.model.name, info.model.version, info.state) == (repo.name, repo.latest, "READY")
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert [s.name for s in info.outputs] == ["scores"]
    assert info.inputs[0].dtype == tensor_pb2.DATA_TYPE_INT64


# -- health and reflection -------------------------------------------------------------------


def test_every_service_reports_serving(stack: Stack) -> None:
    for host, name in (
        (stack.encoder, "xdrec.encoder.v1.EncoderService"),
        (stack.scorer, "xdrec.scorer.v1.ScorerService"),
        (stack.scorer, "inference.GRPCInferenceService"),
        (stack.ranker, "xdrec.ranker.v1.RankerService"),
    ):
        assert health_status(host.address, name) == SERVING
        assert health_status(host.address, "") == SERVING


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("scorer", {"xdrec.scorer.v1.ScorerService", "inference.GRPCInferenceService"}),
        ("encoder", {"xdrec.encoder.v1.EncoderService"}),
        ("ranker", {"xdrec.ranker.v1.RankerService"}),
    ],
)
def test_reflection_lists_the_services(stack: Stack, which: str, expected: set[str]) -> None:
    address = getattr(stack, which).address
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert expected | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
