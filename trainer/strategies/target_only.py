"""Target-only: the same tower trained on the target domain alone, never seeing source history."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy, register_strategy

if TYPE_CHECKING:
    import torch


@register_strategy("target_only")
class TargetOnly(Strategy):
    summary = "target domain alone, no source input (baseline)"
    uses_source = False

    def fit(self, trainer, seed: int, generator: torch.Generator):
        model = trainer.new_model()
        return trainer.train_tower(
            self.name, seed, model, trainer.optimizer(model), generator, use_source=False
        )
