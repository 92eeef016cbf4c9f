"""The "future" training objective: predict the next items from the history before them.

The time split asks a model for what a user does *after* a cutoff, given everything before it.
The denoising objective instead asks for every item of the history, old and new alike, with the
same history (items dropped) as input. Here each training history is cut at a random point: the
items before the cut are the input, the next ``window`` items after it are the labels. No label is
ever part of the input (the cut is the causal mask, applied to the data rather than inside the
model), and the item bias learns what people pick *next*, which tilts it towards what is
currently popular, the signal recent popularity lives on.
"""

from __future__ import annotations

import numpy as np
import torch


def future_cut(
    items: torch.Tensor,
    mask: torch.Tensor,
    window: int,
    generator: torch.Generator,
    recent: bool = False,
    cuts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Padded histories ``items``/``mask`` [B, L] (real items in order, oldest first) ->
    (input mask [B, L], label batch positions, label items).

    A row with n >= 2 items is cut after a uniform 1..n-1 items; a row with one item keeps no
    input and has that item as its label. Labels are the ``window`` items after the cut
    (0 = all), duplicates removed. ``recent``: the cut falls among the last ``window`` items
    (still leaving at least one input item), so the labels are the user's latest items.
    ``cuts`` [B]: the number of input items per row, chosen by the caller (:func:`session_cuts`)."""
    mask_cpu = mask.detach().cpu()
    lengths = mask_cpu.sum(dim=1)
    draw = torch.rand(len(lengths), generator=generator)
    low = torch.ones_like(lengths)
    if recent and window > 0:
        low = torch.clamp(lengths - window, min=1.0)
    span = torch.clamp(lengths - low, min=0.0)  # choices: low .. lengths - 1
    cut = torch.where(lengths >= 2, low + (draw * span).floor(), torch.zeros_like(lengths))
    if cuts is not None:
        cut = cuts.to(lengths.dtype)
    rank = torch.cumsum(mask_cpu, dim=1) - 1  # position among the row's real items
    before = (rank < cut[:, None]) & (mask_cpu > 0)
    after = (rank >= cut[:, None]) & (mask_cpu > 0)
    if window > 0:
        after &= rank < (cut[:, None] + window)
    rows, slots = np.nonzero(after.numpy())
    label_items = items.detach().cpu().numpy()[rows, slots]
    width = int(label_items.max(initial=0)) + 1
    keys = np.unique(rows.astype(np.int64) * width + label_items)
    return before.to(mask.dtype).to(mask.device), keys // width, keys % width


def merge_labels(
    keep_rows: np.ndarray,
    first: tuple[np.ndarray, np.ndarray],
    second: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs from ``first`` for batch positions in ``keep_rows`` (bool [B]) and from
    ``second`` for the others, ordered by position."""
    take_first = keep_rows[first[0]]
    rows = np.concatenate([first[0][take_first], second[0][~keep_rows[second[0]]]])
    items = np.concatenate([first[1][take_first], second[1][~keep_rows[second[0]]]])
    order = np.argsort(rows, kind="stable")
    return rows[order], items[order]


def session_cuts(
    times: np.ndarray, mask: torch.Tensor, min_gap: float, generator: torch.Generator
) -> torch.Tensor:
    """[B] cut positions (input items per row) at the start of a session: a uniform choice
    among the items that come at least ``min_gap`` after the one before them, so the example is
    "a user returns after a break: what do they pick?", the question a time split asks of warm
    users. Rows without such a gap get a uniform cut (1..n-1); one-item rows 0, as
    :func:`future_cut`. ``times`` [B, L] are the items' times, slot for slot (left-aligned)."""
    real = mask.detach().cpu().numpy() > 0
    lengths = real.sum(axis=1)
    draw = torch.rand(len(lengths), generator=generator).numpy()
    gaps = np.zeros(real.shape, dtype=bool)  # slot i starts a session (i >= 1)
    gaps[:, 1:] = (np.diff(times, axis=1) >= min_gap) & real[:, 1:]
    counts = gaps.sum(axis=1)
    # The k-th session start of each row, k uniform; rows without one: uniform 1..n-1.
    k = np.minimum((draw * counts).astype(np.int64), np.maximum(counts - 1, 0))
    rank = np.cumsum(gaps, axis=1) - 1
    pick = np.argmax(gaps & (rank == k[:, None]), axis=1)
    uniform = 1 + np.floor(draw * np.maximum(lengths - 1, 0)).astype(np.int64)
    cut = np.where(counts > 0, pick, np.where(lengths >= 2, uniform, 0))
    return torch.from_numpy(cut.astype(np.float32))
