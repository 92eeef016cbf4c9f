"""Numerical parity between the PyTorch model and its ONNX graph on real inputs.

Inputs are real users from the run's feature snapshot (warm, cold-start with the target history
hidden, and a user with no history at all), scored against the whole catalogue and random
candidate subsets at several batch sizes, so every dynamic axis is exercised.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from trainer.batching import pad_histories
from trainer.models.base import INPUT_NAMES, CrossDomainModel


@dataclass
class ParityReport:
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    cases: int
    rows: int
    top10_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


class ParityError(RuntimeError):
    pass


def load_histories(
    features: Path, vocab_source: list[str], vocab_target: list[str], limit: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(source, target) index histories of up to ``limit`` users from a features.tsv snapshot."""
    index = {
        "source": {i: n for n, i in enumerate(vocab_source)},
        "target": {i: n for n, i in enumerate(vocab_target)},
    }
    rows: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(
        lambda: {"source": [], "target": []}
    )
    with open(features, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            position = index[row["domain"]].get(row["item_id"])
            if position:
                rows[row["user_id"]][row["domain"]].append((float(row["timestamp"]), position))
    users = sorted(rows)[:limit]
    out = []
    for user in users:
        histories = [
            np.array([p for _, p in sorted(rows[user][d])], dtype=np.int64)
            for d in ("source", "target")
        ]
        out.append((histories[0], histories[1]))
    return out


def build_cases(
    histories, num_target_items: int, max_source: int, max_target: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    empty = np.zeros(0, dtype=np.int64)
    users = list(histories)
    users += [
        (src, empty) for src, _ in histories[: max(1, len(histories) // 4)]
    ]  # cold-start path
    users.append((empty, empty))  # no history at all
    cases = []
    everything = np.arange(1, num_target_items, dtype=np.int64)
    for batch_size in (1, 7, 32):
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            src_items, src_mask = pad_histories([s for s, _ in chunk], max_source)
            tgt_items, tgt_mask = pad_histories([t for _, t in chunk], max_target)
            if len(cases) % 2 == 0:
                candidates = np.tile(everything, (len(chunk), 1))
            else:
                candidates = rng.integers(
                    1, num_target_items, size=(len(chunk), 100), dtype=np.int64
                )
            cases.append(
                dict(
                    zip(
                        INPUT_NAMES,
                        (src_items, src_mask, tgt_items, tgt_mask, candidates),
                        strict=True,
                    )
                )
            )
            if len(cases) >= 24:
                return cases
    return cases


@dataclass
class ScoreComparison:
    """How far one scorer's outputs are from a reference's, over many [B, C] score batches."""

    max_abs_diff: float = 0.0
    mean_abs_diffs: list[float] = field(default_factory=list)
    top10_overlaps: list[float] = field(default_factory=list)
    rows: int = 0

    def add(self, expected: np.ndarray, actual: np.ndarray) -> None:
        expected, actual = expected.astype(np.float64), actual.astype(np.float64)
        diff = np.abs(expected - actual)
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        self.mean_abs_diffs.append(float(diff.mean()))
        self.rows += expected.shape[0]
        k = min(10, expected.shape[1])
        for e, a in zip(expected, actual, strict=True):
            top_e = set(np.argsort(-e, kind="stable")[:k].tolist())
            top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
            self.top10_overlaps.append(len(top_e & top_a) / k)

    @property
    def mean_abs_diff(self) -> float:
        return float(np.mean(self.mean_abs_diffs))

    @property
    def top10_agreement(self) -> float:
        return float(np.mean(self.top10_overlaps))


def check_parity(
    model: CrossDomainModel,
    onnx_path: Path,
    cases: list[dict[str, np.ndarray]],
    tolerance: float = 1e-4,
) -> ParityReport:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    comparison = ScoreComparison()
    with torch.no_grad():
        for case in cases:
            expected = model(*(torch.from_numpy(case[name]) for name in INPUT_NAMES)).numpy()
            comparison.add(expected, session.run(["scores"], case)[0])
    return ParityReport(
        comparison.max_abs_diff,
        comparison.mean_abs_diff,
        tolerance,
        len(cases),
        comparison.rows,
        comparison.top10_agreement,
    )
