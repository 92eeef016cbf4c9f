"""EMCDR (Man et al. 2017): an MLP maps source user vectors onto the target model's, fitted on
overlapping users by embedding distance.

The source pre-training and the target-only model are the seed's shared ones (trained once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy, register_strategy

if TYPE_CHECKING:
    import torch


@register_strategy("emcdr")
class Emcdr(Strategy):
    summary = "MLP mapping source -> target user vectors (embedding distance)"

    def fit(self, trainer, seed: int, generator: torch.Generator):
        from trainer.models import BridgedModel

        source_model, generator = trainer.pretrained_source(seed)
        target_model = trainer.target_only(seed).model
        hidden = trainer.config.model.hidden_dim
        model = BridgedModel(source_model, target_model, self.name, hidden).to(trainer.device)
        return trainer.train_bridge(self.name, seed, model, generator)
