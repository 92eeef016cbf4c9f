"""Trains a few steps (run alone or under torchrun) and saves the weights rank 0 ends with."""

import sys

import torch

from tests.conftest import tiny_config
from trainer.config import ExperimentConfig
from trainer.data import load_dataset
from trainer.distributed import init_from_env
from trainer.splits import split_dataset
from trainer.training import Trainer


def main(strategy: str, out: str, num_negatives: int) -> None:
    context = init_from_env()
    config = tiny_config(epochs=2, batch_size=50, history_dropout=0.3, num_negatives=num_negatives)
    config.model.dropout = 0.0  # tower dropout draws from each process's own RNG stream
    base = ExperimentConfig()
    split = split_dataset(load_dataset(base.data), base.data, base.split)
    trainer = Trainer(config, split, show_progress=False, context=context)
    model = trainer.fit(strategy, seed=0).model
    if context.is_main:
        torch.save(model.state_dict(), out)


if __name__ == "__main__":
    # Optional third argument: train.num_negatives (below the catalogue size: sampled softmax
    # with sparse gradients, all-reduced by gloo).
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 4096)
