"""Turning per-user index histories into padded tensors, the one format models consume.

One rule for training, evaluation and export parity: most recent items last, truncated to the
configured maximum, empty histories as one padding slot with mask 0. The serving encoder applies
the same rule (``services/encoder/encoding.py``, no torch there);
``tests/integration/test_trained_model_serving.py`` checks that served and offline rankings agree.
"""

from __future__ import annotations

import numpy as np


def pad_histories(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[B] ragged index arrays -> (items int64 [B, L], mask float32 [B, L]); keeps the last max_len."""
    clipped = [h[-max_len:] for h in histories]
    width = max(1, max((len(h) for h in clipped), default=1))
    items = np.zeros((len(clipped), width), dtype=np.int64)
    mask = np.zeros((len(clipped), width), dtype=np.float32)
    for row, history in enumerate(clipped):
        items[row, : len(history)] = history
        mask[row, : len(history)] = 1.0
    return items, mask
