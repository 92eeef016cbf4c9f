"""Teacher vs distilled student: quality (NDCG@10) and in-process ONNX Runtime time per request.

    python bench/distillation_benchmark.py --config trainer/configs/ml1m-student.yaml \\
        --teacher-repo models --teacher-model ml1m-teacher --out docs/results/distillation
    python bench/distillation_benchmark.py --config student.yaml --teacher-run artifacts/teacher
    python bench/distillation_benchmark.py --config student.yaml --student-version 1 \\
        --repo models --features artifacts/student/features.tsv    # measure only

The teacher comes from the student config's ``distill.teacher`` (or the --teacher-* flags, which
replace it), so pointing the benchmark at another teacher (the sequence model) is one flag. Steps:

1. a teacher given as a run directory is exported first (both models are timed as ONNX graphs);
2. the student is distilled (``xdrec distill``'s code) into ``<out>/student-run``, selected on
   validation, and published with ``xdrec export``'s code next to the teacher (or --repo);
3. both published graphs are scored by the same ranking code on the validation and test users
   (warm and cold-start), full ranking of the unseen target items;
4. both are timed in one process, interleaved block by block: batch 1 (one real user, encoded by
   the encoder's own code with each model's history windows) x ``--candidates`` random target
   items, CPU execution provider, 1 intra-op thread, the same requests in the same order; with
   them a Cast-only graph of the same inputs (the "floor": the fixed cost of one run).

Writes ``distillation.json`` (every number), ``distillation.md`` and ``distillation.png``.
Targets (issue 10): student NDCG@10 >= 95% of the teacher's, at <= 1/4 of its time per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serving.measure import ort_session, percentile  # noqa: E402
from bench.serving.report import jsonable, machine_info  # noqa: E402
from bench.serving.workload import build_workload  # noqa: E402
from trainer.distillation.command import add_teacher_arguments, teacher_overrides  # noqa: E402

QUALITY_TARGET = 0.95  # student NDCG@10 / teacher NDCG@10
TIME_TARGET = 0.25  # student time per request / teacher's
GROUPS = ("warm", "cold")
SPLITS = ("valid", "test")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "trainer" / "configs" / "ml1m-student.yaml",
        help="student config (model, train, distill with the teacher); default ml1m-student.yaml",
    )
    add_teacher_arguments(parser)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a student config field (model.embedding_dim=16, distill.alpha=0.2, ...)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-distillation")
    parser.add_argument(
        "--repo",
        type=Path,
        help="repository the student is published into (default: the "
        "teacher's, or <out>/repo for a run teacher)",
    )
    parser.add_argument("--student-name", help="student model name (default: the config's name)")
    parser.add_argument(
        "--student-version", help="measure this published student instead of training one"
    )
    parser.add_argument("--features", type=Path, help="features.tsv (default: the student run's)")
    parser.add_argument("--candidates", type=int, default=500, help="candidates per request")
    parser.add_argument("--requests", type=int, default=200, help="distinct real-user requests")
    parser.add_argument("--runs", type=int, default=3000, help="timed runs per model")
    parser.add_argument("--block", type=int, default=50, help="runs per model before switching")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="request sampling seed")
    parser.add_argument("--quiet", action="store_true", help="no training progress bars")
    return parser.parse_args(argv)


def publish_teacher_if_run(teacher_ref, out: Path, say) -> tuple[Path, str, str]:
    """(repo, name, version) of the teacher as a published version (a run is exported first)."""
    from export.exporter import ExportOptions, export_run

    if teacher_ref.repository:
        from services.common.model_repository import ModelRepository

        repo = Path(teacher_ref.repository)
        version = teacher_ref.version or ModelRepository(repo).latest(teacher_ref.model)
        if version is None:
            raise SystemExit(f"{repo}/{teacher_ref.model}: no published version")
        return repo, teacher_ref.model, version
    repo = out / "repo"
    say(f"== exporting the teacher run {teacher_ref.run} into {repo} (timed as ONNX)")
    version_dir = export_run(ExportOptions(Path(teacher_ref.run), repo), log=say)
    return repo, version_dir.parent.name, version_dir.name


def evaluate(model, split) -> dict[str, dict[str, dict[str, float]]]:
    """NDCG@10 and the other metrics per split and user group (full ranking, ONNX graph)."""
    from trainer.distillation.teacher import evaluate_scoring_model

    return {
        name: {
            group: evaluate_scoring_model(model, sets[group], split.target_popularity)
            for group in GROUPS
        }
        for name, sets in (("valid", split.valid), ("test", split.test))
    }


def floor_graph(path: Path) -> Path:
    """A graph with the models' five inputs whose output is the candidates cast to FP32: the
    fixed cost of one ``session.run`` (Python call, input binding, output copy) that no model,
    however small, goes below. Timed with the two models, it says how much of a ratio is
    that floor rather than model compute."""
    import onnx
    from onnx import TensorProto, helper

    def dynamic(name: str, dtype: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, ["batch", name + "_len"])

    inputs = [
        dynamic("src_items", TensorProto.INT64),
        dynamic("src_mask", TensorProto.FLOAT),
        dynamic("tgt_items", TensorProto.INT64),
        dynamic("tgt_mask", TensorProto.FLOAT),
        helper.make_tensor_value_info("candidates", TensorProto.INT64, ["batch", "candidates"]),
    ]
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "candidates"])
    node = helper.make_node("Cast", ["candidates"], ["scores"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "floor", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # opset 17's IR version: what every ONNX Runtime of the pins loads
    onnx.save(model, str(path))
    return path


def time_models(sessions: dict, workloads: dict, runs: int, block: int) -> dict[str, dict]:
    """Per-request ONNX Runtime time (ms) of each model, interleaved in blocks: the same request
    list in the same order, so drift of a shared machine hits both alike."""
    names = list(sessions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up, not timed
        for feeds in workloads[name][:20]:
            sessions[name].run(None, feeds)
    position = 0
    while len(times[names[0]]) < runs:
        count = min(block, runs - len(times[names[0]]))
        for name in names:
            requests = workloads[name]
            for i in range(count):
                feeds = requests[(position + i) % len(requests)]
                started = time.perf_counter()
                sessions[name].run(None, feeds)
                times[name].append((time.perf_counter() - started) * 1e3)
        position += count
    out = {}
    for name in names:
        ordered = sorted(times[name])
        out[name] = {
            "runs": len(ordered),
            "median_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99),
            "mean_ms": float(np.mean(ordered)),
        }
    return out


def ratios(quality: dict, timing: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"ndcg@10": {}}
    for split_name in SPLITS:
        for group in GROUPS:
            t = quality["teacher"][split_name][group]["ndcg@10"]
            s = quality["student"][split_name][group]["ndcg@10"]
            out["ndcg@10"][f"{split_name}_{group}"] = s / t if t else float("nan")
    out["median_time"] = timing["student"]["median_ms"] / timing["teacher"]["median_ms"]
    floor = timing["floor"]["median_ms"]
    # The same ratio with the fixed cost of a run (the floor graph) taken off both: model compute.
    out["median_time_above_floor"] = (timing["student"]["median_ms"] - floor) / max(
        timing["teacher"]["median_ms"] - floor, 1e-9
    )
    out["p99_time"] = timing["student"]["p99_ms"] / timing["teacher"]["p99_ms"]
    test = [out["ndcg@10"][f"test_{g}"] for g in GROUPS]
    out["quality_target_met"] = bool(min(test) >= QUALITY_TARGET)
    out["time_target_met"] = bool(out["median_time"] <= TIME_TARGET)
    return out


def markdown(result: dict) -> str:
    q, t, r = result["quality"], result["timing"], result["ratios"]
    lines = [
        f"Teacher: {result['teacher']['label']}; student: {result['student']['label']} "
        f"(distilled, T={result['distill']['temperature']}, alpha={result['distill']['alpha']}).",
        "",
        "| model | valid warm | valid cold | test warm | test cold | ORT median ms | ORT p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("teacher", "student"):
        cells = [f"{q[name][s][g]['ndcg@10']:.4f}" for s in SPLITS for g in GROUPS]
        cells += [f"{t[name]['median_ms']:.3f}", f"{t[name]['p99_ms']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{r['ndcg@10'][f'{s}_{g}']:.1%}" for s in SPLITS for g in GROUPS]
    cells += [f"{r['median_time']:.1%}", f"{r['p99_time']:.1%}"]
    lines.append("| student / teacher | " + " | ".join(cells) + " |")
    floor = t["floor"]
    lines.append(
        "| floor (a Cast-only graph, same inputs) | | | | | "
        f"{floor['median_ms']:.3f} | {floor['p99_ms']:.3f} |"
    )
    w = result["workload"]
    lines += [
        "",
        f"NDCG@10, full ranking of unseen target items (ONNX graphs). Time: in-process ONNX "
        f"Runtime, CPU EP, {w['intra_op_threads']} intra-op thread, batch 1 x "
        f"{w['candidates_per_request']} candidates, {w['requests']} real users "
        f"({w['user_kinds']}), {t['teacher']['runs']} runs per model interleaved in blocks of "
        f"{w['block']}. The floor row is the fixed cost of one run that no graph goes below; "
        f"above it the student takes {r['median_time_above_floor']:.1%} of the teacher's "
        "median time. Graph sizes: "
        f"teacher {result['teacher']['graph_bytes'] / 1e6:.2f} MB, "
        f"student {result['student']['graph_bytes'] / 1e6:.2f} MB.",
        "",
        f"- quality target (student >= {QUALITY_TARGET:.0%} of teacher NDCG@10, test warm and "
        f"cold): {'met' if r['quality_target_met'] else 'missed'}",
        f"- time target (student <= {TIME_TARGET:.0%} of teacher's median time per request): "
        f"{'met' if r['time_target_met'] else 'missed'}",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{s} {g}" for s in SPLITS for g in GROUPS]
    x = np.arange(len(labels))
    for offset, name in ((-0.2, "teacher"), (0.2, "student")):
        values = [result["quality"][name][s][g]["ndcg@10"] for s in SPLITS for g in GROUPS]
        quality_ax.bar(x + offset, values, 0.4, label=name)
    quality_ax.set_xticks(x, labels)
    quality_ax.set_ylabel("NDCG@10")
    quality_ax.set_title("Quality")
    quality_ax.legend()
    names = ["teacher", "student", "floor"]
    for offset, stat in ((-0.2, "median_ms"), (0.2, "p99_ms")):
        time_ax.bar(
            np.arange(3) + offset, [result["timing"][n][stat] for n in names], 0.4, label=stat
        )
    time_ax.set_xticks(np.arange(3), names)
    time_ax.set_yscale("log")
    time_ax.set_ylabel(
        f"ms per request (1 user x {result['workload']['candidates_per_request']} candidates)"
    )
    time_ax.set_title("ONNX Runtime time per request (CPU, 1 thread)")
    time_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None, say=print) -> dict:
    args = parse_args(argv)
    from export.exporter import ExportOptions, export_run
    from trainer.data import load_dataset
    from trainer.distillation.config import (
        DistillConfig,
        apply_student_overrides,
        build_student_experiment,
        read_student_config,
    )
    from trainer.distillation.runner import run_distillation
    from trainer.distillation.teacher import PublishedTeacher
    from trainer.splits import split_dataset

    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    raw = apply_student_overrides(
        read_student_config(args.config), [*args.overrides, *teacher_overrides(args)]
    )
    settings = DistillConfig.from_dict(raw.get("distill") or {})
    settings.check()
    teacher_repo, teacher_name, teacher_version = publish_teacher_if_run(settings.teacher, out, say)
    teacher = PublishedTeacher(teacher_repo, teacher_name, teacher_version)
    student_cfg = build_student_experiment(raw, teacher.config)
    config = student_cfg.experiment
    repo = args.repo or teacher_repo
    student_name = args.student_name or config.name
    split = split_dataset(load_dataset(config.data), config.data, config.split)
    features = args.features
    if args.student_version:
        student_version = args.student_version
        if features is None:
            raise SystemExit("--student-version needs --features (the run's features.tsv)")
    else:
        run_dir = out / "student-run"
        say(f"== distilling {teacher.identity.label} into {student_name} ({run_dir})")
        run_distillation(student_cfg, teacher, run_dir, not args.quiet, split, say=say)
        version_dir = export_run(ExportOptions(run_dir, repo, student_name), log=say)
        student_version = version_dir.name
        features = features or run_dir / "features.tsv"
    student = PublishedTeacher(repo, student_name, student_version)
    if student.identity.model_sha256 == teacher.identity.model_sha256:
        raise SystemExit("the student and the teacher are the same graph")
    floor_session = ort_session(floor_graph(out / "floor.onnx"), args.intra_op_threads)
    say("== scoring both ONNX graphs on validation and test users")
    quality = {"teacher": evaluate(teacher, split), "student": evaluate(student, split)}
    say("== timing in-process ONNX Runtime, both models interleaved")
    workloads, sessions, described = {}, {}, {}
    for name, model in (("teacher", teacher), ("student", student)):
        work = build_workload(
            model.version.path.parent.parent,
            model.version.name,
            features,
            users=args.requests,
            candidates=args.candidates,
            seed=args.seed,
        )
        workloads[name] = work.inputs
        described[name] = work.describe()
        sessions[name] = ort_session(model.version.model_path, args.intra_op_threads)
    if described["teacher"]["requests"] != described["student"]["requests"]:
        raise SystemExit("teacher and student workloads differ in size")
    sessions["floor"] = floor_session
    workloads["floor"] = workloads["student"]
    timing = time_models(sessions, workloads, args.runs, args.block)
    result: dict[str, Any] = {
        "title": "Distillation: teacher vs student",
        "teacher": {
            **teacher.identity.to_dict(),
            "label": teacher.identity.label,
            "graph_bytes": teacher.version.model_path.stat().st_size,
        },
        "student": {
            **student.identity.to_dict(),
            "label": student.identity.label,
            "graph_bytes": student.version.model_path.stat().st_size,
            "manifest_teacher": (
                student.version.manifest.teacher.to_dict()
                if student.version.manifest.teacher
                else None
            ),
            "model_config": config.to_dict()["model"],
        },
        "distill": student_cfg.distill.to_dict(),
        "quality": quality,
        "timing": timing,
        "workload": {
            **described["teacher"],
            "student_history_windows": [
                student.max_source_history,
                student.max_target_history,
            ],
            "intra_op_threads": args.intra_op_threads,
            "block": args.block,
            "seed": args.seed,
        },
        "split": split.stats(),
        "machine": machine_info(),
        "seconds": time.perf_counter() - started,
        "command": " ".join(sys.argv),
    }
    result["ratios"] = ratios(quality, timing)
    (out / "distillation.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    (out / "distillation.md").write_text(markdown(result))
    plot(result, out / "distillation.png")
    say("")
    say(markdown(result))
    say(f"wrote {out}/distillation.{{json,md,png}} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
