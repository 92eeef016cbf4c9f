"""Stacked inputs score exactly like the requests alone (the rule EncodeBatch relies on)."""

from __future__ import annotations

import numpy as np

from services.encoder.encoding import Encoded, history_tensors
from services.encoder.stacking import stack_inputs
from tests.fixtures.model_repo import make_weights, reference_scores


def encoded(source: list[int], target: list[int], candidates: list[int]) -> Encoded:
    src_items, src_mask = history_tensors(source, 50)
    tgt_items, tgt_mask = history_tensors(target, 50)
    cands = np.asarray(candidates, dtype=np.int64)
    return Encoded(
        inputs={
            "src_items": src_items,
            "src_mask": src_mask,
            "tgt_items": tgt_items,
            "tgt_mask": tgt_mask,
            "candidates": cands.reshape(1, -1),
        },
        candidate_indices=cands,
        seen_indices=np.unique(np.asarray(target, dtype=np.int64)),
        user_status=0,
    )


def test_padding_is_neutral_and_candidates_repeat_a_real_item() -> None:
    rows = [
        encoded([1, 2, 3], [4, 5], [7, 3, 9, 11, 2]),
        encoded([], [6], [8]),
        encoded([5], [], [12, 1, 4]),
    ]
    stacked = stack_inputs(rows)
    assert stacked["src_items"].shape == (3, 3) and stacked["tgt_items"].shape == (3, 2)
    assert stacked["candidates"].tolist()[1] == [8, 8, 8, 8, 8]  # never index 0
    assert stacked["src_mask"][1].tolist() == [0.0, 0.0, 0.0]
    assert stacked["tgt_items"][2].tolist() == [0, 0]

    weights = make_weights(0, num_source=13, num_target=21)
    together = reference_scores(weights, stacked)
    for r, row in enumerate(rows):
        alone = reference_scores(weights, row.inputs)[0]
        count = row.candidate_indices.size
        np.testing.assert_allclose(together[r, :count], alone, rtol=0, atol=1e-6)
