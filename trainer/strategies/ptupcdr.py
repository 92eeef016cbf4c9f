"""PTUPCDR (Zhu et al. 2022): a meta network turns the source history into a personal bridge,
trained on the target task itself.

The source pre-training and the target-only model are the seed's shared ones (trained once;
see ``bridge.py``).
"""

from __future__ import annotations

from trainer.strategies.bridge import BridgeStrategy
from trainer.strategies.registry import register_strategy


@register_strategy("ptupcdr")
class Ptupcdr(BridgeStrategy):
    summary = "personalised meta-network bridge trained on the target task"
