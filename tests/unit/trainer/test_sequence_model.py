"""The sequence model: shapes, padding, the future objective's causality, cold start, ONNX."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import tiny_config
from trainer.batching import pad_histories
from trainer.config import ModelConfig
from trainer.config_checks import config_problems
from trainer.future_objective import future_cut, merge_labels
from trainer.models import SequenceModel, build_model, model_spec
from trainer.models.base import INPUT_NAMES
from trainer.models.sequence import recency_positions

N_SRC, N_TGT = 30, 40


def small_model(**overrides) -> SequenceModel:
    config = ModelConfig(embedding_dim=16, hidden_dim=32, seq_layers=2, seq_heads=2, seq_max_len=8)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = SequenceModel(N_SRC, N_TGT, config)
    with torch.no_grad():  # non-zero biases and query so every part of the graph matters
        model.target_bias.weight.normal_()
        model.query.normal_()
    return model.eval()


def batch(histories_src, histories_tgt, candidates):
    src, src_mask = pad_histories(histories_src, 50)
    tgt, tgt_mask = pad_histories(histories_tgt, 50)
    return [torch.from_numpy(a) for a in (src, src_mask, tgt, tgt_mask, np.asarray(candidates))]


def test_shapes_and_all_paths_score():
    model = small_model()
    inputs = batch(
        [np.array([1, 2, 3]), np.array([4]), np.zeros(0, np.int64)],
        [np.array([5, 6]), np.zeros(0, np.int64), np.zeros(0, np.int64)],
        np.tile(np.arange(1, 8), (3, 1)),
    )
    scores = model(*inputs)
    assert scores.shape == (3, 7)
    assert torch.isfinite(scores).all()  # warm, cold (no target) and unknown (nothing) users
    user = model.user_representation(*inputs[:4])
    assert model.target_logits(user).shape == (3, N_TGT)
    assert model.source_logits(user).shape == (3, N_SRC)


def test_recency_positions_count_from_the_most_recent_item():
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    assert recency_positions(mask, 10).tolist() == [[2, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0] * 5]
    assert recency_positions(torch.ones(1, 5), 3).tolist() == [[2, 2, 2, 1, 0]]


def test_padding_never_changes_scores():
    model = small_model()
    src, tgt = [np.array([3, 1, 2])], [np.array([7, 9])]
    candidates = np.array([[1, 2, 3, 4, 5]])
    reference = model(*batch(src, tgt, candidates))
    # Wider padding with junk item ids under mask 0, in both domains.
    s, sm = pad_histories(src, 50)
    t, tm = pad_histories(tgt, 50)
    s = np.concatenate([s, np.array([[11, 12, 13, 14]])], axis=1)
    sm = np.concatenate([sm, np.zeros((1, 4), np.float32)], axis=1)
    t = np.concatenate([t, np.array([[21, 22]])], axis=1)
    tm = np.concatenate([tm, np.zeros((1, 2), np.float32)], axis=1)
    padded = model(*(torch.from_numpy(a) for a in (s, sm, t, tm, candidates)))
    torch.testing.assert_close(padded, reference, rtol=0, atol=1e-5)
    # A row's scores do not depend on the other rows of the batch (and their lengths).
    both = model(
        *batch(
            [src[0], np.arange(1, 20)], [tgt[0], np.zeros(0, np.int64)], np.tile(candidates, (2, 1))
        )
    )
    torch.testing.assert_close(both[:1], reference, rtol=0, atol=1e-5)


def test_order_and_domain_matter():
    model = small_model()
    candidates = np.array([[1, 2, 3, 4, 5]])
    forward = model(*batch([np.array([1, 2])], [np.array([3, 4, 5])], candidates))
    reversed_ = model(*batch([np.array([1, 2])], [np.array([5, 4, 3])], candidates))
    assert not torch.allclose(forward, reversed_)


def test_cold_start_uses_the_source_sequence():
    model = small_model()
    empty = np.zeros(0, np.int64)
    candidates = np.tile(np.arange(1, N_TGT), (2, 1))
    scores = model(*batch([np.array([1, 2, 3]), np.array([9, 8])], [empty, empty], candidates))
    assert not torch.allclose(scores[0], scores[1])  # different sources, different lists


def test_future_cut_never_feeds_a_label():
    items = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0], [9, 0, 0, 0, 0, 0]])
    mask = (items > 0).float()
    for seed in range(20):
        inputs, rows, labels = future_cut(items, mask, 2, torch.Generator().manual_seed(seed))
        for row in range(3):
            fed = set(items[row][inputs[row] > 0].tolist())
            wanted = set(labels[rows == row].tolist())
            assert wanted and not fed & wanted
            n_fed = len(fed)
            real = items[row][mask[row] > 0].tolist()
            assert real[:n_fed] == sorted(fed, key=real.index)  # the input is a prefix
            assert wanted == set(real[n_fed : n_fed + 2])  # labels: the next <= 2 items
    # A one-item history has no input and its item as the label.
    inputs, rows, labels = future_cut(items[2:], mask[2:], 0, torch.Generator().manual_seed(0))
    assert inputs.sum() == 0 and labels.tolist() == [9]


def test_merge_labels_takes_each_row_from_one_side():
    first = (np.array([0, 1, 1]), np.array([5, 6, 7]))
    second = (np.array([0, 1, 2]), np.array([8, 9, 10]))
    rows, items = merge_labels(np.array([True, False, True]), first, second)
    assert rows.tolist() == [0, 1] and items.tolist() == [5, 9]


def test_source_item_domains_feed_the_domain_embedding():
    config = ModelConfig(embedding_dim=16, hidden_dim=32, seq_max_len=8)
    domains = np.r_[0, np.ones(15, np.int64), np.full(14, 2, np.int64)]
    model = SequenceModel(N_SRC, N_TGT, config, source_item_domain=domains)
    assert model.num_source_domains == 2 and model.target_domain == 3
    rebuilt = build_model(model_spec(model), N_SRC, N_TGT, config)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.source_item_domain, model.source_item_domain)
    with pytest.raises(ValueError, match="source_item_domain"):
        SequenceModel(N_SRC, N_TGT, config, source_item_domain=np.ones(3))


def test_onnx_parity_on_every_dynamic_axis(tmp_path):
    from export.onnx_export import export_onnx

    model = small_model()
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch_size, src_len, tgt_len, n_candidates in [
        (1, 1, 1, 1),
        (3, 12, 5, 39),
        (17, 60, 2, 7),
    ]:
        src = [rng.integers(1, N_SRC, rng.integers(0, src_len + 1)) for _ in range(batch_size)]
        tgt = [rng.integers(1, N_TGT, rng.integers(0, tgt_len + 1)) for _ in range(batch_size)]
        candidates = rng.integers(1, N_TGT, (batch_size, n_candidates))
        inputs = batch(src, tgt, candidates)
        with torch.no_grad():
            expected = model(*inputs).numpy()
        feed = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
        actual = session.run(["scores"], feed)[0]
        assert actual.shape == (batch_size, n_candidates)
        np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_config_checks_name_the_sequence_fields():
    config = tiny_config(strategy="emcdr", objective="next")
    config.model.family = "sequence"
    config.model.seq_heads = 3
    problems = "\n".join(config_problems(config))
    assert "model.embedding_dim=16 must be divisible by model.seq_heads=3" in problems
    assert "train.strategy='emcdr'" in problems
    assert "train.objective='next' is unknown" in problems
    config.model.family = "rnn"
    assert "model.family='rnn' is unknown" in "\n".join(config_problems(config))


@pytest.fixture(scope="module")
def small_split(ml100k_split):
    """ML-100K cut to 150 training users and 40 validation users per group: seconds per epoch."""
    users = sorted(ml100k_split.train_target)[:150]
    keep = set(users)

    def first(evalset):
        n = 40
        return dataclasses.replace(
            evalset,
            users=evalset.users[:n],
            source_histories=evalset.source_histories[:n],
            target_histories=evalset.target_histories[:n],
            labels=evalset.labels[:n],
        )

    return dataclasses.replace(
        ml100k_split,
        train_target={u: ml100k_split.train_target[u] for u in users},
        train_source={u: h for u, h in ml100k_split.train_source.items() if u in keep},
        valid={k: first(v) for k, v in ml100k_split.valid.items()},
    )


@pytest.mark.parametrize(
    ("family", "strategy"),
    [("sequence", "pretrain_finetune"), ("sequence", "joint"), ("history_tower", "joint")],
)
def test_future_objective_trains_and_transfers(family, strategy, small_split):
    """One epoch of each transfer strategy with the future objective (pretrain_finetune also
    runs source pre-training); the objective works for the history tower too."""
    from trainer.models import HistoryTowerModel
    from trainer.training import Trainer

    config = tiny_config(objective="future", epochs=1, pretrain_epochs=1, eval_every=1)
    config.model.family = family
    config.model.seq_layers = 1
    config.model.max_source_history = config.model.max_target_history = 10
    config.model.seq_max_len = 10
    trainer = Trainer(config, small_split, show_progress=False)
    result = trainer.fit(strategy, seed=0)
    assert isinstance(result.model, SequenceModel if family == "sequence" else HistoryTowerModel)
    assert all(np.isfinite(p["loss"]) for p in result.curve)
    assert result.valid["warm"]["ndcg@10"] > 0
    assert result.valid["cold"]["ndcg@10"] > 0


def test_recent_cut_labels_the_latest_items():
    items = torch.arange(1, 11).unsqueeze(0)
    mask = torch.ones(1, 10)
    for seed in range(10):
        inputs, _, labels = future_cut(items, mask, 3, torch.Generator().manual_seed(seed), True)
        assert int(inputs.sum()) in (7, 8, 9)  # the cut falls among the last 3 items
        assert set(labels.tolist()) <= {8, 9, 10} and labels.max() == 10


def test_recent_popularity_counts_only_up_to_the_cutoff(ml100k_split):
    from trainer.item_features import recent_popularity

    valid = recent_popularity(ml100k_split, 0.1, "valid")
    test = recent_popularity(ml100k_split, 0.1, "test")
    assert valid.shape == test.shape == (len(ml100k_split.target_vocab),)
    assert valid[0] == 0 and valid.max() > 1  # log1p counts
    assert not np.allclose(valid, test)  # the test cutoff also knows the validation window
    events = ml100k_split.target_events
    late = events["phase"] == 2  # test-window interactions never count
    only_in_test = set(events["items"][late]) - set(events["items"][~late])
    assert all(test[i] == 0 for i in only_in_test)


def test_recent_popularity_enters_the_score_and_the_graph(tmp_path):
    from export.onnx_export import export_onnx

    model = small_model()
    inputs = batch([np.array([1, 2])], [np.array([3])], np.array([[1, 2, 3, 4]]))
    with torch.no_grad():
        before = model(*inputs)
    with torch.no_grad():
        model.recent_weight.fill_(3.0)
    model.set_recent_popularity(np.r_[0.0, 1.0, np.zeros(N_TGT - 2)])
    with torch.no_grad():
        after = model(*inputs)
    assert float(after[0, 0] - before[0, 0]) == pytest.approx(3.0, abs=1e-5)
    torch.testing.assert_close(after[0, 1:].detach(), before[0, 1:].detach())
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
    feed = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    np.testing.assert_allclose(session.run(["scores"], feed)[0], after.detach().numpy(), atol=1e-5)
