"""Pre-train on the source domain, fine-tune on the target (frozen groups, smaller transferred LR)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.strategies.registry import Strategy, register_strategy

if TYPE_CHECKING:
    import torch


@register_strategy("pretrain_finetune")
class PretrainFinetune(Strategy):
    summary = "source pre-training (shared per seed), then target fine-tuning"

    def fit(self, trainer, seed: int, generator: torch.Generator):
        model, generator = trainer.pretrained_source(seed)
        optimizer = trainer.finetune_optimizer(model)
        return trainer.train_tower(self.name, seed, model, optimizer, generator, use_source=True)
