"""The sequence model, trained for a few seconds on ML-100K, exported to ONNX and served by the
unchanged services (`xdrec serve all`: encoder, scorer, ranker as separate processes), gives the
recommendations the offline model computes for warm and cold-start users; unknown users get the
ranker's popularity fallback."""

import numpy as np
import pytest
import torch
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2

from tests.conftest import tiny_config
from tests.fixtures.offline_ranking import check_served_equals_offline
from tests.fixtures.served_run import served_run
from trainer.item_features import recent_popularity
from trainer.models import SequenceModel

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
    with served_run(config, ml100k_split, work) as (stub, model):
        assert isinstance(model, SequenceModel)
        # The saved (and served) model holds recent popularity as known at the test cutoff.
        expected = recent_popularity(ml100k_split, 0.1, "test")
        np.testing.assert_allclose(model.target_recent.numpy(), expected)
        yield stub, model, config


@pytest.mark.integration
@pytest.mark.parametrize("group", ["warm", "cold"])
def test_served_sequence_model_equals_offline_ranking(served_sequence, ml100k_split, group):
    stub, model, config = served_sequence
    lists = check_served_equals_offline(stub, model, config, ml100k_split, group, model_name="seq")
    assert len(set(lists)) > 1  # personal lists: cold users too, from their source sequence alone


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
