"""Training memory is O(interactions + parameters): no users x items tensor is ever built.

A synthetic log with 20k users and 20k items but few interactions per user: a dense label matrix
(what training built before the interaction index) would have ~1.2e8 elements per domain. Every
torch op's output and every numpy allocation made while the trainer is built and trains one
epoch is checked against a quarter of users x items.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.fixtures.scripts import load_script
from trainer.config import ExperimentConfig
from trainer.training import Trainer

ROOT = Path(__file__).resolve().parents[3]
scale = load_script(ROOT / "bench/scale_benchmark.py", "scale_benchmark")


class DenseTensorFound(AssertionError):
    pass


class NoHugeTensors(TorchDispatchMode):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
                if tensor.numel() >= self.limit:
                    raise DenseTensorFound(f"{func} built a {tuple(tensor.shape)} tensor")
        return out


def _guard_numpy(monkeypatch, limit: int) -> None:
    for name in ("zeros", "empty", "ones", "full", "tile"):
        original = getattr(np, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            if out.size >= limit:
                raise DenseTensorFound(f"np.{_name} built a {out.shape} array")
            return out

        monkeypatch.setattr(np, name, guarded)


@pytest.fixture(scope="module")
def sparse_log():
    size = scale.Size("memory-test", users=20_000, items=20_000, interactions=150_000)
    return scale.make_split(size, valid_users=300)


def test_training_never_builds_a_users_by_items_tensor(sparse_log, monkeypatch):
    split, _ = sparse_log
    users = min(len(split.train_target), len(split.train_source))
    items = min(len(split.target_vocab), len(split.source_vocab))
    limit = users * items // 4
    config = ExperimentConfig(name="memory")
    config.train.epochs = 1
    config.train.pretrain_epochs = 1
    config.train.batch_size = 2048
    config.train.num_negatives = 256
    config.train.num_threads = 2
    config.model.embedding_dim = 16
    config.model.hidden_dim = 16
    guard = NoHugeTensors(limit)
    _guard_numpy(monkeypatch, limit)
    with guard:
        trainer = Trainer(config, split, show_progress=False)
        result = trainer.fit("joint", seed=0)
    assert trainer.sparse_gradients and not trainer.target_sampler.full
    assert math.isfinite(result.curve[0]["loss"])
    assert 0 < guard.largest < limit  # the guard saw the training tensors, none of them dense
