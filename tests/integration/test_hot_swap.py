"""Model repository life cycle under load: hot swap with zero failed requests, broken versions
refused while the old one keeps serving, version policy, explicit load/unload, queue-full over
gRPC, metrics."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.endpoints import free_loopback_port
from services.common.tensors import to_proto
from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import (
    BuiltRepo,
    build_graph,
    build_model_repo,
    make_weights,
    publish,
    reference_scores,
)
from tests.fixtures.rpc_counts import RpcCounter
from tests.fixtures.servers import (
    ADMIN_METADATA,
    LoopThread,
    encoder_config,
    explicit_control,
    ranker_config,
    scorer_config,
    start_host,
)

pytestmark = pytest.mark.integration


def inputs(candidates: int = 5) -> dict[str, np.ndarray]:
    return {
        "src_items": np.array([[1, 2, 3]], dtype=np.int64),
        "src_mask": np.ones((1, 3), dtype=np.float32),
        "tgt_items": np.array([[4]], dtype=np.int64),
        "tgt_mask": np.ones((1, 1), dtype=np.float32),
        "candidates": np.arange(1, candidates + 1, dtype=np.int64).reshape(1, -1),
    }


def request(name: str, version: str = "") -> scorer_pb2.PredictRequest:
    from xdrec.common.v1 import tensor_pb2

    return scorer_pb2.PredictRequest(
        model=tensor_pb2.ModelRef(name=name, version=version),
        inputs=[to_proto(n, a) for n, a in inputs().items()],
    )


class Load:
    """Client threads sending Predict continuously; records versions seen and failures."""

    def __init__(self, address: str, name: str, threads: int = 4) -> None:
        self.address, self.name = address, name
        self.stop = threading.Event()
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.count = 0
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            while not self.stop.is_set():
                try:
                    response = stub.Predict(request(self.name), timeout=10)
                    self.versions.append(response.model.version)
                    self.count += 1
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")

    def wait_for(self, version: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.versions and self.versions[-1] == version:
                return
            time.sleep(0.05)
        raise AssertionError(f"never served version {version}; last {self.versions[-3:]}")

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(15)


def metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_hot_swap_under_load_fails_no_request_and_refuses_broken_versions(
    loop: LoopThread, tmp_path
) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    port = free_loopback_port()
    scorer = start_host(
        loop,
        ScorerApp,
        scorer_config(
            repo.root,
            poll_interval_s=0.1,
            metrics_port=port,
            max_queue_delay_ms=1.0,
            **explicit_control(tmp_path),
        ),
    )
    load = Load(scorer.address, repo.name)
    try:
        time.sleep(0.3)
        publish(repo, "2")  # a good new version: polled, warmed, swapped in
        load.wait_for("2")
        publish(repo, "3", model_bytes=b"this is not an ONNX graph")  # hash fine, load fails
        wrong = build_graph(make_weights(3, 13, 21))
        wrong.graph.input[0].name = "source_items"  # graph inputs differ from the manifest
        for node in wrong.graph.node:
            node.input[:] = ["source_items" if i == "src_items" else i for i in node.input]
        publish(repo, "4", model_bytes=wrong.SerializeToString())
        time.sleep(0.8)  # several polls: both refused, 2 keeps serving
        assert load.versions[-1] == "2"
        publish(repo, "5")  # and a good one after the broken ones goes live
        load.wait_for("5")
        time.sleep(0.3)
    finally:
        load.close()
    try:
        assert load.failures == [], load.failures[:5]
        assert load.count > 50 and {"1", "2", "5"} <= set(load.versions)
        assert not {"3", "4"} & set(load.versions)
        with grpc.insecure_channel(scorer.address) as channel:
            listed = scorer_pb2_grpc.ScorerServiceStub(channel).ListModels(
                scorer_pb2.ListModelsRequest(), timeout=5
            )
            assert [m.model.version for m in listed.models] == ["2", "5"]  # latest:2, good only
            v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:  # version 1 was retired after draining
                scorer_pb2_grpc.ScorerServiceStub(channel).Predict(
                    request(repo.name, "1"), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            # explicit unload / load
            v2_stub.RepositoryModelUnload(
                v2.RepositoryModelUnloadRequest(model_name=repo.name),
                timeout=10,
                metadata=ADMIN_METADATA,
            )
            time.sleep(0.3)  # polling does not bring an unloaded model back
            assert not v2_stub.ModelReady(v2.ModelReadyRequest(name=repo.name), timeout=5).ready
            v2_stub.RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name=repo.name),
                timeout=10,
                metadata=ADMIN_METADATA,
            )
            assert v2_stub.ModelReady(
                v2.ModelReadyRequest(name=repo.name, version="5"), timeout=5
            ).ready
        body = metrics(port)
        assert (
            f'xdrec_model_version_loaded{{model="{repo.name}",service="scorer",version="5"}} 1.0'
            in body
        )
        assert f'model="{repo.name}",service="scorer",version="1"' not in body
        assert f'xdrec_model_load_failures_total{{model="{repo.name}",service="scorer"}}' in body
        assert "xdrec_inference_batch_size_bucket" in body
        assert "xdrec_inference_queue_seconds_bucket" in body
        assert "xdrec_inference_compute_seconds_bucket" in body
    finally:
        loop.run(scorer.stop(grace=0.2))


def test_queue_full_over_grpc_is_resource_exhausted(loop: LoopThread, repo: BuiltRepo) -> None:
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, max_queue=2, inference_threads=1))
    release = threading.Event()
    try:
        app = scorer.app
        model = app.manager.get(repo.name)
        batcher = app.backend.batcher(model)
        original = batcher._run
        batcher._run = lambda i, o: release.wait(10) and original(i, o)
        with grpc.insecure_channel(scorer.address) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            with ThreadPoolExecutor(2) as pool:
                blocked = [
                    pool.submit(stub.Predict, request(repo.name), timeout=20) for _ in range(2)
                ]
                deadline = time.monotonic() + 5
                while batcher.pending < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                with pytest.raises(grpc.RpcError) as info:
                    stub.Predict(request(repo.name), timeout=5)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "queue full" in info.value.details()
                release.set()
                for future in blocked:
                    assert future.result().model.version == repo.latest
            stub.Predict(request(repo.name), timeout=5)  # and serves again
    finally:
        release.set()
        loop.run(scorer.stop(grace=0.2))


def test_specific_version_policy_and_variant_selection(loop: LoopThread, tmp_path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=3)
    publish(repo, "4", exporter={"name": "t", "variant": "int8"})
    scorer = start_host(
        loop, ScorerApp, scorer_config(repo.root, version_policy="specific:1,3", poll_interval_s=0)
    )
    int8 = start_host(loop, ScorerApp, scorer_config(repo.root, variant="int8", poll_interval_s=0))
    try:
        assert [m.version_id for m in scorer.app.manager.models()] == ["1", "3"]
        assert [m.version_id for m in int8.app.manager.models()] == ["4"]
        with grpc.insecure_channel(scorer.address) as channel:
            response = scorer_pb2_grpc.ScorerServiceStub(channel).Predict(
                request(repo.name), timeout=5
            )
        assert response.model.version == "3"
        scores = np.frombuffer(response.outputs[0].data, dtype=np.float32)
        np.testing.assert_allclose(
            scores, reference_scores(repo.weights["3"], inputs())[0], rtol=1e-5, atol=1e-5
        )
    finally:
        loop.run(scorer.stop(grace=0.1))
        loop.run(int8.stop(grace=0.1))


def test_full_stack_rollout_keeps_encoder_and_scorer_on_a_common_version(
    loop: LoopThread, tmp_path
) -> None:
    """The encoder picks a new version up before the scorer: an unpinned request is re-encoded
    once, pinned to the encoder's previous version, so no request fails during the roll-out; a
    pinned request gets exactly its version or NOT_FOUND; afterwards one Encode + one Predict."""
    repo = build_model_repo(tmp_path / "repo", versions=1)
    encoder = start_host(
        loop, EncoderApp, encoder_config(repo.root, repo.features_path, poll_interval_s=0.1)
    )
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, poll_interval_s=0))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, scorer.address))
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            ask = ranker_pb2.RecommendRequest(user_id="warm", k=3)
            assert stub.Recommend(ask, timeout=5).model.version == "1"
            publish(repo, "2")
            deadline = time.monotonic() + 10
            while encoder.app.servicer.newest_version() != "2" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert encoder.app.servicer.newest_version() == "2"  # encoder ahead of the scorer
            with RpcCounter() as window:
                assert stub.Recommend(ask, timeout=5).model.version == "1"  # agreed on 1
            assert (window["Encode"], window["Predict"], window["ListModels"]) == (2, 2, 0)
            pinned = ranker_pb2.RecommendRequest(
                user_id="warm", k=3, model=tensor_pb2.ModelRef(version="2")
            )
            with RpcCounter() as exact, pytest.raises(grpc.RpcError) as info:
                stub.Recommend(pinned, timeout=5)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND  # exactly 2, or NOT_FOUND
            assert (exact["Encode"], exact["Predict"]) == (1, 1)
            loop.run(scorer.app.manager.poll_once())  # now the scorer has 2 as well
            deadline = time.monotonic() + 10
            version = ""
            while version != "2" and time.monotonic() < deadline:
                version = stub.Recommend(ask, timeout=5).model.version
                time.sleep(0.1)
            assert version == "2"
            with RpcCounter() as steady:
                assert stub.Recommend(ask, timeout=5).model.version == "2"
            assert (steady["Encode"], steady["Predict"], steady["GetCatalog"]) == (1, 1, 0)
    finally:
        for host in (ranker, scorer, encoder):
            loop.run(host.stop(grace=0.1))


def test_rollout_without_an_older_encoder_version_surfaces_not_found(
    loop: LoopThread, tmp_path
) -> None:
    """An encoder holding only the new version has nothing to fall back to: the scorer's
    NOT_FOUND reaches the caller after one Encode and one Predict (no re-negotiation)."""
    repo = build_model_repo(tmp_path / "repo", versions=1)
    encoder = start_host(
        loop,
        EncoderApp,
        encoder_config(repo.root, repo.features_path, poll_interval_s=0, version_policy="latest:1"),
    )
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, poll_interval_s=0))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, scorer.address))
    try:
        publish(repo, "2")
        loop.run(encoder.app.refresh())
        assert encoder.app.servicer.newest_version() == "2"
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            with RpcCounter() as counted, pytest.raises(grpc.RpcError) as info:
                stub.Recommend(ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 2 is not loaded" in info.value.details()
        assert (counted["Encode"], counted["Predict"], counted["ListModels"]) == (1, 1, 0)
    finally:
        for host in (ranker, scorer, encoder):
            loop.run(host.stop(grace=0.1))
