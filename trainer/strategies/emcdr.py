"""EMCDR (Man et al. 2017): an MLP maps source user vectors onto the target model's, fitted on
overlapping users by embedding distance.

The source pre-training and the target-only model are the seed's shared ones (trained once;
see ``bridge.py``).
"""

from __future__ import annotations

from trainer.strategies.bridge import BridgeStrategy
from trainer.strategies.registry import register_strategy


@register_strategy("emcdr")
class Emcdr(BridgeStrategy):
    summary = "MLP mapping source -> target user vectors (embedding distance)"
