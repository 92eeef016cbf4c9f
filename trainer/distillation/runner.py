"""Trains a student on a teacher's scores and leaves a run directory ``xdrec export`` publishes.

Batches are the teacher's own training users (the target-domain training index), with the same
input corruption as every strategy: items dropped at random and, for ``train.cold_simulation_rate``
of the users, the whole target history hidden, so teacher and student both answer from the source
history alone and the student learns the teacher's cold-start path. The teacher scores exactly
the inputs the student sees (cut to its own history windows). Selection is early stopping on
validation NDCG@10 (``Trainer``'s loop); the test split is scored once per finished run, for the
report only.

The run directory has the layout of ``xdrec train`` (model.pt, vocabularies, catalog.json,
features.tsv, results.json/md) and model.pt also records the teacher's identity and the
distillation settings, which the exporter writes into the student's manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from trainer.config_checks import check_config
from trainer.data import load_dataset
from trainer.distillation.config import StudentExperiment
from trainer.distillation.objective import distillation_loss
from trainer.distillation.teacher import ScoringModel, evaluate_scoring_model, model_inputs
from trainer.evaluation import evaluate_model, pooled_ndcg
from trainer.experiment import StrategyRuns
from trainer.results_table import RunRecord, results_markdown
from trainer.run_artifacts import save_run
from trainer.sampled_softmax import candidate_logits
from trainer.splits import CrossDomainSplit, split_dataset
from trainer.training import Shard, Trainer, TrainResult

STRATEGY = "distill"
TEACHER_ROW = "teacher"


def check_same_data(teacher: ScoringModel, split: CrossDomainSplit, config) -> None:
    """The student must see the teacher's data and split with the same item indices."""
    fingerprint = teacher.identity.data_fingerprint
    if fingerprint and fingerprint != split.fingerprint:
        raise ValueError(
            f"distill.teacher: {teacher.identity.label} was trained on other data (fingerprint "
            f"{fingerprint[:12]}..., the student's data gives {split.fingerprint[:12]}...); "
            "leave 'data' out of the student config to use the teacher's"
        )
    teacher_split = teacher.config.get("split")
    if teacher_split and teacher_split != config.to_dict()["split"]:
        raise ValueError(
            f"distill.teacher: {teacher.identity.label} was trained on another split "
            f"({teacher_split}); leave 'split' out of the student config to use the teacher's"
        )
    for domain, ours, theirs in (
        ("source", split.source_vocab.ids, teacher.vocab_source),
        ("target", split.target_vocab.ids, teacher.vocab_target),
    ):
        if list(ours) != list(theirs):
            raise ValueError(
                f"distill.teacher: its vocab_{domain} ({len(theirs)} items) differs from the "
                f"student's ({len(ours)} items); the two must index the same items"
            )


class Distiller:
    """One student per seed, trained on ``teacher``'s scores through ``trainer``'s machinery."""

    def __init__(self, trainer: Trainer, teacher: ScoringModel, student: StudentExperiment) -> None:
        self.trainer = trainer
        self.teacher = teacher
        self.settings = student.distill
        self.full = trainer.target_sampler.full

    def logits(self, model, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) logits over the same items: every item 1..N-1, or the batch's
        positives + shared sampled items with the same logQ offsets on both sides."""
        inputs = shard.tensors[:4]
        teacher_inputs = model_inputs(self.teacher, inputs)
        user = model.user_representation(*inputs)
        if self.full:
            student = model.target_logits(user)[:, 1:]
            teacher = self.teacher.scores(teacher_inputs, None)
            return student, teacher.to(device=student.device, dtype=student.dtype)
        candidates = shard.candidates
        student = candidate_logits(model.target_logits, model.target_scores, user, candidates)
        rows = len(candidates.positives)
        items = torch.cat(
            [candidates.positives, candidates.items.unsqueeze(0).expand(rows, -1)], dim=1
        ).clamp(min=1)  # padded positive slots are masked by their offset anyway
        teacher = self.teacher.scores(teacher_inputs, items)
        teacher = teacher.to(device=student.device, dtype=student.dtype) - candidates.offsets
        return student, teacher

    def labels(self, shard: Shard) -> torch.Tensor:
        labels = shard.tensors[4]
        return labels[:, 1:] if self.full else labels

    def kl_on(self, model, batches: list) -> float:
        """Mean KL (at the configured temperature) of ``model`` on fixed, uncorrupted batches."""
        s = self.settings
        total = 0.0
        model.eval()
        with torch.no_grad():
            for shard in batches:
                student, teacher = self.logits(model, shard)
                total += float(
                    distillation_loss(student, teacher, self.labels(shard), s.temperature, 0.0)[1]
                )
        return total / max(len(batches), 1)

    def fit(self, seed: int) -> TrainResult:
        trainer, s = self.trainer, self.settings
        t = trainer.config.train
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        if s.pretrain_student:
            model, generator = trainer.pretrained_source(seed)
        else:
            model = trainer.new_model()
        optimizer = trainer.optimizer(model)

        def epoch() -> float:
            losses = []
            for batch in trainer.target_batches.batches(t.batch_size, generator):
                shard = trainer.target_inputs(batch, generator, use_source=True)
                optimizer.zero_grad()
                student, teacher = self.logits(model, shard)
                loss, _ = distillation_loss(
                    student, teacher, self.labels(shard), s.temperature, s.alpha
                )
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return float(np.mean(losses))

        result = trainer._early_stopping_loop(
            STRATEGY, seed, model, epoch, t.epochs, lambda: trainer.validate(model)
        )
        result.seconds = time.perf_counter() - started
        return result


def run_distillation(
    student: StudentExperiment,
    teacher: ScoringModel,
    out_dir: Path,
    show_progress: bool = True,
    split: CrossDomainSplit | None = None,
    say=print,
) -> dict:
    """Distils ``teacher`` into one student per seed, keeps the best on validation, writes the run."""
    config = student.experiment
    student.distill.check()
    check_config(config)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if split is None:
        split = split_dataset(load_dataset(config.data), config.data, config.split)
    check_same_data(teacher, split, config)
    say(
        f"teacher {teacher.identity.label}; student {config.model.embedding_dim}-d history tower, "
        f"T={student.distill.temperature}, alpha={student.distill.alpha}",
        flush=True,
    )
    trainer = Trainer(config, split, show_progress=show_progress)
    distiller = Distiller(trainer, teacher, student)
    popularity = split.target_popularity
    teacher_row = RunRecord(
        TEACHER_ROW, is_baseline=True, notes=f"the teacher, {teacher.identity.label}"
    )
    teacher_row.valid.append(
        {k: evaluate_scoring_model(teacher, v) for k, v in split.valid.items()}
    )
    teacher_row.test.append(
        {k: evaluate_scoring_model(teacher, v, popularity) for k, v in split.test.items()}
    )
    say(f"  teacher valid_ndcg@10={pooled_ndcg(teacher_row.valid[0], split.valid):.4f}", flush=True)
    runs = StrategyRuns(STRATEGY)
    best: TrainResult | None = None
    best_score = -np.inf
    m = config.model
    for seed in config.train.seeds:
        result = distiller.fit(seed)
        runs.seeds.append(seed)
        runs.valid.append(result.valid)
        runs.test.append(
            {
                k: evaluate_model(
                    result.model,
                    v,
                    m.max_source_history,
                    m.max_target_history,
                    trainer.device,
                    popularity=popularity,
                )
                for k, v in split.test.items()
            }
        )
        runs.curves.append(result.curve)
        runs.seconds.append(result.seconds)
        score = pooled_ndcg(result.valid, split.valid)
        say(
            f"  student seed={seed} best_epoch={result.best_epoch} valid_ndcg@10={score:.4f} "
            f"({result.seconds:.1f}s)",
            flush=True,
        )
        if score > best_score:
            best, best_score = result, score
    table = {TEACHER_ROW: teacher_row, STRATEGY: runs}
    report = {
        "config": config.to_dict(),
        "distill": student.distill.to_dict(),
        "teacher": teacher.identity.to_dict(),
        "split": split.stats(),
        "split_method": split.split_method,
        "data_fingerprint": split.fingerprint,
        "strategies": {name: r.to_json() for name, r in table.items()},
        "seconds": time.perf_counter() - started,
        "complete": True,
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    markdown = results_markdown(table, split.dataset_report, split.split_method)
    (out_dir / "results.md").write_text(markdown + "\n")
    assert best is not None
    save_run(
        out_dir,
        config,
        split,
        best,
        report,
        extra={
            "teacher": teacher.identity.to_dict(),
            "distillation": {
                "temperature": student.distill.temperature,
                "alpha": student.distill.alpha,
                "pretrain_student": student.distill.pretrain_student,
                "teacher_metrics": {"valid": teacher_row.valid[0], "test": teacher_row.test[0]},
            },
        },
    )
    return report
