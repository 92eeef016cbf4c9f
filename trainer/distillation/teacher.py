"""Any scoring model as a teacher (or as a model to measure): a run in PyTorch, a version in ONNX.

Both kinds answer the one question distillation and evaluation ask: the scores of target items
for a batch of users given as the serving inputs (``src_items, src_mask, tgt_items, tgt_mask``,
docs/architecture.md "Model signature"). A run is scored through the ``CrossDomainModel``
interface (``trainer/models/base.py``), a published version through its ONNX graph in ONNX Runtime,
so any model behind that interface or that signature can teach, whatever its architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from services.common.model_repository.hashing import sha256_file
from services.common.model_repository.manifest import MANIFEST_FILE, TeacherInfo
from services.common.model_repository.repository import ModelRepository
from trainer.batching import pad_histories
from trainer.distillation.config import TeacherRef
from trainer.evaluation import evaluate_ranking
from trainer.models import CrossDomainModel
from trainer.run_artifacts import load_run_model
from trainer.splits import EvalSet

# Users per evaluation chunk for ScoringModel.evaluate: the graph gathers [users, items, D]
# candidate vectors, so a wide teacher over a whole catalogue needs small chunks.
EVAL_CHUNK_USERS = 64


class ScoringModel(Protocol):
    """What a teacher (and a model under measurement) offers."""

    identity: TeacherInfo
    config: dict[str, Any]  # the experiment config it was trained with
    vocab_source: list[str]
    vocab_target: list[str]

    @property
    def max_source_history(self) -> int: ...

    @property
    def max_target_history(self) -> int: ...

    def scores(
        self, inputs: list[torch.Tensor], candidates: torch.Tensor | None
    ) -> torch.Tensor: ...


def _history_limits(config: dict[str, Any]) -> tuple[int, int]:
    model = config.get("model", {})
    return int(model.get("max_source_history", 200)), int(model.get("max_target_history", 200))


@dataclass
class RunTeacher:
    """A training run directory (model.pt + vocabularies), scored in PyTorch."""

    model: CrossDomainModel
    identity: TeacherInfo
    config: dict[str, Any]
    vocab_source: list[str]
    vocab_target: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(cls, run_dir: Path, device: torch.device | str = "cpu") -> RunTeacher:
        run_dir = Path(run_dir)
        model, checkpoint = load_run_model(run_dir)
        identity = TeacherInfo(
            kind="run",
            name=checkpoint["config"].get("name", run_dir.name),
            version="",
            model_sha256=sha256_file(run_dir / "model.pt"),
            data_fingerprint=checkpoint.get("data_fingerprint"),
        )
        device = torch.device(device)
        return cls(
            model.to(device).eval(),
            identity,
            checkpoint["config"],
            json.loads((run_dir / "vocab_source.json").read_text()),
            json.loads((run_dir / "vocab_target.json").read_text()),
            device,
        )

    @property
    def max_source_history(self) -> int:
        return _history_limits(self.config)[0]

    @property
    def max_target_history(self) -> int:
        return _history_limits(self.config)[1]

    @torch.no_grad()
    def scores(self, inputs: list[torch.Tensor], candidates: torch.Tensor | None) -> torch.Tensor:
        """[B, C] scores of ``candidates`` [B, C], or [B, N - 1] of every item 1..N-1 (None)."""
        inputs = [t.to(self.device) for t in inputs]
        user = self.model.user_representation(*inputs)
        if candidates is None:
            return self.model.target_logits(user)[:, 1:]
        return self.model.score_candidates(user, candidates.to(self.device))


class PublishedTeacher:
    """A published repository version, scored by its ONNX graph in ONNX Runtime (CPU)."""

    def __init__(self, root: Path, name: str, version: str | None, intra_op_threads: int = 0):
        import onnxruntime as ort

        opened = ModelRepository(root).open(name, version)
        opened.verify()  # every file against its sha256 before it teaches anything
        manifest = opened.manifest
        self.version = opened
        self.identity = TeacherInfo(
            kind="repository",
            name=opened.name,
            version=opened.version,
            model_sha256=manifest.files["model"].sha256,
            manifest_sha256=sha256_file(opened.path / MANIFEST_FILE),
            data_fingerprint=manifest.training.get("data_fingerprint"),
        )
        self.config: dict[str, Any] = dict(manifest.training.get("config", {}))
        self.vocab_source = opened.read_json("vocab_source")
        self.vocab_target = opened.read_json("vocab_target")
        self.features = manifest.features
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(opened.model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    @property
    def max_source_history(self) -> int:
        return self.features.max_source_history

    @property
    def max_target_history(self) -> int:
        return self.features.max_target_history

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {name: feeds[name] for name in self.input_names})[0]

    @torch.no_grad()
    def scores(self, inputs: list[torch.Tensor], candidates: torch.Tensor | None) -> torch.Tensor:
        src_items, src_mask, tgt_items, tgt_mask = (t.detach().cpu().numpy() for t in inputs)
        rows = len(src_items)
        if candidates is None:
            every = np.arange(1, len(self.vocab_target), dtype=np.int64)
            candidate_array = np.broadcast_to(every, (rows, len(every)))
        else:
            candidate_array = candidates.detach().cpu().numpy()
        feeds = {
            "src_items": np.ascontiguousarray(src_items, dtype=np.int64),
            "src_mask": np.ascontiguousarray(src_mask, dtype=np.float32),
            "tgt_items": np.ascontiguousarray(tgt_items, dtype=np.int64),
            "tgt_mask": np.ascontiguousarray(tgt_mask, dtype=np.float32),
            "candidates": np.ascontiguousarray(candidate_array, dtype=np.int64),
        }
        device = inputs[0].device
        return torch.from_numpy(self.run(feeds)).to(device)


def load_teacher(ref: TeacherRef, device: torch.device | str = "cpu") -> ScoringModel:
    """The teacher ``ref`` points to; FileNotFoundError / ValueError name what is wrong."""
    ref.check()
    if ref.run:
        run = Path(ref.run)
        if not (run / "model.pt").is_file():
            raise FileNotFoundError(
                f"distill.teacher.run: {run}/model.pt not found (train it with xdrec train --out {run})"
            )
        return RunTeacher.load(run, device)
    return PublishedTeacher(Path(ref.repository), ref.model, ref.version)


def clip_recent(items: torch.Tensor, mask: torch.Tensor, max_len: int) -> tuple[torch.Tensor, ...]:
    """The last ``max_len`` slots of left-aligned histories (most recent last), left-aligned
    again: how a model with a shorter window than the batch sees the same users. The window is
    found from ``items`` (index 0 = padding), not the mask, so items hidden by input dropout
    keep their slots and both models see the same corrupted history."""
    width = items.shape[1]
    if width <= max_len:
        return items, mask
    filled = items > 0
    slots = torch.arange(width, device=items.device)
    length = torch.where(filled, slots + 1, 0).max(dim=1).values  # last real slot + 1
    start = (length - max_len).clamp(min=0)
    positions = (start.unsqueeze(1) + torch.arange(max_len, device=items.device)).clamp(
        max=width - 1
    )
    inside = torch.arange(max_len, device=items.device).unsqueeze(0) < (length - start).unsqueeze(1)
    return (
        torch.gather(items, 1, positions) * inside,
        torch.gather(mask, 1, positions) * inside,
    )


def model_inputs(model: ScoringModel, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batch's inputs cut to ``model``'s own history windows."""
    src_items, src_mask = clip_recent(inputs[0], inputs[1], model.max_source_history)
    tgt_items, tgt_mask = clip_recent(inputs[2], inputs[3], model.max_target_history)
    return [src_items, src_mask, tgt_items, tgt_mask]


def evaluate_scoring_model(
    model: ScoringModel,
    evalset: EvalSet,
    popularity: np.ndarray | None = None,
    chunk_users: int = EVAL_CHUNK_USERS,
) -> dict[str, float]:
    """The evaluation every trained model gets (``trainer.evaluation``), for any ScoringModel:
    full ranking of the unseen target items, with the model's own history windows."""

    def score_chunk(start: int, end: int) -> torch.Tensor:
        src = pad_histories(evalset.source_histories[start:end], model.max_source_history)
        tgt = pad_histories(evalset.target_histories[start:end], model.max_target_history)
        inputs = [torch.from_numpy(a) for a in (*src, *tgt)]
        scores = model.scores(inputs, None).float().cpu()
        return torch.cat([torch.full((len(scores), 1), -torch.inf), scores], dim=1)

    return evaluate_ranking(score_chunk, evalset, popularity, chunk_users)
