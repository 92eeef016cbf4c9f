"""What a training run leaves on disk for the exporter and the feature store.

```
<run>/model.pt          state_dict + experiment config + sizes (what export needs to rebuild the model)
<run>/vocab_source.json vocab_target.json catalog.json   (copied into the model repository by export)
<run>/features.tsv      event log the encoder's feature store starts from
<run>/results.json results.md results.png   comparison table and plots
```
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from trainer.config import ExperimentConfig
from trainer.models import CrossDomainModel, build_model, model_spec
from trainer.splits import CrossDomainSplit


def save_run(
    out_dir: Path,
    config: ExperimentConfig,
    split: CrossDomainSplit,
    best,
    report: dict,
    extra: dict | None = None,
) -> None:
    """``extra``: more keys for model.pt (a distilled student records its ``teacher`` there)."""
    torch.save(
        {
            "state_dict": {k: v.cpu() for k, v in best.model.state_dict().items()},
            "model_class": type(best.model).__name__,
            "model_spec": model_spec(best.model),
            "num_source_items": len(split.source_vocab),
            "num_target_items": len(split.target_vocab),
            "config": config.to_dict(),
            "strategy": best.strategy,
            "seed": best.seed,
            "best_epoch": best.best_epoch,
            "data_fingerprint": split.fingerprint,
            "metrics": {
                "valid": best.valid,
                "test": report["strategies"][best.strategy]["test"][
                    config.train.seeds.index(best.seed)
                ],
            },
            **(extra or {}),
        },
        out_dir / "model.pt",
    )
    (out_dir / "vocab_source.json").write_text(json.dumps(split.source_vocab.ids))
    (out_dir / "vocab_target.json").write_text(json.dumps(split.target_vocab.ids))
    catalog = [
        {
            "item_id": item,
            "index": i,
            "title": split.target_titles[i],
            "popularity": int(split.target_popularity[i]),
        }
        for i, item in enumerate(split.target_vocab.ids)
        if i > 0
    ]
    (out_dir / "catalog.json").write_text(json.dumps(catalog))
    write_features(out_dir / "features.tsv", split.feature_rows)


def write_features(path: Path, rows: list[tuple[str, str, str, float]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["user_id", "domain", "item_id", "timestamp"])
        writer.writerows((u, d, i, f"{t:.0f}") for u, d, i, t in rows)


def load_run_model(run_dir: Path) -> tuple[CrossDomainModel, dict]:
    """The model a run saved (model.pt), in eval mode, and the whole checkpoint dict."""
    checkpoint_path = Path(run_dir) / "model.pt"
    if not checkpoint_path.exists():
        raise FileNotFoundError(
            f"{checkpoint_path} not found: run `xdrec train --out {run_dir}` first"
        )
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    config = ExperimentConfig.from_dict(checkpoint["config"])
    spec = checkpoint.get("model_spec", {"class": checkpoint["model_class"]})
    model = build_model(
        spec, checkpoint["num_source_items"], checkpoint["num_target_items"], config.model
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
