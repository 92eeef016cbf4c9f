"""Time-consistent recency: the per-moment recent-popularity table, times in batches, and the
training examples reading recent popularity at the moment of their labels (never later)."""

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tests.unit.trainer.hand_split import hand_split
from trainer.interaction_index import DomainIndex, HistoryIndex
from trainer.item_features import (
    RecencyTable,
    recent_popularity,
    window_counts,
    window_duration,
)
from trainer.training import Trainer

N_TARGET = 12
CUTOFF = 1000.0


def timed_split(seed: int = 0, users: int = 30):
    """A hand split whose users interact with distinct target items at known times in
    [0, CUTOFF); every training interaction is also a (phase 0) target event."""
    rng = np.random.default_rng(seed)
    histories, times = {}, {}
    for u in range(users):
        n = int(rng.integers(1, 8))
        histories[f"u{u}"] = rng.choice(np.arange(1, N_TARGET + 1), size=n, replace=False)
        times[f"u{u}"] = np.sort(rng.uniform(0.0, CUTOFF - 1.0, size=n)).round()
    items = np.concatenate(list(histories.values()))
    stamps = np.concatenate(list(times.values()))
    events = {"items": items, "times": stamps, "phase": np.zeros(len(items), dtype=np.int64)}
    split = hand_split(
        {u: h.tolist() for u, h in histories.items()}, n_target=N_TARGET, target_events=events
    )
    split.boundaries = {"valid_start": CUTOFF, "test_start": 2 * CUTOFF}
    split.train_target_times = times
    return split


def test_table_counts_only_events_strictly_before_the_moment():
    split = timed_split()
    share = 0.2
    table = RecencyTable.build(split, share, steps=4)
    events = split.target_events
    duration = window_duration(split, share)
    assert table.width == pytest.approx(duration / 4)
    moments = np.r_[events["times"], events["times"] + 0.5, np.linspace(0, CUTOFF, 37)]
    vectors = table.at(moments)
    for moment, vector in zip(moments, vectors, strict=True):
        # The window ends at the newest bucket edge at or before the moment ...
        edge = table.cutoff - table.edge_of(np.array([moment]))[0] * table.width
        assert moment - table.width < edge <= moment + 1e-9
        expected = window_counts(events["items"], events["times"], edge, duration, N_TARGET + 1)
        np.testing.assert_allclose(vector, expected, rtol=1e-6)
        # ... so nothing at or after the moment is counted, whatever the item.
        upper = window_counts(events["items"], events["times"], moment, duration + table.width, 13)
        assert np.all(vector <= upper + 1e-6)


def test_an_event_at_the_moment_itself_is_not_counted():
    split = timed_split()
    table = RecencyTable.build(split, 0.5, steps=8)
    events = split.target_events
    for row in range(len(events["items"])):
        item, time = events["items"][row], events["times"][row]
        same_time = (events["items"] == item) & (events["times"] == time)
        before = (events["items"] == item) & (events["times"] < time)
        assert same_time.sum() >= 1
        # log1p(count) of the item at its own moment counts only earlier interactions.
        assert np.expm1(table.at(np.array([time]))[0, item]) <= before.sum() + 1e-4


def test_table_at_the_cutoff_is_the_validation_vector():
    split = timed_split(seed=3)
    for share in (0.05, 0.3, 1.0):
        table = RecencyTable.build(split, share, steps=5)
        np.testing.assert_allclose(
            table.at(np.array([CUTOFF]))[0], recent_popularity(split, share, "valid"), rtol=1e-6
        )


def test_history_index_carries_times_slot_for_slot():
    histories = [np.array([3, 1, 2]), np.array([5]), np.array([], dtype=np.int64)]
    times = [np.array([10.0, 20.0, 30.0]), np.array([7.0]), np.array([])]
    index = HistoryIndex.from_histories(histories, times)
    rows = np.array([0, 1, 2])
    items, mask = index.padded(rows, max_len=2, width=2)
    stamps = index.padded_times(rows, max_len=2, width=2)
    np.testing.assert_array_equal(items, [[1, 2], [5, 0], [0, 0]])  # the 2 most recent
    np.testing.assert_array_equal(stamps, [[20.0, 30.0], [7.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(index.first_times(rows), [10.0, 7.0, 0.0])
    with pytest.raises(ValueError, match="item for item"):
        HistoryIndex.from_histories(histories, [np.array([1.0]), np.array([7.0]), np.array([])])


def test_domain_index_batches_carry_target_times():
    split = timed_split()
    users = sorted(split.train_target)
    index = DomainIndex(
        users, {}, split.train_target, "target", 5, 5, torch.device("cpu"), split.train_target_times
    )
    batch = index.batch(np.arange(len(users)))
    items, mask = batch.tgt_items.numpy(), batch.tgt_mask.numpy()
    for row, user in enumerate(users):
        lookup = dict(zip(split.train_target[user], split.train_target_times[user], strict=True))
        for slot in np.flatnonzero(mask[row]):
            assert batch.tgt_times[row, slot] == lookup[items[row, slot]]
        assert batch.tgt_first_time[row] == split.train_target_times[user][0]
    untimed = DomainIndex(users, {}, split.train_target, "target", 5, 5, torch.device("cpu"))
    assert untimed.batch(np.arange(3)).tgt_times is None


@pytest.mark.parametrize("objective", ["future", "denoise"])
def test_training_examples_read_recent_popularity_at_their_first_label(objective):
    """Each row's recent-popularity vector is the table's vector at the moment of its earliest
    label: no interaction at or after a label's time can inform the example."""
    split = timed_split(seed=1, users=40)
    config = tiny_config(objective=objective, future_window=2, cold_simulation_rate=0.3)
    config.model.recent_popularity_window = 0.3
    config.model.max_target_history = 10
    config.train.device = "cpu"
    config.train.cold_recency_at = "label"  # cold-start rows: see the test below
    trainer = Trainer(config, split, show_progress=False)
    assert trainer.recency is not None
    generator = torch.Generator().manual_seed(0)
    users = sorted(split.train_target)  # the index's rows, in order
    for start in range(0, len(users), 16):
        rows = np.arange(start, min(start + 16, len(users)))
        batch = trainer.target_batches.batch(rows)
        shard = trainer.target_inputs(batch, generator, use_source=True)
        assert shard.recent is not None and shard.recent.shape == (len(rows), N_TARGET + 1)
        labels = shard.tensors[4].numpy()
        for position, row in enumerate(rows):
            user = users[row]
            times = dict(zip(split.train_target[user], split.train_target_times[user], strict=True))
            first = min(times[i] for i in np.flatnonzero(labels[position]))
            np.testing.assert_allclose(
                shard.recent[position].numpy(), trainer.recency.at(np.array([first]))[0], rtol=1e-6
            )


def test_recency_weighted_labels_favour_recent_examples():
    split = timed_split(seed=2, users=40)
    config = tiny_config(recency_half_life=0.1)
    config.train.device = "cpu"
    trainer = Trainer(config, split, show_progress=False)
    assert trainer.recency is None and trainer.half_life == pytest.approx(
        0.1 * (CUTOFF - 0.0), abs=2
    )
    generator = torch.Generator().manual_seed(0)
    batch = next(trainer.target_batches.batches(40, generator))
    shard = trainer.target_inputs(batch, generator, use_source=False)
    weights = shard.row_weights.numpy()
    assert weights.mean() == pytest.approx(1.0, rel=1e-5)
    order = np.argsort(batch.tgt_first_time)
    assert np.all(np.diff(weights[order]) >= -1e-6)  # later examples weigh at least as much
    assert weights.max() / weights.min() > 10


def test_session_cuts_fall_at_a_break():
    from trainer.future_objective import future_cut, session_cuts

    times = np.array(
        [
            [0.0, 1.0, 500.0, 501.0, 2000.0],  # sessions start at slots 2 and 4
            [0.0, 1.0, 2.0, 0.0, 0.0],  # no break: uniform 1..2
            [5.0, 0.0, 0.0, 0.0, 0.0],  # one item: no input
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    items = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0], [9, 0, 0, 0, 0]])
    seen = set()
    for seed in range(30):
        cuts = session_cuts(times, mask, 100.0, torch.Generator().manual_seed(seed))
        assert int(cuts[0]) in (2, 4) and int(cuts[1]) in (1, 2) and int(cuts[2]) == 0
        seen.add(int(cuts[0]))
        inputs, rows, labels = future_cut(items, mask, 2, torch.Generator(), cuts=cuts)
        assert int(inputs[0].sum()) == int(cuts[0])
        first_label = labels[rows == 0].min()
        assert times[0, first_label - 1] - times[0, first_label - 2] >= 100.0  # after a break
    assert seen == {2, 4}


def test_cold_start_examples_read_the_cutoff_vector_without_their_own_interactions():
    """As cold-start evaluation scores them: the vector at the validation cutoff, where held-out
    users' interactions are not counted."""
    split = timed_split(seed=4, users=40)
    config = tiny_config(objective="future", future_window=2, cold_simulation_rate=0.5)
    config.model.recent_popularity_window = 0.5
    config.model.max_target_history = 10
    config.train.device = "cpu"
    trainer = Trainer(config, split, show_progress=False)
    users = sorted(split.train_target)
    rows = np.arange(len(users))
    shard = trainer.target_inputs(
        trainer.target_batches.batch(rows), torch.Generator().manual_seed(0), use_source=True
    )
    events = split.target_events
    duration = window_duration(split, 0.5)
    cold = np.flatnonzero(shard.tensors[3].numpy().sum(axis=1) == 0)
    assert len(cold) >= 5
    for row in cold:
        user = users[row]
        own = np.isin(np.arange(len(events["items"])), _rows_of(split, user))
        expected = window_counts(
            events["items"][~own], events["times"][~own], CUTOFF, duration, N_TARGET + 1
        )
        np.testing.assert_allclose(shard.recent[row].numpy(), expected, rtol=1e-6)


def _rows_of(split, user: str) -> np.ndarray:
    """Positions of ``user``'s interactions in the split's target events (built user by user,
    in the order of ``train_target``)."""
    offsets, position = {}, 0
    for u, history in split.train_target.items():
        offsets[u] = position
        position += len(history)
    return np.arange(offsets[user], offsets[user] + len(split.train_target[user]))


def test_unreleased_items_are_no_negatives_but_labels_stay():
    from trainer.item_features import first_seen_times
    from trainer.sampled_softmax import PADDING_LOGIT, Candidates
    from trainer.training import mask_unreleased

    split = timed_split(seed=5)
    first = first_seen_times(split)
    events = split.target_events
    for item in range(1, N_TARGET + 1):
        seen = events["times"][events["items"] == item]
        assert first[item] == (seen.min() if len(seen) else np.inf)
    logits = torch.zeros(2, 4)
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    unreleased = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    full = mask_unreleased(logits, labels, unreleased, Candidates(None, None, None, labels))
    assert full[0, 1] == 0 and full[0, 2] == PADDING_LOGIT and full[1, 3] == PADDING_LOGIT
    assert full[0, 3] == 0 and full[1, :3].eq(0).all()
    # Sampled: [1 own positive | shared items 2, 3, 1]; only shared unreleased ones are hidden.
    sampled = torch.zeros(2, 4)
    sampled_labels = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    candidates = Candidates(torch.tensor([2, 3, 1]), None, None, sampled_labels)
    out = mask_unreleased(sampled, sampled_labels, unreleased, candidates)
    assert out[0].tolist() == [0.0, PADDING_LOGIT, 0.0, PADDING_LOGIT]
    assert out[1].tolist() == [0.0, 0.0, PADDING_LOGIT, 0.0]
