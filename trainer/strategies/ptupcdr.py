"""PTUPCDR (Zhu et al. 2022): a meta network turns the source history into a personal bridge,
trained on the target task itself.

The source pre-training and the target-only model are the seed's shared ones (trained once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy, register_strategy

if TYPE_CHECKING:
    import torch


@register_strategy("ptupcdr")
class Ptupcdr(Strategy):
    summary = "personalised meta-network bridge trained on the target task"

    def fit(self, trainer, seed: int, generator: torch.Generator):
        from trainer.models import BridgedModel

        source_model, generator = trainer.pretrained_source(seed)
        target_model = trainer.target_only(seed).model
        hidden = trainer.config.model.hidden_dim
        model = BridgedModel(source_model, target_model, self.name, hidden).to(trainer.device)
        return trainer.train_bridge(self.name, seed, model, generator)
