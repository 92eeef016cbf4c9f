"""Popularity and recent popularity: what everyone gets when nothing is personal."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from trainer.baselines.base import VALID, Baseline
from trainer.config import BaselineConfig
from trainer.splits import CrossDomainSplit, EvalSet


class Popularity(Baseline):
    """Target items by their number of training interactions."""

    name: ClassVar[str] = "popularity"

    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        self.scores = torch.from_numpy(split.target_popularity.astype(np.float64))

    def score(self, evalset: EvalSet, start: int, end: int) -> torch.Tensor:
        return self.scores.expand(end - start, -1)


class RecentPopularity(Baseline):
    """Target items by their interactions inside the last ``window`` share of the time before
    the cutoff. The share is chosen on validation (cutoff = validation start, training rows);
    for test the same share is measured back from the test cutoff, over every interaction known
    then (training and validation rows of non-cold users). Ties (items with equal recent counts)
    are broken by all-time popularity."""

    name: ClassVar[str] = "recent_popularity"
    refit_for_test: ClassVar[bool] = True

    def __init__(self, config: BaselineConfig | None = None, window: float = 0.1) -> None:
        super().__init__(config)
        if not 0 < window <= 1:
            raise ValueError(f"baselines.recent_windows: {window} is not a share in (0, 1]")
        self.window = window

    @classmethod
    def candidates(cls, config: BaselineConfig) -> list[dict]:
        return [{"window": w} for w in config.recent_windows]

    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        events = split.target_events
        known = events["phase"] <= (0 if phase == VALID else 1)
        items, times = events["items"][known], events["times"][known]
        n = len(split.target_vocab)
        if not len(items):
            self.scores = torch.zeros(n, dtype=torch.float64)
            return
        if split.split_method == "time":
            cutoff = split.boundaries["valid_start" if phase == VALID else "test_start"]
        else:  # per-user splits have no global cutoff: the newest known interaction is "now"
            cutoff = float(times.max())
        start = cutoff - self.window * (cutoff - float(times.min()))
        recent = np.bincount(items[times >= start], minlength=n).astype(np.float64)
        overall = np.bincount(items, minlength=n).astype(np.float64)
        self.scores = torch.from_numpy(recent + 0.5 * overall / (overall.max() + 1.0))
        self.phase = phase

    def score(self, evalset: EvalSet, start: int, end: int) -> torch.Tensor:
        return self.scores.expand(end - start, -1)

    def describe(self) -> str:
        return f"window = last {self.window:.0%} of the time before the cutoff"
