"""Score fusion (trainer/fusion.py, trainer/models/fused.py): the fused model computes exactly the
documented blend, switches weights by user group in the graph, its sparse item-KNN equals a dense
reference, and its weights depend on validation data only."""

from __future__ import annotations

import dataclasses
from math import comb

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from trainer.baselines.item_knn import cosine_cooccurrence
from trainer.config_checks import config_problems
from trainer.fusion import (
    FusionStage,
    cross_fitted_ndcg,
    fit_weights,
    simplex_grid,
    top_k_tables,
)
from trainer.models import FusedModel, HistoryTowerModel, build_model, model_spec
from trainer.models.fused import COLD, WARM, knn_scores
from trainer.splits import EvalSet

N_SOURCE, N_TARGET, K = 9, 12, 3


def random_fused(seed: int = 0) -> FusedModel:
    """A fused history tower with random weights, tables and coefficients (2 item features)."""
    torch.manual_seed(seed)
    config = tiny_config().model
    model = FusedModel(
        HistoryTowerModel(N_SOURCE, N_TARGET, config),
        N_SOURCE,
        N_TARGET,
        ("recent_popularity", "popularity"),
        K,
    )
    g = torch.Generator().manual_seed(seed)
    model.set_fusion(
        torch.rand(2, 4, generator=g) + 0.1,
        torch.rand(2, N_TARGET, generator=g),
        torch.randint(1, N_TARGET, (N_TARGET, K), generator=g),
        torch.rand(N_TARGET, K, generator=g),
        torch.randint(1, N_TARGET, (N_SOURCE, K), generator=g),
        torch.rand(N_SOURCE, K, generator=g),
    )
    return model.eval()


def numpy_blend(model: FusedModel, src, src_mask, tgt, tgt_mask, candidates) -> np.ndarray:
    """The documented formula, written out in numpy over dense neighbour matrices."""
    with torch.no_grad():
        inner = model.inner(
            *(torch.from_numpy(a) for a in (src, src_mask, tgt, tgt_mask, candidates))
        )
    inner = inner.numpy()

    def dense(neighbours, weights, rows):
        matrix = np.zeros((rows, N_TARGET))
        for r in range(rows):
            for n, w in zip(neighbours[r].numpy(), weights[r].numpy(), strict=True):
                matrix[r, n] += w
        return matrix

    target = dense(model.target_neighbours, model.target_weights, N_TARGET)
    source = dense(model.source_neighbours, model.source_weights, N_SOURCE)
    coefficients = model.coefficients.numpy()
    features = model.item_features.numpy()
    out = np.zeros(candidates.shape)
    for b in range(len(candidates)):
        warm = tgt_mask[b].sum() > 0
        a = coefficients[WARM if warm else COLD]
        items, mask, table = (
            (tgt[b], tgt_mask[b], target) if warm else (src[b], src_mask[b], source)
        )
        knn = (table[items] * mask[:, None]).sum(0)
        c = candidates[b]
        out[b] = a[0] * inner[b] + a[1] * knn[c] + a[2] * features[0, c] + a[3] * features[1, c]
    return out


def batch():
    src = np.array([[1, 4, 7], [2, 3, 0], [0, 0, 0]])
    src_mask = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    tgt = np.array([[5, 6], [0, 0], [0, 0]])
    tgt_mask = np.array([[1, 1], [0, 0], [0, 0]], dtype=np.float32)
    candidates = np.array([[1, 2, 3, 11, 5], [7, 1, 2, 3, 9], [4, 4, 8, 10, 1]])
    return src, src_mask, tgt, tgt_mask, candidates


def test_fused_scores_equal_the_numpy_blend():
    model = random_fused()
    arrays = batch()
    with torch.no_grad():
        got = model(*(torch.from_numpy(a) for a in arrays)).numpy()
        # target_logits (offline evaluation) gives the same scores as forward (the graph)
        user = model.user_representation(*(torch.from_numpy(a) for a in arrays[:4]))
        full = model.target_logits(user).numpy()
    np.testing.assert_allclose(got, numpy_blend(model, *arrays), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, arrays[4], 1), got, rtol=1e-5, atol=1e-5)


def test_group_is_chosen_by_the_target_mask():
    """Warm rows take the warm weights, rows with an empty target mask the cold ones."""
    model = random_fused()
    coefficients = torch.zeros(2, 4)
    coefficients[WARM, 2] = 1.0  # warm: recent popularity only
    coefficients[COLD, 3] = 1.0  # cold: popularity only
    model.coefficients.copy_(coefficients)
    src, src_mask, tgt, tgt_mask, candidates = batch()
    with torch.no_grad():
        scores = model(*(torch.from_numpy(a) for a in batch())).numpy()
    features = model.item_features.numpy()
    np.testing.assert_allclose(scores[0], features[0, candidates[0]], rtol=1e-6)
    np.testing.assert_allclose(scores[1:], features[1, candidates[1:]], rtol=1e-6)


def test_sparse_knn_scatter_equals_a_dense_reference():
    rng = np.random.default_rng(3)
    histories = [np.unique(rng.integers(1, N_TARGET, size=5)) for _ in range(40)]
    sim = cosine_cooccurrence(histories, histories, (N_TARGET, N_TARGET), block_users=7)
    neighbours, weights = top_k_tables(sim, K, drop_diagonal=True)
    dense = sim.to_dense().numpy()
    np.fill_diagonal(dense, 0.0)
    kept = np.zeros_like(dense)
    for row in range(1, N_TARGET):  # the reference top-k: k largest per row
        top = np.argsort(-dense[row], kind="stable")[:K]
        kept[row, top] = dense[row, top]
    users = [histories[0], histories[1][:2], np.array([3])]
    items = np.zeros((3, 5), dtype=np.int64)
    mask = np.zeros((3, 5), dtype=np.float32)
    for r, h in enumerate(users):
        items[r, : len(h)], mask[r, : len(h)] = h, 1.0
    got = knn_scores(torch.from_numpy(items), torch.from_numpy(mask), neighbours, weights, N_TARGET)
    expected = np.stack([kept[h].sum(0) for h in users])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert neighbours[0].eq(0).all() and weights[0].eq(0).all()  # padding has none


def test_simplex_grid_starts_with_the_model_alone():
    grid = simplex_grid(4, 0.1)
    assert len(grid) == comb(10 + 3, 3)
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert (grid >= 0).all() and grid[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_fused_model_rebuilds_from_its_spec():
    model = random_fused()
    again = build_model(model_spec(model), N_SOURCE, N_TARGET, tiny_config().model)
    again.load_state_dict(model.state_dict())
    arrays = [torch.from_numpy(a) for a in batch()]
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(*arrays), model(*arrays))


@pytest.fixture(scope="module")
def untrained_tower(ml100k_split):
    torch.manual_seed(0)
    s = ml100k_split
    return HistoryTowerModel(len(s.source_vocab), len(s.target_vocab), tiny_config().model)


def test_weights_are_fitted_on_validation_only(ml100k_split, untrained_tower):
    """Other test labels change the test metrics, never the weights or the scales."""
    config = tiny_config()
    config.fusion.enabled = True
    rng = np.random.default_rng(0)
    n = len(ml100k_split.target_vocab)
    shuffled = {
        g: EvalSet(
            e.name,
            e.users,
            e.source_histories,
            e.target_histories,
            [np.unique(rng.integers(1, n, size=len(labels))) for labels in e.labels],
        )
        for g, e in ml100k_split.test.items()
    }
    other = dataclasses.replace(ml100k_split, test=shuffled)
    first = FusionStage(ml100k_split, config).apply(untrained_tower)
    second = FusionStage(other, config).apply(untrained_tower)
    assert first.fit.groups == second.fit.groups
    assert first.test != second.test
    for g in first.fit.groups.values():  # an untrained model gains from every signal
        assert g.valid_ndcg_fused > g.valid_ndcg_model
        assert abs(sum(g.weights.values()) - 1.0) < 1e-9
    # The weights the grid reports are what the fused model scores on validation (in-sample);
    # selection reads the cross-fitted estimate, never above the in-sample best.
    for group, metrics in first.valid.items():
        g = first.fit.groups[group]
        assert metrics["ndcg@10_in_sample"] == pytest.approx(g.valid_ndcg_fused, abs=1e-6)
        assert metrics["ndcg@10"] == g.valid_ndcg_cross_fitted <= g.valid_ndcg_fused + 1e-12
    assert first.fit.helps


def test_bad_fusion_settings_are_named_before_training():
    config = tiny_config()
    config.fusion.components = ["recent_popularity", "recency", "recent_popularity"]
    config.fusion.grid_step = 0.0
    problems = "\n".join(config_problems(config))
    assert "fusion.components: unknown component(s) ['recency']" in problems
    assert "repeats a component" in problems
    assert "fusion.grid_step=0.0 must be in (0, 1]" in problems


def test_a_group_without_validation_users_keeps_the_model_alone():
    """No users to fit on (e.g. split.cold_share=0): the group's blend is the model's own scores."""
    fit = fit_weights(
        random_fused(), {"cold": EvalSet("none", [], [], [], [])}, tiny_config(), None
    )
    cold = fit.groups["cold"]
    assert cold.weights["model"] == 1.0 and cold.coefficient("model") == 1.0
    assert not fit.helps


def test_cross_fitting_does_not_reward_a_point_that_wins_by_luck():
    """Two grid points: the model alone (column 0) and a blend that is best in-sample only
    because of one user. Picking on one half and scoring on the other exposes it."""
    per_user = np.full((8, 2), 0.5)
    per_user[0::2, 1] = 0.55  # the blend wins on the even half ...
    per_user[0, 1] = 1.0  # ... mostly thanks to one lucky user
    per_user[1::2, 1] = 0.4  # and loses on the odd half
    in_sample_best = per_user.mean(axis=0).max()
    # Even half picks the blend -> scored on the odd half (0.4 each); odd half picks the model
    # -> scored on the even half (0.5 each).
    assert cross_fitted_ndcg(per_user) == pytest.approx((4 * 0.4 + 4 * 0.5) / 8)
    assert cross_fitted_ndcg(per_user) < in_sample_best
    assert cross_fitted_ndcg(np.full((5, 3), 0.25)) == pytest.approx(0.25)
    assert cross_fitted_ndcg(np.zeros((0, 3))) == 0.0
