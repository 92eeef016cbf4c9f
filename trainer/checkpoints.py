"""One checkpoint per finished strategy/seed, so a long run survives an interruption.

```
<run>/checkpoints/<strategy>-seed<seed>.pt   weights (model.pt's format) + validation/test metrics,
                                              curve and seconds of that run
<run>/checkpoints/run.json                   config and data fingerprint the checkpoints belong to
```

``xdrec train --resume`` reloads the finished pairs instead of training them again; it refuses a
folder made with another config or other data, since mixing them would make the table a lie.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from trainer.config import ExperimentConfig
from trainer.models import build_model, model_spec


class CheckpointStore:
    def __init__(self, out_dir: Path, config: ExperimentConfig, fingerprint: str) -> None:
        self.folder = out_dir / "checkpoints"
        self.identity = {"config": _comparable(config), "data_fingerprint": fingerprint}

    def path(self, strategy: str, seed: int) -> Path:
        return self.folder / f"{strategy}-seed{seed}.pt"

    def has(self, strategy: str, seed: int) -> bool:
        return self.path(strategy, seed).exists()

    def clear(self) -> None:
        """A fresh (non-resumed) run: old checkpoints would otherwise be mistaken for its own."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "run.json").write_text(json.dumps(self.identity, indent=2))

    def check_resumable(self, writer: bool = True) -> None:
        """``writer``: this process may write (rank 0 under torchrun)."""
        marker = self.folder / "run.json"
        if not marker.exists():
            if writer:
                self.clear()  # nothing to resume: start fresh
            return
        recorded = json.loads(marker.read_text())
        for key, label in (("data_fingerprint", "data"), ("config", "config")):
            if recorded.get(key) != self.identity[key]:
                raise ValueError(
                    f"--resume: {self.folder.parent} was trained with different {label}; "
                    "resume with the same config and data, or train into a new --out"
                )

    def save(self, result, record) -> None:
        """``record`` is the strategy's StrategyRuns, whose last entry is this result's metrics."""
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()},
            "model_spec": model_spec(result.model),
            "strategy": result.strategy,
            "seed": result.seed,
            "best_epoch": result.best_epoch,
            "valid": record.valid[-1],
            "test": record.test[-1],
            "curve": result.curve,
            "seconds": result.seconds,
        }
        partial = self.path(result.strategy, result.seed).with_suffix(".tmp")
        torch.save(payload, partial)
        partial.replace(self.path(result.strategy, result.seed))  # never a half-written checkpoint

    def load(self, strategy: str, seed: int, trainer, record):
        """Rebuilds the finished run, appends its metrics to ``record`` and returns a TrainResult;
        a target-only model becomes the seed's shared one (EMCDR and PTUPCDR reuse it)."""
        from trainer.training import TrainResult

        payload = torch.load(self.path(strategy, seed), weights_only=False)
        split = trainer.split
        model = build_model(
            payload["model_spec"],
            len(split.source_vocab),
            len(split.target_vocab),
            trainer.config.model,
        )
        model.load_state_dict(payload["state_dict"])
        model.to(trainer.device).eval()
        result = TrainResult(
            strategy,
            seed,
            model,
            payload["best_epoch"],
            payload["valid"],
            payload["curve"],
            payload["seconds"],
        )
        record.seeds.append(seed)
        record.valid.append(payload["valid"])
        record.test.append(payload["test"])
        record.curves.append(payload["curve"])
        record.seconds.append(payload["seconds"])
        if strategy == "target_only":
            trainer.shared.for_seed(seed).target_only = result
        return result


def _comparable(config: ExperimentConfig) -> dict:
    """The config fields that change results (which strategies run is free to change)."""
    raw = json.loads(json.dumps(config.to_dict()))
    raw["train"].pop("strategy", None)
    raw["train"].pop("seeds", None)
    raw["train"].pop("num_threads", None)
    raw["train"].pop("device", None)
    raw.pop("name", None)
    return raw
