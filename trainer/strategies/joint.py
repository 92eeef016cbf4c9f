"""Joint (CMF-style): one shared user tower, L = L_source + lambda * L_target on every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy, register_strategy

if TYPE_CHECKING:
    import torch


@register_strategy("joint")
class Joint(Strategy):
    summary = "shared user tower, L = L_source + lambda * L_target every step"

    def fit(self, trainer, seed: int, generator: torch.Generator):
        model = trainer.new_model()
        optimizer = trainer.optimizer(model)
        return trainer.train_tower(
            self.name, seed, model, optimizer, generator, use_source=True, with_source_loss=True
        )
