"""A really trained and exported model, served by the three real services started through the
CLI (`xdrec serve all`, separate processes), gives exactly the recommendations the offline
evaluation computes: no training/serving skew in histories, vocabularies, exclusion or scores;
for the plain model and for the same model with score fusion."""

import numpy as np
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.ranker.v1 import ranker_pb2

from tests.conftest import tiny_config
from tests.fixtures.offline_ranking import check_served_equals_offline
from tests.fixtures.served_run import served_run
from trainer.models import FusedModel

K = 10


@pytest.fixture(scope="module", params=["plain", "fused"])
def served(request, ml100k_split, tmp_path_factory):
    """The trained tower as is, and wrapped in its validation-fitted score fusion
    (trainer/fusion.py: item-KNN scatter-add and item features inside the graph)."""
    config = tiny_config(strategy="pretrain_finetune")
    config.fusion.enabled = request.param == "fused"
    with served_run(config, ml100k_split, tmp_path_factory.mktemp("served")) as (stub, model):
        assert isinstance(model, FusedModel) == config.fusion.enabled
        yield stub, model, config


@pytest.mark.integration
@pytest.mark.parametrize("group", ["warm", "cold"])
def test_served_recommendations_equal_offline_ranking(served, ml100k_split, group):
    stub, model, config = served
    check_served_equals_offline(stub, model, config, ml100k_split, group, model_name="tiny")


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
