"""The sequence model, trained for a few seconds on ML-100K, exported to ONNX and served by the
unchanged services (`xdrec serve all`: encoder, scorer, ranker as separate processes), gives the
recommendations the offline model computes for warm and cold-start users; unknown users get the
ranker's popularity fallback."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from cli.serving.recommend import wait_until_serving
from export.exporter import ExportOptions, export_run, load_model
from services.common.endpoints import free_loopback_port
from tests.conftest import tiny_config
from tests.fixtures.offline_ranking import offline_top_k
from trainer.experiment import run_experiment
from trainer.item_features import recent_popularity
from trainer.models import SequenceModel

ROOT = Path(__file__).resolve().parents[2]
K = 10


@pytest.fixture(scope="module")
def served_sequence(ml100k_split, tmp_path_factory):
    work = tmp_path_factory.mktemp("served-sequence")
    config = tiny_config(strategy="pretrain_finetune", objective="future", epochs=2)
    config.name = "seq"
    config.model.family = "sequence"
    config.model.seq_layers = 1
    config.model.max_source_history = config.model.max_target_history = 20
    config.model.seq_max_len = 20
    config.model.recent_popularity_window = 0.1  # the exported graph carries this item input
    config.baselines.bpr_epochs = 1
    config.baselines.bpr_eval_every = 1
    run_experiment(config, work / "run", show_progress=False, split=ml100k_split)
    export_run(ExportOptions(work / "run", work / "repo"), log=lambda *_: None)
    ports = [free_loopback_port() for _ in range(3)]
    command = [sys.executable, "-m", "cli", "serve", "all", "--model-repo", str(work / "repo"),
               "--model", "seq", "--features", str(work / "run/features.tsv"), "--metrics", "false",
               "--encoder-port", str(ports[0]), "--scorer-port", str(ports[1]), "--ranker-port", str(ports[2]),
               "--log-level", "WARNING"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    channel = grpc.insecure_channel(f"127.0.0.1:{ports[2]}")
    try:
        assert wait_until_serving(channel, timeout=90), "the suite did not become SERVING"
        model, _ = load_model(work / "run")
        assert isinstance(model, SequenceModel)
        # The saved (and served) model holds recent popularity as known at the test cutoff.
        expected = recent_popularity(ml100k_split, 0.1, "test")
        np.testing.assert_allclose(model.target_recent.numpy(), expected)
        yield ranker_pb2_grpc.RankerServiceStub(channel), model, config
    finally:
        channel.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.integration
@pytest.mark.parametrize("group", ["warm", "cold"])
def test_served_sequence_model_equals_offline_ranking(served_sequence, ml100k_split, group):
    stub, model, config = served_sequence
    evalset = ml100k_split.test[group]
    checked, lists = 0, set()
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
        assert response.model.name == "seq"
        top, scores = offline_top_k(model, config, source, target)
        served = [i.item_id for i in response.items]
        assert served == [ml100k_split.target_vocab.ids[i] for i in top]
        np.testing.assert_allclose([i.score for i in response.items], scores, atol=1e-4)
        assert not {ml100k_split.target_vocab.ids[i] for i in target} & set(served)
        lists.add(tuple(served))
        checked += 1
        if checked == 5:
            break
    assert checked == 5
    assert len(lists) > 1  # personal lists: cold users too, from their source sequence alone


@pytest.mark.integration
def test_sequence_model_unknown_user_gets_popularity(served_sequence):
    stub, _, _ = served_sequence
    response = stub.Recommend(ranker_pb2.RecommendRequest(user_id="nobody-at-all", k=K), timeout=10)
    assert response.user_status == tensor_pb2.USER_STATUS_UNKNOWN
    assert response.fallback == ranker_pb2.FALLBACK_POPULARITY
    assert len(response.items) == K


def test_sequence_graph_scores_like_torch(served_sequence):
    """The offline model (the one exported) is a real, non-trivial scorer: finite, user-dependent."""
    _, model, _ = served_sequence
    with torch.no_grad():
        user = model.user_representation(
            torch.tensor([[1, 2, 3], [4, 5, 0]]),
            torch.tensor([[1.0, 1, 1], [1, 1, 0]]),
            torch.zeros(2, 1, dtype=torch.long),
            torch.zeros(2, 1),
        )
    assert torch.isfinite(user).all() and not torch.allclose(user[0], user[1])
