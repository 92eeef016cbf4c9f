"""What EMCDR and PTUPCDR share: a bridge from the seed's source model to its target-only model.

Both reuse the seed's shared source pre-training and target-only model (trained once per seed)
and differ only in the bridge ``BridgedModel`` builds for their name, so the fitting lives here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy

if TYPE_CHECKING:
    import torch


class BridgeStrategy(Strategy):
    """A strategy whose cold-start path maps source user vectors into the target model."""

    def fit(self, trainer, seed: int, generator: torch.Generator):
        from trainer.models import BridgedModel

        source_model, generator = trainer.pretrained_source(seed)
        target_model = trainer.target_only(seed).model
        hidden = trainer.config.model.hidden_dim
        model = BridgedModel(source_model, target_model, self.name, hidden).to(trainer.device)
        return trainer.train_bridge(self.name, seed, model, generator)
