"""The sampled softmax's candidates: a shape set by the batch (not the catalogue), a row's own
positives never doubling as its negatives, and a logQ correction that makes the sampled
denominator an unbiased estimate of the exact one."""

from __future__ import annotations

import numpy as np
import torch

from trainer.sampled_softmax import PADDING_LOGIT, CandidateSampler, candidate_logits

NUM_NEGATIVES = 64


def zipf_counts(num_items: int) -> np.ndarray:
    counts = (10_000 / np.arange(1, num_items + 1)).astype(np.int64) + 1
    return np.r_[0, counts]  # index 0 = padding


def batch_pairs(rng: np.random.Generator, rows: int, num_items: int):
    """(row, item) positives sorted by row, each pair once, as RowBatch holds them; the popular
    head is over-represented so that draws of a row's own positives happen."""
    pairs = set()
    for row in range(rows):
        length = int(rng.integers(1, 12))
        head = rng.integers(1, 6, size=length // 2)
        tail = rng.integers(1, num_items + 1, size=length - length // 2)
        pairs.update((row, int(item)) for item in np.r_[head, tail])
    label_rows, label_items = np.array(sorted(pairs)).T
    return label_rows, label_items


def sample(num_items: int, label_rows, label_items, rows: int, seed: int = 0):
    sampler = CandidateSampler(zipf_counts(num_items), NUM_NEGATIVES, 0.75, torch.device("cpu"))
    assert not sampler.full
    return sampler(label_rows, label_items, rows, torch.Generator().manual_seed(seed))


def test_candidate_columns_do_not_depend_on_the_catalogue_size():
    rng = np.random.default_rng(0)
    label_rows, label_items = batch_pairs(rng, rows=32, num_items=100)
    widest_row = int(np.bincount(label_rows).max())
    shapes = set()
    for num_items in (100, 1_000, 100_000):
        candidates = sample(num_items, label_rows, label_items, rows=32)
        expected = (32, widest_row + NUM_NEGATIVES)
        assert candidates.labels.shape == candidates.offsets.shape == expected
        assert candidates.positives.shape == (32, widest_row)
        assert candidates.items.shape == (NUM_NEGATIVES,)
        shapes.add(candidates.labels.shape)
    assert len(shapes) == 1


def test_a_rows_positive_is_a_label_once_and_never_one_of_its_negatives():
    rng = np.random.default_rng(1)
    label_rows, label_items = batch_pairs(rng, rows=64, num_items=200)
    masked_draws = 0
    for seed in range(5):
        c = sample(200, label_rows, label_items, rows=64, seed=seed)
        width = c.positives.shape[1]
        for row in range(64):
            own = set(label_items[label_rows == row].tolist())
            labelled = c.positives[row][c.labels[row, :width] == 1].tolist()
            assert sorted(labelled) == sorted(own)  # every positive labelled exactly once
            assert c.labels[row, width:].sum() == 0  # negatives are never labels
            real = c.offsets[row, :width] == 0
            assert torch.equal(real, c.labels[row, :width] == 1)  # padded slots are masked
            live = c.offsets[row, width:] < -PADDING_LOGIT / 2
            live_negatives = set(c.items[live].tolist())
            assert not own & live_negatives
            drawn_own = [i for i in c.items.tolist() if i in own]
            masked_draws += len(drawn_own)
            assert int((~live).sum()) == len(drawn_own)  # only those draws are masked
    assert masked_draws > 0  # the case under test happened


def test_logq_makes_the_sampled_denominator_unbiased():
    """E[sum of exp(logit) over a row's live negatives] = sum of exp(score) over the items that
    are not the row's positives (what the exact softmax's denominator holds besides them)."""
    num_items = 150
    scores = torch.linspace(-1.0, 2.0, num_items + 1)
    label_rows, label_items = np.array([0, 0, 1]), np.array([1, 7, 3])

    def scores_of(user, items):
        return scores[items] if items.dim() == 2 else scores[items].expand(len(user), -1)

    user = torch.zeros(2, 1)
    totals = torch.zeros(2)
    draws = 3_000
    for seed in range(draws):
        c = sample(num_items, label_rows, label_items, rows=2, seed=seed)
        logits = candidate_logits(None, scores_of, user, c)
        totals += torch.exp(logits[:, c.positives.shape[1] :].double()).sum(1).float()
    for row, own in ((0, [1, 7]), (1, [3])):
        rest = [i for i in range(1, num_items + 1) if i not in own]
        exact = float(torch.exp(scores[rest]).sum())
        assert abs(float(totals[row]) / draws - exact) / exact < 0.03
