"""A really trained and exported model, served by the three real services started through the
CLI (`xdrec serve all`, separate processes), gives exactly the recommendations the offline
evaluation computes: no training/serving skew in histories, vocabularies, exclusion or scores."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from cli.serving.recommend import wait_until_serving
from export.exporter import ExportOptions, export_run, load_model
from services.common.endpoints import free_loopback_port
from tests.conftest import tiny_config
from tests.fixtures.offline_ranking import offline_top_k
from trainer.experiment import run_experiment

ROOT = Path(__file__).resolve().parents[2]
K = 10


@pytest.fixture(scope="module")
def served(ml100k_split, tmp_path_factory):
    work = tmp_path_factory.mktemp("served")
    config = tiny_config(strategy="pretrain_finetune")
    run_experiment(config, work / "run", show_progress=False, split=ml100k_split)
    export_run(ExportOptions(work / "run", work / "repo"), log=lambda *_: None)
    ports = [free_loopback_port() for _ in range(3)]
    command = [sys.executable, "-m", "cli", "serve", "all", "--model-repo", str(work / "repo"),
               "--model", "tiny", "--features", str(work / "run/features.tsv"), "--metrics", "false",
               "--encoder-port", str(ports[0]), "--scorer-port", str(ports[1]), "--ranker-port", str(ports[2]),
               "--log-level", "WARNING"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    channel = grpc.insecure_channel(f"127.0.0.1:{ports[2]}")
    try:
        assert wait_until_serving(channel, timeout=90), "the suite did not become SERVING"
        model, _ = load_model(work / "run")
        yield ranker_pb2_grpc.RankerServiceStub(channel), model, config
    finally:
        channel.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.integration
@pytest.mark.parametrize("group", ["warm", "cold"])
def test_served_recommendations_equal_offline_ranking(served, ml100k_split, group):
    stub, model, config = served
    evalset = ml100k_split.test[group]
    checked = 0
    for user, source, target in zip(
        evalset.users, evalset.source_histories, evalset.target_histories, strict=True
    ):
        if (
            len(source) > config.model.max_source_history
            or len(target) > config.model.max_target_history
        ):
            continue  # equal timestamps may truncate differently; compare only untruncated users
        response = stub.Recommend(ranker_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
        expected = (
            tensor_pb2.USER_STATUS_WARM if group == "warm" else tensor_pb2.USER_STATUS_COLD_START
        )
        assert response.user_status == expected
        assert response.model.name == "tiny" and response.model.version == "1"
        top, scores = offline_top_k(model, config, source, target)
        assert [i.item_id for i in response.items] == [
            ml100k_split.target_vocab.ids[i] for i in top
        ]
        np.testing.assert_allclose([i.score for i in response.items], scores, atol=1e-4)
        seen = {ml100k_split.target_vocab.ids[i] for i in target}
        assert not seen & {i.item_id for i in response.items}
        checked += 1
        if checked == 5:
            break
    assert checked == 5


@pytest.mark.integration
def test_unknown_user_gets_flagged_popularity(served, ml100k_split):
    stub, _, _ = served
    response = stub.Recommend(ranker_pb2.RecommendRequest(user_id="nobody-at-all", k=K), timeout=10)
    assert response.user_status == tensor_pb2.USER_STATUS_UNKNOWN
    assert response.fallback == ranker_pb2.FALLBACK_POPULARITY
    popularity = ml100k_split.target_popularity.astype(float)
    popularity[0] = -1
    expected = np.argsort(-popularity, kind="stable")[:K]
    got = [ml100k_split.target_vocab.index[i.item_id] for i in response.items]
    assert sorted(popularity[got], reverse=True) == list(popularity[got])
    assert set(popularity[got]) == set(popularity[expected])
