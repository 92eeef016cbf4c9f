"""The request path between ranker, encoder and scorer on real servers: RPCs per Recommend, the
ranker passing the encoder's inputs to the scorer unchanged, and the ranker never naming a model
input. Sequential Recommends are one Encode and one Predict each; concurrent ones, coalesced, one
Encode (or EncodeBatch) and one Predict per batch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2
from xdrec.ranker.v1 import ranker_pb2
from xdrec.scorer.v1 import scorer_pb2

from services.common.tensors import from_proto
from services.encoder.encoding import INPUT_NAMES
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.rpc_counts import RpcCounter, coalesced_batches
from tests.fixtures.servers import Stack

pytestmark = pytest.mark.integration

RANKER_SOURCES = Path(__file__).resolve().parents[2] / "services" / "ranker"


def test_steady_state_recommend_is_one_encode_and_one_predict(stack: Stack) -> None:
    ask = ranker_pb2.RecommendRequest(user_id="warm", k=5, exclude_item_ids=["t09"])
    stack.ranker_stub.Recommend(ask, timeout=10)  # the catalogue of this version is now cached
    with RpcCounter() as counted:
        for _ in range(5):
            stack.ranker_stub.Recommend(ask, timeout=10)
    assert counted["Encode"] == 5 and counted["Predict"] == 5
    assert counted["GetCatalog"] == 0 and counted["ListModels"] == 0
    with RpcCounter() as fallback:  # unknown user: popularity, no scorer call
        stack.ranker_stub.Recommend(ranker_pb2.RecommendRequest(user_id="nobody", k=3), timeout=10)
    assert (fallback["Encode"], fallback["Predict"]) == (1, 0)


def test_concurrent_recommends_are_one_encode_and_one_predict_per_batch(stack: Stack) -> None:
    """Under load (``--coalesce``, the default) a batch of concurrent Recommends costs one
    Encode (EncodeBatch when it holds more than one) and one Predict."""
    asks = [ranker_pb2.RecommendRequest(user_id="warm", k=5) for _ in range(32)]
    stack.ranker_stub.Recommend(asks[0], timeout=10)  # the catalogue is cached
    batches_before, members_before = coalesced_batches()
    with RpcCounter() as counted:
        calls = [stack.ranker_stub.Recommend.future(ask, timeout=10) for ask in asks]
        assert all(len(call.result().items) == 5 for call in calls)
    batches, members = coalesced_batches()
    batches, members = batches - batches_before, members - members_before
    assert members == len(asks) and batches < len(asks)
    assert counted["Encode"] + counted["EncodeBatch"] == batches
    assert counted["Predict"] == batches and counted["GetCatalog"] == 0


def test_ranker_passes_the_encoders_inputs_to_the_scorer_unchanged(stack: Stack) -> None:
    """The contract in place of a model with other input names: whatever the encoder returns is
    what the scorer receives, so the ranker needs no input name."""
    scorer = stack.ranker.app.scorer
    original = scorer.predict
    sent: list[scorer_pb2.PredictRequest] = []

    async def recording(request: scorer_pb2.PredictRequest, deadline: float):
        sent.append(request)
        return await original(request, deadline)

    scorer.predict = recording  # a spy: the real call still happens
    try:
        ask = dict(
            user_id="warm",
            candidate_item_ids=["t02", "t05", "nope", "t07", "t09"],
            exclude_item_ids=["t09"],
        )
        response = stack.ranker_stub.Recommend(ranker_pb2.RecommendRequest(k=5, **ask), timeout=10)
    finally:
        del scorer.predict
    encoded = stack.encoder_stub.Encode(encoder_pb2.EncodeRequest(**ask), timeout=10)
    assert len(sent) == 1
    assert list(sent[0].inputs) == list(encoded.inputs)
    assert sent[0].model == encoded.model == response.model
    assert sorted(i.item_id for i in response.items) == ["t05", "t07"]


def names_used(path: Path) -> tuple[set[str], set[str]]:
    """The string constants and the attribute names in one module's code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    constants = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return constants, {n.attr for n in nodes if isinstance(n, ast.Attribute)}


def test_the_ranker_never_names_a_model_input_nor_lists_models() -> None:
    sources = sorted(RANKER_SOURCES.rglob("*.py"))
    assert len(sources) > 5
    for path in sources:
        constants, attributes = names_used(path)
        assert not constants & set(INPUT_NAMES), f"{path.name} names a model input"
        assert not attributes & {"ListModels", "list_models"}, f"{path.name} lists models"


def test_encoder_filters_candidates_and_reports_the_previous_version(
    stack: Stack, repo: BuiltRepo
) -> None:
    everything = list(range(1, len(repo.vocab_target)))
    encoded = stack.encoder_stub.Encode(encoder_pb2.EncodeRequest(user_id="warm"), timeout=10)
    candidates = {t.name: from_proto(t) for t in encoded.inputs}["candidates"]
    assert from_proto(encoded.candidate_indices).tolist() == candidates[0].tolist()
    assert candidates[0].tolist() == [i for i in everything if i not in (1, 2, 3)]  # seen dropped
    assert encoded.model.version == "2" and encoded.previous_version == "1"
    kept = stack.encoder_stub.Encode(
        encoder_pb2.EncodeRequest(user_id="warm", include_seen=True, exclude_item_ids=["t05", "x"]),
        timeout=10,
    )
    assert from_proto(kept.candidate_indices).tolist() == [i for i in everything if i != 5]
    oldest = stack.encoder_stub.Encode(
        encoder_pb2.EncodeRequest(user_id="warm", model=tensor_pb2.ModelRef(version="1")),
        timeout=10,
    )
    assert oldest.model.version == "1" and oldest.previous_version == ""
