"""Item features computed from the interaction log, refreshed to what is known at each cutoff.

Recent popularity (interactions in the last share of time before the cutoff) is the strongest
simple signal for warm users on a time split: the recent-popularity baseline beats every model on
MovieLens-1M. A model that gets the same count as a per-item input (with learned weights) can use
it and personalise around it. Like the baseline, the count is taken up to the validation cutoff
for training and selection, and up to the test cutoff (= "now" for the served model, the same
events the serving feature store starts from) for the test and the exported graph; it never
looks at a test-window interaction.
"""

from __future__ import annotations

import numpy as np

from trainer.splits import CrossDomainSplit

VALID, TEST = "valid", "test"


def recent_popularity(split: CrossDomainSplit, share: float, phase: str = VALID) -> np.ndarray:
    """float32 [target vocab]: log1p(interactions in the last ``share`` of the time before the
    ``phase`` cutoff); 0 for padding. Same window rule as
    trainer.baselines.popularity.RecentPopularity. Unscaled on purpose: with weight 1 (the
    model's initial value) softmax(score) starts proportional to the recent counts, i.e. the
    model starts from recent popularity and learns what to add to it."""
    events = split.target_events
    n = len(split.target_vocab)
    known = events["phase"] <= (0 if phase == VALID else 1)
    items, times = events["items"][known], events["times"][known]
    if not len(items):
        return np.zeros(n, dtype=np.float32)
    if split.split_method == "time":
        cutoff = split.boundaries["valid_start" if phase == VALID else "test_start"]
    else:
        cutoff = float(times.max())
    start = cutoff - share * (cutoff - float(times.min()))
    counts = np.log1p(np.bincount(items[times >= start], minlength=n).astype(np.float64))
    counts[0] = 0.0
    return counts.astype(np.float32)


def refresh_item_features(model, split: CrossDomainSplit, share: float, phase: str) -> None:
    """Sets the model's recent-popularity input to what is known at ``phase``'s cutoff (no-op for
    models without one, or when ``model.recent_popularity_window`` is 0)."""
    if share > 0 and hasattr(model, "set_recent_popularity"):
        model.set_recent_popularity(recent_popularity(split, share, phase))
