"""Strategies by name: each is a class with its own objective, registered with a decorator.

Like RecBole's model registry, the name a user types (``--strategy``, ``--compare``, the config's
``train.strategy``) resolves here, so every entry point lists and validates the same names before
any training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # the registry itself stays torch-free: the CLI lists names without torch
    import torch

    from trainer.training import Trainer, TrainResult


class Strategy:
    """A way to train a target-domain recommender, possibly transferring from the source domain."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Whether the model sees the user's source history (at training and evaluation time).
    uses_source: ClassVar[bool] = True

    def fit(self, trainer: Trainer, seed: int, generator: torch.Generator) -> TrainResult:
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy '{name}' is registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def strategy_names() -> list[str]:
    return list(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]()
