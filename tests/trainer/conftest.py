import pytest

from trainer.config import ExperimentConfig
from trainer.data import load_dataset
from trainer.splits import split_dataset


@pytest.fixture(scope="session")
def ml100k_config() -> ExperimentConfig:
    return ExperimentConfig()


@pytest.fixture(scope="session")
def ml100k_raw(ml100k_config):
    return load_dataset(ml100k_config.data)


@pytest.fixture(scope="session")
def ml100k_split(ml100k_raw, ml100k_config):
    return split_dataset(ml100k_raw, ml100k_config.data, ml100k_config.split)
