"""The model under test: an existing repository (and training run), or a small real model
trained and exported once into the work directory and reused by later runs.

Why train a real one rather than ship a fixture: request shapes and compute per request must be
those of a model the suite would actually serve (MovieLens-100K, pretrain_finetune).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

REALISTIC_SETTINGS = (
    "model.embedding_dim=256",
    "model.hidden_dim=1024",
    "model.max_source_history=200",
    "model.max_target_history=200",
    "train.patience=1",
)
"""``--realistic``: a history tower worth measuring (256-d item vectors, a 514 -> 1024 -> 256
tower, histories up to 200 items per domain) trained briefly on MovieLens-100K. Its weights are
not tuned (one or two epochs): the benchmark needs its shapes and compute per request, and scores
from real weights rather than a toy graph."""
REALISTIC_EPOCHS = 2


@dataclass(frozen=True)
class ModelUnderTest:
    """Where the ONNX model (repository), its training run and features are."""

    repo: Path
    run: Path | None  # model.pt for the torch-eager peer; None when only --repo was given
    model: str
    features: Path


def ensure_model(
    *,
    repo: Path | None,
    run: Path | None,
    workdir: Path,
    model: str | None,
    features: Path | None,
    train_epochs: int,
    train_settings: Sequence[str] = (),
) -> ModelUnderTest:
    """The given repository, or one trained + exported into ``workdir`` (once);
    ``train_settings`` are extra ``xdrec train --set`` overrides (e.g. REALISTIC_SETTINGS)."""
    if repo is not None:
        repo = repo.resolve()
        run = run.resolve() if run else None
    else:
        workdir = workdir.resolve()
        run, repo = workdir / "run", workdir / "repo"
        if not (run / "model.pt").exists():
            print(
                f"== no --repo given: training an ML-100K model into {run} (seed 0"
                + "".join(f", {x}" for x in train_settings)
                + ")"
            )
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "train",
                    "--out",
                    str(run),
                    "--quiet",
                    "--set",
                    "train.seeds=[0]",
                    "--set",
                    f"train.epochs={train_epochs}",
                    "--set",
                    f"train.pretrain_epochs={max(1, train_epochs // 2)}",
                    *(arg for setting in train_settings for arg in ("--set", setting)),
                ],
                check=True,
                timeout=3600,
                cwd=ROOT,
            )
        if not repo.exists() or not any(repo.iterdir()):
            subprocess.run(
                [sys.executable, "-m", "cli", "export", "--run", str(run)] + ["--repo", str(repo)],
                check=True,
                timeout=1800,
                cwd=ROOT,
            )
    from services.common.model_repository import ModelRepository

    names = ModelRepository(repo).models()
    if model:
        chosen = model
    elif len(names) == 1:
        chosen = names[0]
    else:
        raise SystemExit(f"{repo} holds {names or 'no models'}: pick one with --model")
    return ModelUnderTest(repo, run, chosen, find_features(features, repo, run))


def find_features(given: Path | None, repo: Path, run: Path | None) -> Path:
    for candidate in (given, run and run / "features.tsv", repo / "features.tsv"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("no features.tsv found: pass --features or --run")
