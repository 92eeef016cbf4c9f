"""Shared test configuration: tiny trainer configs and the embedded dataset's split; for the
serving tests a model repository on disk, the three services running and a real Redis."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.config import ExperimentConfig
from trainer.data import load_dataset
from trainer.splits import split_dataset


def tiny_config(**train_overrides) -> ExperimentConfig:
    config = ExperimentConfig(name="tiny")
    config.model.embedding_dim = 16
    config.model.hidden_dim = 32
    config.model.max_source_history = 50
    config.model.max_target_history = 50
    config.train.epochs = 4
    config.train.pretrain_epochs = 2
    config.train.bridge_epochs = 4
    config.train.eval_every = 2
    config.train.seeds = [0]
    config.train.num_threads = 2
    config.baselines.bpr_epochs = 4
    config.baselines.bpr_eval_every = 2
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture
def tiny() -> ExperimentConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def ml100k_config() -> ExperimentConfig:
    return ExperimentConfig()


@pytest.fixture(scope="session")
def ml100k_raw(ml100k_config):
    return load_dataset(ml100k_config.data)


@pytest.fixture(scope="session")
def ml100k_split(ml100k_raw, ml100k_config):
    return split_dataset(ml100k_raw, ml100k_config.data, ml100k_config.split)


# --- serving fixtures: a model repository on disk, the three services, a real Redis ---


# The shared builders live in tests/fixtures and import as ``tests.fixtures.*`` from the project
# root; make that work however pytest was started (``python -m pytest`` adds the root itself,
# ``pytest`` from another directory does not). Only the root is added: putting tests/ itself on
# sys.path would let tests/unit/trainer shadow the real ``trainer`` package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fixtures.model_repo import BuiltRepo, build_model_repo  # noqa: E402
from tests.fixtures.redis_server import RedisServer, start_redis  # noqa: E402
from tests.fixtures.servers import LoopThread, Stack, start_stack  # noqa: E402


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> BuiltRepo:
    """A repository with two versions of one model (the services use the newest, "2")."""
    return build_model_repo(tmp_path_factory.mktemp("repo"), versions=2)


@pytest.fixture
def fresh_repo(tmp_path: Path) -> BuiltRepo:
    """A private repository a test may modify (corrupt, add versions)."""
    return build_model_repo(tmp_path / "repo", versions=1)


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    """One event loop thread for every in-process server of the session."""
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="session")
def stack(loop: LoopThread, repo: BuiltRepo) -> Iterator[Stack]:
    """Encoder, scorer and ranker on free loopback ports, SERVING."""
    running = start_stack(loop, repo.root, repo.features_path)
    yield running
    running.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private real ``redis-server`` (no persistence); skips when the binary is missing."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def durable_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private real ``redis-server`` with AOF, fsync on every write."""
    server = start_redis(tmp_path / "redis", aof=True)
    yield server
    server.stop()
