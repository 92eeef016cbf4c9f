"""Item features computed from the interaction log, known at each moment without looking ahead.

Recent popularity (interactions in a window before "now") is the strongest simple signal for warm
users on a time split: the recent-popularity baseline beats every model on MovieLens-1M. A model
that gets the count as a per-item input (with learned weights) can use it and personalise around
it, but only if it learns what the count is worth at the moment a choice is made: training labels
span the whole training timeline, so one vector taken at the validation cutoff is stale for most
of them and the model learns to ignore it.

So the window has one fixed duration ``W = share x (validation cutoff - first target event)`` and
is read at three kinds of "now":

- training: the moment of each example's labels (:class:`RecencyTable`, per-bucket cumulative
  counts of the training events, so a window is a difference of two rows);
- validation: the validation cutoff (training events only);
- test and the exported (served) graph: the test cutoff (training and validation events, the
  same events the serving feature store starts from); never a test-window interaction.

Every count is ``log1p`` (softmax is shift-invariant, so the log makes windows with more or less
overall activity comparable up to the +1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.splits import CrossDomainSplit

VALID, TEST = "valid", "test"
# A RecencyTable holds at most this many counts (buckets x items, float32): beyond it the
# buckets get coarser (fewer steps per window), so memory stays bounded on large catalogues.
MAX_TABLE_ENTRIES = 32_000_000


def _known_events(split: CrossDomainSplit, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Target interactions of non-cold users known at ``phase``'s cutoff: (items, times)."""
    events = split.target_events
    known = events["phase"] <= (0 if phase == VALID else 1)
    return events["items"][known], events["times"][known].astype(np.float64)


def cutoff_time(split: CrossDomainSplit, phase: str) -> float:
    """ "Now" for ``phase``: the split's boundary (time split) or, for per-user splits (no global
    cutoff), the newest interaction known then."""
    if split.split_method == "time":
        return float(split.boundaries["valid_start" if phase == VALID else "test_start"])
    _, times = _known_events(split, phase)
    return float(times.max()) if len(times) else 0.0


def window_duration(split: CrossDomainSplit, share: float) -> float:
    """The window length for ``share``: that share of the time between the first training
    event and the validation cutoff (the baseline's rule at the validation cutoff), used
    unchanged at every "now" so the model sees one feature throughout."""
    _, times = _known_events(split, VALID)
    if not len(times):
        return 0.0
    return share * (cutoff_time(split, VALID) - float(times.min()))


def window_counts(items: np.ndarray, times: np.ndarray, now: float, duration: float, n: int):
    """float32 [n]: log1p(interactions with now - duration <= time < now); 0 for padding."""
    inside = (times >= now - duration) & (times < now)
    counts = np.log1p(np.bincount(items[inside], minlength=n).astype(np.float64))
    counts[0] = 0.0
    return counts.astype(np.float32)


def recent_popularity(split: CrossDomainSplit, share: float, phase: str = VALID) -> np.ndarray:
    """float32 [target vocab]: log1p(interactions in the window of ``share`` before ``phase``'s
    cutoff), counting only what is known then; 0 for padding. Unscaled on purpose: with weight
    1 (the model's initial value) softmax(score) starts proportional to the recent counts, i.e.
    the model starts from recent popularity and learns what to add to it."""
    items, times = _known_events(split, phase)
    n = len(split.target_vocab)
    if not len(items):
        return np.zeros(n, dtype=np.float32)
    duration = window_duration(split, share)
    return window_counts(items, times, cutoff_time(split, phase), duration, n)


def first_seen_times(split: CrossDomainSplit) -> np.ndarray:
    """float64 [target vocab]: each item's first training interaction (inf = none before the
    validation cutoff; padding inf)."""
    items, times = _known_events(split, VALID)
    first = np.full(len(split.target_vocab), np.inf)
    np.minimum.at(first, items, times)
    first[0] = np.inf
    return first


@dataclass
class RecencyTable:
    """Recent popularity of every target item at any moment of the training timeline.

    Buckets of width ``duration / steps`` end exactly at the validation cutoff; ``cumulative[j]``
    holds, per item, the training interactions in the buckets that end at or before
    ``cutoff - j x width``, counted backwards (row j = everything before edge j). The vector at
    time t uses the newest edge at or before t and the ``steps`` buckets before it: only
    interactions strictly before t count (no look-ahead), at most one bucket width stale; at the
    cutoff itself it equals :func:`recent_popularity` for validation exactly.
    """

    cutoff: float
    width: float
    steps: int
    cumulative: np.ndarray  # float32 [edges, items]: interactions before edge j (cut at origin)

    @classmethod
    def build(cls, split: CrossDomainSplit, share: float, steps: int = 8) -> RecencyTable:
        items, times = _known_events(split, VALID)
        n = len(split.target_vocab)
        cutoff = cutoff_time(split, VALID)
        duration = window_duration(split, share)
        span = cutoff - float(times.min()) if len(times) else 0.0
        if duration <= 0 or span <= 0:
            return cls(cutoff, 1.0, 1, np.zeros((2, n), dtype=np.float32))
        # Coarser buckets (fewer steps per window) when the table would be too large.
        steps = max(1, min(steps, int(MAX_TABLE_ENTRIES * duration / (span * n))))
        width = duration / steps
        edges = int(np.ceil(span / width)) + steps + 1
        # Bucket b (b >= 0) holds interactions with cutoff - (b+1) width <= t < cutoff - b width.
        bucket = (np.ceil((cutoff - times) / width) - 1).astype(np.int64)
        keep = (bucket >= 0) & (bucket < edges)
        counts = np.zeros((edges + 1, n), dtype=np.float32)
        np.add.at(counts, (bucket[keep] + 1, items[keep]), 1.0)
        # cumulative[j] = interactions in buckets >= j (all before edge j = cutoff - j width).
        cumulative = np.cumsum(counts[::-1], axis=0)[::-1][1:].copy()
        return cls(cutoff, width, steps, np.ascontiguousarray(cumulative))

    def edge_of(self, times: np.ndarray) -> np.ndarray:
        """Index of the newest edge at or before each time (0 = the cutoff; later times too)."""
        j = np.ceil((self.cutoff - np.asarray(times, dtype=np.float64)) / self.width)
        return np.clip(j, 0, len(self.cumulative) - 1).astype(np.int64)

    def at(self, times: np.ndarray, minus: np.ndarray | None = None) -> np.ndarray:
        """float32 [len(times), items]: log1p(interactions in the window before each time), less
        ``minus`` [len(times), items] (counts to leave out, e.g. a row's own interactions)."""
        j = self.edge_of(times)
        last = len(self.cumulative) - 1
        counts = self.cumulative[j] - self.cumulative[np.minimum(j + self.steps, last)]
        if minus is not None:
            counts = counts - minus
        out = np.log1p(np.maximum(counts, 0.0))
        out[:, 0] = 0.0
        return out.astype(np.float32)

    def cold_rows(self, items: np.ndarray, mask: np.ndarray, times: np.ndarray) -> np.ndarray:
        """float32 [B, items]: the vector at the cutoff without each row's own interactions
        (``items``/``mask``/``times`` [B, L]): what a cold-start user is scored with at
        evaluation, where held-out users' interactions are not counted."""
        start = self.cutoff - self.steps * self.width
        inside = (mask > 0) & (times >= start) & (times < self.cutoff)
        rows, slots = np.nonzero(inside)
        own = np.zeros((len(items), self.cumulative.shape[1]), dtype=np.float32)
        np.add.at(own, (rows, items[rows, slots]), 1.0)
        return self.at(np.full(len(items), self.cutoff), own)


def refresh_item_features(model, split: CrossDomainSplit, share: float, phase: str) -> None:
    """Sets the model's recent-popularity input to what is known at ``phase``'s cutoff (no-op for
    models without one, or when ``model.recent_popularity_window`` is 0)."""
    if share > 0 and hasattr(model, "set_recent_popularity"):
        model.set_recent_popularity(recent_popularity(split, share, phase))
