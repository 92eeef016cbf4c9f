"""One interface for the simple baselines every results table carries.

A baseline learns from the split's training data (``fit``) and scores a chunk of an evaluation
set's users against every target item (``score``), exactly like a trained model does inside
``trainer.evaluation.evaluate_ranking``; so every row of the table is ranked, masked and
measured by the same code.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from trainer.config import BaselineConfig
from trainer.splits import CrossDomainSplit, EvalSet

VALID, TEST = "valid", "test"


class Baseline(ABC):
    """Subclasses set ``name``; ``deterministic`` ones run once (their std prints as "-")."""

    name: ClassVar[str]
    deterministic: ClassVar[bool] = True
    # True when what the baseline may count depends on the cutoff (a window before it): it is
    # then fitted again for test with everything known at the test cutoff.
    refit_for_test: ClassVar[bool] = False

    def __init__(self, config: BaselineConfig | None = None) -> None:
        self.config = config or BaselineConfig()

    @classmethod
    def candidates(cls, config: BaselineConfig) -> list[dict]:
        """Settings (constructor keywords) tried on validation; the best by pooled validation
        NDCG@10 is the one tested."""
        return [{}]

    @abstractmethod
    def fit(self, split: CrossDomainSplit, phase: str = VALID, seed: int = 0) -> None:
        """Learns from the split's training data (``phase`` = which cutoff the scores are for)."""

    @abstractmethod
    def score(self, evalset: EvalSet, start: int, end: int) -> torch.Tensor:
        """Scores users [start, end) of ``evalset`` against all target indices: [end-start, items]."""

    def describe(self) -> str:
        """The chosen settings, for the report."""
        return ""


def multi_hot(histories: list, size: int) -> torch.Tensor:
    """Dense [len(histories), size] 0/1 rows: one chunk of users, never all of them."""
    out = torch.zeros(len(histories), size)
    for row, history in enumerate(histories):
        if len(history):
            out[row, torch.as_tensor(history)] = 1.0
    return out


def sparse_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Sparse x sparse product without torch's "beta" warning on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(left, right).coalesce()


def coo(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A coalesced sparse COO tensor (indices built here, so invariant checks are skipped)."""
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False).coalesce()


def incidence(histories: list, size: int) -> torch.Tensor:
    """Sparse binary users x items matrix of training histories (COO, coalesced)."""
    rows = [torch.full((len(h),), r, dtype=torch.int64) for r, h in enumerate(histories)]
    cols = [torch.as_tensor(h, dtype=torch.int64) for h in histories]
    indices = torch.stack(
        [
            torch.cat(rows or [torch.zeros(0, dtype=torch.int64)]),
            torch.cat(cols or [torch.zeros(0, dtype=torch.int64)]),
        ]
    )
    matrix = coo(indices, torch.ones(indices.shape[1]), (len(histories), size))
    return coo(matrix.indices(), torch.ones_like(matrix.values()), matrix.shape)  # once each
