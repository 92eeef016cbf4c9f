"""Stacking the model inputs of several encoded requests into one batch (pure numpy).

Why in the encoder: the encoder is the one service that knows what its inputs mean, so it is
the one that can pad them without changing a score. The ranker's coalescing path
(``EncodeBatch``) sends the stacked inputs to the scorer as one Predict and never names an input.

Padding rules (the same as the scorer's own dynamic batching, ``ragged.py``):

* history inputs (``src_items``/``tgt_items``, ``src_mask``/``tgt_mask``): zeros, i.e. index 0
  (padding) with mask 0.0 - masked out by the model;
* ``candidates``: the row's first candidate repeated (index 0 is not a valid candidate); every
  candidate is scored on its own, so the extra scores are simply not read: the scores of a row
  are its first ``len(candidate_indices)`` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.encoder.encoding import Encoded

REPEAT_FIRST = frozenset({"candidates"})
"""Inputs padded by repeating the row's first element instead of zeros."""


def _pad_last(array: np.ndarray, width: int, repeat_first: bool) -> np.ndarray:
    missing = width - array.shape[-1]
    if missing <= 0:
        return array
    if repeat_first:
        fill = np.repeat(array[..., :1], missing, axis=-1)
    else:
        fill = np.zeros((*array.shape[:-1], missing), dtype=array.dtype)
    return np.concatenate([array, fill], axis=-1)


def stack_inputs(encoded: Sequence[Encoded]) -> dict[str, np.ndarray]:
    """The inputs of ``encoded`` (each ``[1, L]``) as one ``[B, max L]`` batch per input, in the
    order of the first request's inputs. Every request must hold at least one candidate."""
    names = list(encoded[0].inputs)
    stacked = {}
    for name in names:
        arrays = [e.inputs[name] for e in encoded]
        width = max(a.shape[-1] for a in arrays)
        repeat = name in REPEAT_FIRST
        stacked[name] = np.concatenate([_pad_last(a, width, repeat) for a in arrays], axis=0)
    return stacked
