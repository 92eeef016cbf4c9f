"""The encoder and the scorer accept exactly the same versions (one acceptance rule).

The case that used to split them: a version whose ``model.onnx`` is garbage but whose manifest
hash and size were recomputed, so every file "verifies". The encoder used to check hashes only
and served it (dropping the good version under ``latest:1``); the scorer could not load the graph
and refused it. The mirror case: a catalogue that disagrees with the target vocabulary (rehashed
too) was refused by the encoder and served by the scorer. Both services must refuse such a version
and both must keep serving the good one, over real gRPC.
"""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
from xdrec.common.v1 import tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.server import ServiceHost
from services.common.tensors import from_proto, to_proto
from services.encoder.app import EncoderApp
from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import (
    BuiltRepo,
    build_graph,
    build_model_repo,
    publish,
    write_version,
)
from tests.fixtures.servers import LoopThread, encoder_config, scorer_config, start_host

pytestmark = pytest.mark.integration

GARBAGE = b"\x08\x07garbage that is no ONNX protobuf" * 64
POLL_S = 0.1


def publish_corrupt(repo: BuiltRepo, version: str, corrupt: str) -> None:
    """Publishes a broken version through the shared publisher: hashes and sizes are recomputed,
    so every file verifies."""
    if corrupt == "model":
        publish(repo, version, model_bytes=GARBAGE)
        return
    catalog = [dict(entry) for entry in repo.catalog]
    catalog[0]["index"] = 5  # t01 is index 1 in vocab_target
    files = {
        "model": ("model.onnx", build_graph(repo.weights["1"]).SerializeToString()),
        "vocab_source": ("vocab_source.json", json.dumps(repo.vocab_source).encode()),
        "vocab_target": ("vocab_target.json", json.dumps(repo.vocab_target).encode()),
        "catalog": ("catalog.json", json.dumps(catalog).encode()),
    }
    write_version(repo.root, repo.name, version, files)


def refusals(service: str, model: str) -> float:
    value = REGISTRY.get_sample_value(
        "xdrec_model_load_failures_total", {"service": service, "model": model}
    )
    return value or 0.0


def encode(address: str, version: str = "") -> encoder_pb2.EncodeResponse:
    with grpc.insecure_channel(address) as channel:
        return encoder_pb2_grpc.EncoderServiceStub(channel).Encode(
            encoder_pb2.EncodeRequest(
                user_id="warm", model=tensor_pb2.ModelRef(name="tiny-xd", version=version)
            ),
            timeout=5,
        )


def predict(address: str, inputs: dict[str, np.ndarray], version: str = "") -> str:
    with grpc.insecure_channel(address) as channel:
        response = scorer_pb2_grpc.ScorerServiceStub(channel).Predict(
            scorer_pb2.PredictRequest(
                model=tensor_pb2.ModelRef(name="tiny-xd", version=version),
                inputs=[to_proto(name, array) for name, array in inputs.items()],
            ),
            timeout=5,
        )
    return response.model.version


def start_pair(loop: LoopThread, repo: BuiltRepo, policy: str) -> tuple[ServiceHost, ServiceHost]:
    encoder = start_host(
        loop,
        EncoderApp,
        encoder_config(
            repo.root, repo.features_path, version_policy=policy, poll_interval_s=POLL_S
        ),
    )
    scorer = start_host(
        loop, ScorerApp, scorer_config(repo.root, version_policy=policy, poll_interval_s=POLL_S)
    )
    return encoder, scorer


def assert_both_serve_only(encoder: ServiceHost, scorer: ServiceHost, version: str) -> None:
    assert sorted(encoder.app.servicer.states) == [version]
    assert scorer.app.manager.versions("tiny-xd") == [version]
    encoded = encode(encoder.address)
    assert encoded.model.version == version
    inputs = {t.name: from_proto(t) for t in encoded.inputs}
    assert predict(scorer.address, inputs, version) == version


@pytest.mark.parametrize("corrupt", ["model", "catalog"])
@pytest.mark.parametrize("published", ["before_start", "while_serving"])
@pytest.mark.parametrize("policy", ["latest:1", "latest:2"])
def test_corrupt_but_rehashed_version_is_refused_by_both_services(
    loop: LoopThread, tmp_path, published: str, policy: str, corrupt: str
) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    before = (refusals("encoder", repo.name), refusals("scorer", repo.name))
    if published == "before_start":
        publish_corrupt(repo, "2", corrupt)
        encoder, scorer = start_pair(loop, repo, policy)
    else:
        encoder, scorer = start_pair(loop, repo, policy)
        assert_both_serve_only(encoder, scorer, "1")
        publish_corrupt(repo, "2", corrupt)
    try:
        time.sleep(8 * POLL_S)  # several polls of both services
        assert_both_serve_only(encoder, scorer, "1")
        with pytest.raises(grpc.RpcError) as info:
            encode(encoder.address, "2")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            predict(
                scorer.address, {t.name: from_proto(t) for t in encode(encoder.address).inputs}, "2"
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # each refused it once: the refusal is remembered, not retried every poll
        after = (refusals("encoder", repo.name), refusals("scorer", repo.name))
        assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)
        # a good version after the broken one goes live in both
        publish(repo, "3")
        deadline = time.monotonic() + 10
        expected = ["3"] if policy == "latest:1" else ["1", "3"]
        while time.monotonic() < deadline and (
            sorted(encoder.app.servicer.states, key=int) != expected
            or scorer.app.manager.versions(repo.name) != expected
        ):
            time.sleep(POLL_S)
        assert sorted(encoder.app.servicer.states, key=int) == expected
        assert scorer.app.manager.versions(repo.name) == expected
    finally:
        loop.run(encoder.stop(grace=0.1))
        loop.run(scorer.stop(grace=0.1))
