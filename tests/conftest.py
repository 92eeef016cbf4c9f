"""Shared test configuration: the embedded dataset's split and tiny configs that train in seconds."""

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
