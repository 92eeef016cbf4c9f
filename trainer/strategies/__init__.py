"""Training strategies, one module each, registered by name (see registry.py).

| strategy          | what it does |
|-------------------|--------------|
| target_only       | target domain alone, no source input (baseline) |
| pretrain_finetune | pre-train on source, fine-tune on target (optional frozen groups, smaller LR for transferred parts) |
| joint             | CMF-style shared user tower, L = L_source + lambda * L_target every step |
| emcdr             | source model + target-only model + MLP mapping fitted on overlapping users (embedding distance) |
| ptupcdr           | same, with a personalised meta-network bridge trained on the target task |

The source pre-training and the target-only model are trained once per seed and reused by every
strategy of that seed (``Trainer.pretrained_source``, ``Trainer.target_only``).
"""

from importlib import import_module

from trainer.strategies.registry import (
    STRATEGIES,
    Strategy,
    get_strategy,
    register_strategy,
    strategy_names,
)

# Importing a module registers its strategy; this order is the table's and the help's.
MODULES = ("target_only", "pretrain_finetune", "joint", "emcdr", "ptupcdr")
for _module in MODULES:
    import_module(f"trainer.strategies.{_module}")

# Table rows without a trained model (computed from the split); trainer/experiment.py runs them.
MODEL_FREE_BASELINES = ("popularity",)


def table_entries() -> list[str]:
    """Every name ``--compare`` accepts: the baselines without a model, then the strategies."""
    return [*MODEL_FREE_BASELINES, *strategy_names()]


__all__ = [
    "MODEL_FREE_BASELINES",
    "table_entries",
    "STRATEGIES",
    "Strategy",
    "get_strategy",
    "register_strategy",
    "strategy_names",
]
