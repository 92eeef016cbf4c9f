"""``xdrec distill``: train a small student on a teacher's scores, save a run to export."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ml1m-student.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher (a run or a published version) into a small history tower",
        description="Trains a student history tower on a teacher's target-domain scores "
        "(T^2 KL between the softened score distributions, mixed with the student's own loss by "
        "distill.alpha) over the teacher's training users, warm and with hidden target histories "
        "(the cold-start path). Selects on validation, reports teacher and student on test, and "
        "saves a run directory that `xdrec export` publishes as its own model, with the teacher "
        "recorded in the manifest.",
        epilog="examples:\n"
        "  xdrec distill --config trainer/configs/ml1m-student.yaml --out artifacts/student \\\n"
        "      --teacher-repo models --teacher-model ml1m-teacher --teacher-version 1\n"
        "  xdrec distill --teacher-run artifacts/teacher --out artifacts/student \\\n"
        "      --set model.embedding_dim=16 --set distill.temperature=3\n"
        "  xdrec export --run artifacts/student --repo models --name ml1m-student",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="student YAML: model (the student's shape), train, distill; data and split default "
        f"to the teacher's (example: {EXAMPLE_CONFIG.name})",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory to write")
    add_teacher_arguments(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. model.embedding_dim=16 or distill.alpha=0.2",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """The --teacher-* flags that ``teacher_overrides`` reads (``xdrec distill`` and the
    distillation benchmark take the same ones)."""
    parser.add_argument("--teacher-run", help="teacher = this training run directory")
    parser.add_argument("--teacher-repo", help="teacher = a version in this model repository")
    parser.add_argument("--teacher-model", help="the teacher's model name in --teacher-repo")
    parser.add_argument(
        "--teacher-version", help="the teacher's version in --teacher-repo (default: newest)"
    )


def teacher_overrides(args: argparse.Namespace) -> list[str]:
    """The --teacher-* flags as distill.teacher.* overrides (they replace the config's teacher)."""
    if args.teacher_run and args.teacher_repo:
        raise ValueError("--teacher-run and --teacher-repo: give one of them")
    if args.teacher_run:
        return [f"distill.teacher={{run: '{args.teacher_run}'}}"]
    if args.teacher_repo:
        if not args.teacher_model:
            raise ValueError("--teacher-model: required with --teacher-repo")
        ref = f"repository: '{args.teacher_repo}', model: '{args.teacher_model}'"
        if args.teacher_version:
            ref += f", version: '{args.teacher_version}'"
        return [f"distill.teacher={{{ref}}}"]
    if args.teacher_model or args.teacher_version:
        raise ValueError("--teacher-model / --teacher-version need --teacher-repo")
    return []


def run(args: argparse.Namespace) -> int:
    from services.common.model_repository.errors import IntegrityError, ManifestError
    from trainer.distillation.config import (
        DistillConfig,
        apply_student_overrides,
        build_student_experiment,
        read_student_config,
    )
    from trainer.distillation.runner import run_distillation
    from trainer.distillation.teacher import load_teacher

    try:
        raw = apply_student_overrides(
            read_student_config(args.config), [*args.overrides, *teacher_overrides(args)]
        )
        settings = DistillConfig.from_dict(raw.get("distill") or {})
        settings.check()  # before anything is loaded
        teacher = load_teacher(settings.teacher)
        student = build_student_experiment(raw, teacher.config)
        report = run_distillation(student, teacher, args.out, show_progress=not args.quiet)
    except (FileNotFoundError, ValueError, ManifestError, IntegrityError) as error:
        print(f"xdrec distill: {error}")
        return 2
    print()
    print((args.out / "results.md").read_text())
    print(
        f"distilled in {report['seconds']:.1f}s; run saved to {args.out} "
        f"(export it: xdrec export --run {args.out} --repo REPO --name NAME)"
    )
    return 0
