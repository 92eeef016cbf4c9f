"""Distillation: the student moves towards the teacher, trains from a run or a published version,
and is published as its own model with the teacher recorded (parity checked, servable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.exporter import ExportOptions, export_run
from services.common.model_repository import ModelRepository
from services.common.model_repository.acceptance import accept
from services.common.model_repository.hashing import sha256_file
from tests.conftest import tiny_config
from trainer.distillation.command import teacher_overrides
from trainer.distillation.config import (
    DistillConfig,
    TeacherRef,
    apply_student_overrides,
    build_student_experiment,
)
from trainer.distillation.objective import distillation_kl
from trainer.distillation.runner import Distiller, run_distillation
from trainer.distillation.teacher import (
    PublishedTeacher,
    RunTeacher,
    clip_recent,
    evaluate_scoring_model,
    load_teacher,
)
from trainer.experiment import run_experiment
from trainer.training import Trainer

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, ml100k_split) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    config = tiny_config(epochs=2, pretrain_epochs=1)
    config.name = "tiny-teacher"
    config.model.embedding_dim = 24
    run_experiment(config, out, show_progress=False, split=ml100k_split)
    return out


@pytest.fixture(scope="module")
def published_teacher(teacher_run, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    export_run(ExportOptions(teacher_run, repo), **QUIET)
    return repo


def student_experiment(teacher, epochs: int = 2, **distill):
    raw = {
        "name": "tiny-student",
        "model": {"embedding_dim": 8, "hidden_dim": 16, "dropout": 0.0},
        "train": {
            "epochs": epochs,
            "pretrain_epochs": 1,
            "eval_every": 1,
            "seeds": [0],
            "num_threads": 2,
        },
        "distill": {"teacher": {"run": "unused"}, **distill},
    }
    return build_student_experiment(raw, teacher.config)


def test_kl_is_zero_for_equal_scores_and_positive_otherwise() -> None:
    logits = torch.randn(4, 9)
    assert float(distillation_kl(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(logits, logits.flip(1), 2.0)) > 0.01


def test_distillation_reduces_kl_to_the_teacher(teacher_run, ml100k_split) -> None:
    teacher = RunTeacher.load(teacher_run)
    student = student_experiment(
        teacher, epochs=3, alpha=0.0, temperature=1.0, pretrain_student=False
    )
    trainer = Trainer(student.experiment, ml100k_split, show_progress=False)
    distiller = Distiller(trainer, teacher, student)
    generator = torch.Generator().manual_seed(1)
    probe = [
        trainer.target_inputs(batch, generator, use_source=True)
        for _, batch in zip(range(4), trainer.target_batches.batches(128, generator), strict=False)
    ]
    torch.manual_seed(0)
    before = distiller.kl_on(trainer.new_model(), probe)  # fit(seed=0) starts from this model
    result = distiller.fit(0)
    after = distiller.kl_on(result.model, probe)
    assert after < 0.7 * before, (before, after)


def test_student_from_a_published_teacher_is_published_with_the_teacher(
    published_teacher, ml100k_split, tmp_path
) -> None:
    teacher = load_teacher(TeacherRef(repository=str(published_teacher), model="tiny-teacher"))
    assert isinstance(teacher, PublishedTeacher) and teacher.identity.version == "1"
    student = student_experiment(teacher)
    # data and split come from the teacher's recorded config: the same split by construction.
    assert student.experiment.to_dict()["split"] == teacher.config["split"]
    assert student.experiment.to_dict()["data"] == teacher.config["data"]
    report = run_distillation(
        student, teacher, tmp_path / "student", False, ml100k_split, say=lambda *a, **k: None
    )
    assert set(report["strategies"]) == {"teacher", "distill"}
    assert "teacher" in (tmp_path / "student" / "results.md").read_text()

    version_dir = export_run(
        ExportOptions(tmp_path / "student", published_teacher, "tiny-student"), **QUIET
    )
    manifest = json.loads((version_dir / "manifest.json").read_text())
    teacher_dir = published_teacher / "tiny-teacher" / "1"
    assert manifest["teacher"] == {
        "kind": "repository",
        "name": "tiny-teacher",
        "version": "1",
        "model_sha256": sha256_file(teacher_dir / "model.onnx"),
        "manifest_sha256": sha256_file(teacher_dir / "manifest.json"),
        "data_fingerprint": ml100k_split.fingerprint,
    }
    assert manifest["training"]["strategy"] == "distill"
    assert manifest["training"]["distillation"]["temperature"] == 2.0
    assert manifest["parity"]["passed"]
    opened = ModelRepository(published_teacher).open("tiny-student")
    assert opened.manifest.teacher.label == "tiny-teacher version 1"
    accept(opened)  # the serving acceptance rule: the student is served like any model


def test_run_teacher_and_published_teacher_give_the_same_scores(
    teacher_run, published_teacher, ml100k_split
) -> None:
    run = RunTeacher.load(teacher_run)
    published = load_teacher(TeacherRef(repository=str(published_teacher), model="tiny-teacher"))
    evalset = ml100k_split.valid["warm"]
    assert evaluate_scoring_model(run, evalset)["ndcg@10"] == pytest.approx(
        evaluate_scoring_model(published, evalset)["ndcg@10"], abs=1e-6
    )


def test_student_on_other_data_is_refused(teacher_run, ml100k_split, tmp_path) -> None:
    teacher = RunTeacher.load(teacher_run)
    raw = {"split": {"split_seed": 7}, "distill": {"teacher": {"run": str(teacher_run)}}}
    student = build_student_experiment(raw, teacher.config)
    with pytest.raises(ValueError, match="distill.teacher: .* another split"):
        run_distillation(student, teacher, tmp_path, False, ml100k_split, say=lambda *a, **k: None)


def test_clip_recent_keeps_the_last_items_of_each_row() -> None:
    items = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0], [9, 0, 0, 0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    clipped, clipped_mask = clip_recent(items, mask, 2)
    assert clipped.tolist() == [[5, 6], [7, 8], [9, 0]]
    assert clipped_mask.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"teacher": {}}, "distill.teacher: give either 'run'"),
        ({"teacher": {"repository": "r"}}, "distill.teacher.model: the model name"),
        ({"teacher": {"run": "r"}, "temperature": 0}, "distill.temperature: 0 must be > 0"),
        ({"teacher": {"run": "r"}, "alpha": 2}, r"distill.alpha: 2 must be in \[0, 1\]"),
        ({"teacher": {"run": "r"}, "beta": 1}, "unknown field\\(s\\) in 'distill': \\['beta'\\]"),
        (
            {"teacher": {"repository": "r", "model": "m", "version": "new"}},
            "distill.teacher.version: 'new' is not a version number",
        ),
    ],
)
def test_bad_distill_config_names_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillConfig.from_dict(raw).check()


def test_cli_teacher_flags_become_the_teacher_reference() -> None:
    class Args:
        teacher_run = None
        teacher_repo = "models"
        teacher_model = "big"
        teacher_version = "4"

    raw = apply_student_overrides({"distill": {"teacher": {"run": "old"}}}, teacher_overrides(Args))
    ref = DistillConfig.from_dict(raw["distill"]).teacher
    assert ref == TeacherRef(repository="models", model="big", version="4")
    with pytest.raises(FileNotFoundError, match="distill.teacher.run: nowhere/model.pt not found"):
        load_teacher(TeacherRef(run="nowhere"))


def test_cli_names_a_missing_teacher(tmp_path, capsys) -> None:
    from cli.main import main

    code = main(["distill", "--out", str(tmp_path / "s"), "--teacher-run", str(tmp_path / "none")])
    assert code == 2
    assert "xdrec distill: distill.teacher.run:" in capsys.readouterr().out
    assert main(["distill", "--out", str(tmp_path / "s")]) == 2
    assert "distill.teacher: give either 'run'" in capsys.readouterr().out


def test_benchmark_script_reports_both_models(published_teacher, tmp_path) -> None:
    """Smoke run of bench/distillation_benchmark.py (tiny student, few timed runs) so the
    script cannot rot; the figures themselves come from ML-1M runs (see its docstring)."""
    from tests.fixtures.scripts import load_script

    root = Path(__file__).resolve().parents[3]
    bench = load_script(root / "bench" / "distillation_benchmark.py", "xdrec_bench_distillation")
    config = tmp_path / "student.yaml"
    config.write_text(
        "name: bench-student\nmodel: {embedding_dim: 8, hidden_dim: 16}\n"
        "train: {epochs: 1, pretrain_epochs: 1, eval_every: 1, seeds: [0], num_threads: 2}\n"
    )
    args = ["--config", str(config), "--teacher-repo", str(published_teacher)]
    args += ["--teacher-model", "tiny-teacher", "--out", str(tmp_path / "out"), "--quiet"]
    args += ["--repo", str(tmp_path / "repo"), "--runs", "30", "--block", "10", "--requests", "5"]
    result = bench.main(args, say=lambda *a, **k: None)
    saved = json.loads((tmp_path / "out" / "distillation.json").read_text())
    assert saved["ratios"]["ndcg@10"] == pytest.approx(result["ratios"]["ndcg@10"])
    assert saved["student"]["manifest_teacher"]["name"] == "tiny-teacher"
    assert saved["workload"]["candidates_per_request"] == 500
    for name in ("teacher", "student"):
        assert saved["timing"][name]["runs"] == 30
        assert 0 < saved["timing"][name]["median_ms"] <= saved["timing"][name]["p99_ms"]
        assert set(saved["quality"][name]) == {"valid", "test"}
    assert (tmp_path / "out" / "distillation.png").stat().st_size > 0
    assert "student / teacher" in (tmp_path / "out" / "distillation.md").read_text()


def test_sampled_softmax_distillation_scores_the_same_items_on_both_sides(
    teacher_run, ml100k_split
) -> None:
    """A catalogue larger than train.num_negatives: KL over positives + sampled items."""
    teacher = RunTeacher.load(teacher_run)
    student = student_experiment(teacher, epochs=1)
    student.experiment.train.num_negatives = 64  # ML-100K's 574 target items: sampled
    trainer = Trainer(student.experiment, ml100k_split, show_progress=False)
    distiller = Distiller(trainer, teacher, student)
    assert not distiller.full
    generator = torch.Generator().manual_seed(0)
    shard = trainer.target_inputs(
        next(trainer.target_batches.batches(32, generator)), generator, use_source=True
    )
    model = trainer.new_model()
    student_logits, teacher_logits = distiller.logits(model, shard)
    assert student_logits.shape == teacher_logits.shape == distiller.labels(shard).shape
    masked = shard.candidates.offsets >= 1e8  # padded positives / duplicate draws
    assert bool((teacher_logits[masked] < -1e8).all())
    assert bool((student_logits[masked] < -1e8).all())
    result = distiller.fit(0)
    assert result.valid and distiller.kl_on(result.model, [shard]) >= 0.0
