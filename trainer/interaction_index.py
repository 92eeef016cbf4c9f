"""The training data as an index of interactions: memory O(interactions), never users x items.

Each domain's training users are rows; their histories are stored CSR-style (one flat item array
plus per-row offsets). A batch is materialised only for the rows it draws: padded histories
[B, width] and the positive (row, item) pairs, from which the objective builds its labels over
the batch's candidate items. Nothing here grows with users x items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class HistoryIndex:
    """Ragged per-row item histories (oldest first): row r is items[offsets[r]:offsets[r + 1]]."""

    offsets: np.ndarray  # int64 [rows + 1]
    items: np.ndarray  # int64 [interactions]
    # float64 [interactions]: when each interaction happened (None = not known).
    times: np.ndarray | None = None

    @classmethod
    def from_histories(
        cls, histories: Sequence[np.ndarray], times: Sequence[np.ndarray] | None = None
    ) -> HistoryIndex:
        """``times``: per history, the timestamps of its items (same lengths), or None."""
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def flat(arrays: Sequence[np.ndarray], dtype: type) -> np.ndarray:
            if not len(arrays):
                return np.zeros(0, dtype=dtype)
            return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays])

        items = flat(histories, np.int64)
        flat_times = None
        if times is not None:
            flat_times = flat(times, np.float64)
            if flat_times.shape != items.shape:
                raise ValueError("history times must match the histories item for item")
        return cls(offsets, items.astype(np.int64, copy=False), flat_times)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def width(self, max_len: int) -> int:
        """Padded width shared by every batch: the longest clipped history (at least 1), which
        keeps batch shapes (and so the random streams of input corruption) independent of the
        rows drawn, exactly as when every user was padded up front."""
        longest = int(self.lengths.max()) if len(self) else 0
        return max(1, min(max_len, longest))

    def padded(self, rows: np.ndarray, max_len: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows -> (items int64 [B, width], mask float32 [B, width]): the most recent max_len items,
        left-aligned, the same rule as :func:`trainer.batching.pad_histories`."""
        ends = self.offsets[rows + 1]
        lengths = np.minimum(ends - self.offsets[rows], min(max_len, width))
        starts = ends - lengths
        slots = np.arange(width)
        mask = slots[None, :] < lengths[:, None]
        positions = np.where(mask, starts[:, None] + slots[None, :], 0)
        items = np.where(mask, self.items[positions] if len(self.items) else 0, 0)
        return items.astype(np.int64, copy=False), mask.astype(np.float32)

    def padded_times(self, rows: np.ndarray, max_len: int, width: int) -> np.ndarray:
        """float64 [B, width]: the times of :meth:`padded`'s items, slot for slot (0 on padding)."""
        if self.times is None:
            raise ValueError("this history index was built without times")
        ends = self.offsets[rows + 1]
        lengths = np.minimum(ends - self.offsets[rows], min(max_len, width))
        slots = np.arange(width)
        mask = slots[None, :] < lengths[:, None]
        positions = np.where(mask, (ends - lengths)[:, None] + slots[None, :], 0)
        return np.where(mask, self.times[positions] if len(self.times) else 0.0, 0.0)

    def first_times(self, rows: np.ndarray) -> np.ndarray:
        """float64 [B]: each row's earliest interaction time (0 for an empty row)."""
        if self.times is None:
            raise ValueError("this history index was built without times")
        starts = self.offsets[rows]
        has = self.offsets[rows + 1] > starts
        return np.where(has, self.times[np.where(has, starts, 0)] if len(self.times) else 0.0, 0.0)

    def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (batch position, item) pairs of the rows' full histories, duplicates removed."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        batch_rows = np.repeat(np.arange(len(rows)), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = self.items[np.repeat(starts, lengths) + within]
        keys = np.unique(batch_rows * (int(items.max(initial=0)) + 1) + items)
        width = int(items.max(initial=0)) + 1
        return keys // width, keys % width

    def item_counts(self, num_items: int) -> np.ndarray:
        """Interactions per item index (the popularity the negative sampler draws from)."""
        return np.bincount(self.items, minlength=num_items).astype(np.int64)


@dataclass
class RowBatch:
    """One batch of rows: padded histories on the device, positives as (position, item) pairs."""

    src_items: torch.Tensor
    src_mask: torch.Tensor
    tgt_items: torch.Tensor
    tgt_mask: torch.Tensor
    label_rows: np.ndarray
    label_items: np.ndarray
    # With target times (``DomainIndex(target_times=...)``): float64 [B, width] times of
    # ``tgt_items`` slot for slot, and [B] each row's earliest target interaction (CPU arrays).
    tgt_times: np.ndarray | None = None
    tgt_first_time: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.src_items)


class DomainIndex:
    """The training users of one domain (the rows), both their histories and which one is labels."""

    def __init__(
        self,
        users: list[str],
        source: dict[str, np.ndarray],
        target: dict[str, np.ndarray],
        label_domain: str,
        max_source: int,
        max_target: int,
        device: torch.device,
        target_times: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``target_times``: per user, the timestamps of ``target`` item for item; batches then
        carry them (what was popular at the moment of a label, trainer/item_features.py)."""
        empty = np.zeros(0, dtype=np.int64)
        self.source = HistoryIndex.from_histories([source.get(u, empty) for u in users])
        times = None
        if target_times is not None:
            times = [target_times.get(u, np.zeros(0)) for u in users]
        self.target = HistoryIndex.from_histories([target.get(u, empty) for u in users], times)
        self.label_domain = label_domain
        self.max_source, self.max_target = max_source, max_target
        self.source_width = self.source.width(max_source)
        self.target_width = self.target.width(max_target)
        self.device = device
        self.members = np.arange(len(users), dtype=np.int64)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def labels(self) -> HistoryIndex:
        return self.source if self.label_domain == "source" else self.target

    def subset(self, keep: np.ndarray) -> DomainIndex:
        """The same index restricted to ``members[keep]`` (a boolean mask or positions)."""
        clone = object.__new__(DomainIndex)
        clone.__dict__.update(self.__dict__)
        clone.members = self.members[keep]
        return clone

    def with_source_history(self) -> DomainIndex:
        return self.subset(self.source.lengths[self.members] > 0)

    def batch(self, rows: np.ndarray) -> RowBatch:
        src_items, src_mask = self.source.padded(rows, self.max_source, self.source_width)
        tgt_items, tgt_mask = self.target.padded(rows, self.max_target, self.target_width)
        label_rows, label_items = self.labels.pairs(rows)
        src_items_t, src_mask_t, tgt_items_t, tgt_mask_t = (
            torch.from_numpy(a).to(self.device) for a in (src_items, src_mask, tgt_items, tgt_mask)
        )
        times = first = None
        if self.target.times is not None:
            times = self.target.padded_times(rows, self.max_target, self.target_width)
            first = self.target.first_times(rows)
        return RowBatch(
            src_items_t, src_mask_t, tgt_items_t, tgt_mask_t, label_rows, label_items, times, first
        )

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[RowBatch]:
        order = torch.randperm(self.size, generator=generator).numpy()
        for start in range(0, self.size, batch_size):
            yield self.batch(self.members[order[start : start + batch_size]])

    def cycle(self, batch_size: int, generator: torch.Generator) -> Iterator[RowBatch]:
        while True:
            yield from self.batches(batch_size, generator)

    def num_batches(self, batch_size: int) -> int:
        return -(-self.size // batch_size)
