"""Training run -> checked ONNX graph -> new version in the model repository."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from export.onnx_export import DEFAULT_OPSET, export_onnx
from export.parity import ParityError, build_cases, check_parity, load_histories
from export.variants import VARIANTS, make_variant, measure_drift
from services.common.model_repository.manifest import (
    ExporterInfo,
    FeatureSpec,
    Manifest,
    TeacherInfo,
    TensorSpec,
    utc_timestamp,
)
from services.common.model_repository.publish import VersionFile, publish_version
from trainer.config import ExperimentConfig
from trainer.models import CrossDomainModel
from trainer.run_artifacts import load_run_model

EXPORTER_VERSION = "0.1.0"
ONNX_TO_V2 = {
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.BOOL: "BOOL",
}
RUN_FILES = ("vocab_source.json", "vocab_target.json", "catalog.json")


@dataclass
class ExportOptions:
    """What ``xdrec export`` does; defaults give an FP32 graph checked to 1e-4."""

    run_dir: Path
    repo_root: Path
    model_name: str | None = None  # default: the experiment name
    opset: int = DEFAULT_OPSET
    tolerance: float = 1e-4
    parity_users: int = 64
    variant: str = "fp32"  # fp32 | fp16 (GPU) | int8 (CPU, dynamic quantisation)


def load_model(run_dir: Path) -> tuple[CrossDomainModel, dict]:
    """The run's model and checkpoint (``trainer.run_artifacts.load_run_model``)."""
    return load_run_model(run_dir)


def signature(onnx_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs as manifest tensor specs (-1 for symbolic axes)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(name=value.name, dtype=ONNX_TO_V2[tensor.elem_type], shape=shape)

    initializers = {i.name for i in graph.initializer}
    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in graph.output)


def build_manifest(
    options: ExportOptions,
    config: ExperimentConfig,
    checkpoint: dict,
    signature_: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]],
    parity: dict,
    drift: dict | None,
) -> Manifest:
    """The manifest of the version being exported (name, version and files are filled in by
    ``publish_version``)."""
    inputs, outputs = signature_
    serving = None
    if options.variant == "int8":
        # Dynamic quantisation scales activations per run (min/max over the whole tensor),
        # so a request's scores would depend on what it is batched with: run it alone.
        serving = {"batching": {"batching": False}}
    training = {
        "dataset": config.data.dataset,
        "data_fingerprint": checkpoint["data_fingerprint"],
        "strategy": checkpoint["strategy"],
        "seed": checkpoint["seed"],
        "best_epoch": checkpoint["best_epoch"],
        "config": checkpoint["config"],
    }
    teacher = None
    if checkpoint.get("teacher"):  # a distilled student (trainer/distillation): who taught it
        teacher = TeacherInfo(**checkpoint["teacher"])
        training["distillation"] = checkpoint.get("distillation", {})
    return Manifest(
        created_at=utc_timestamp(),
        inputs=inputs,
        outputs=outputs,
        features=FeatureSpec(
            max_source_history=config.model.max_source_history,
            max_target_history=config.model.max_target_history,
        ),
        training=training,
        metrics=checkpoint["metrics"],
        exporter=ExporterInfo(
            name="xdrec-export",
            version=EXPORTER_VERSION,
            opset=options.opset,
            variant=options.variant,
            tools={
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
        ),
        parity=parity,
        drift=drift,
        serving=serving,
        teacher=teacher,
    )


def export_run(options: ExportOptions, log=print) -> Path:
    if options.variant not in VARIANTS:
        raise ValueError(f"unknown variant '{options.variant}' (choose from {', '.join(VARIANTS)})")
    started = time.perf_counter()
    model, checkpoint = load_model(options.run_dir)
    config = ExperimentConfig.from_dict(checkpoint["config"])
    name = options.model_name or config.name
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        log(
            f"[export] tracing {checkpoint['model_class']} ({checkpoint['strategy']}, seed {checkpoint['seed']}) to ONNX opset {options.opset}"
        )
        export_onnx(model, onnx_path, options.opset)
        vocab_source = json.loads((options.run_dir / "vocab_source.json").read_text())
        vocab_target = json.loads((options.run_dir / "vocab_target.json").read_text())
        histories = load_histories(
            options.run_dir / "features.tsv", vocab_source, vocab_target, options.parity_users
        )
        cases = build_cases(
            histories,
            len(vocab_target),
            config.model.max_source_history,
            config.model.max_target_history,
        )
        log(f"[export] parity check on {len(cases)} batches of real users against PyTorch")
        report = check_parity(model, onnx_path, cases, options.tolerance)
        log(
            f"[export] max |torch - onnx| = {report.max_abs_diff:.3e} (tolerance {options.tolerance:.0e}), top-10 agreement {report.top10_agreement:.3f}"
        )
        if not report.passed:
            raise ParityError(
                f"ONNX graph differs from PyTorch by {report.max_abs_diff:.3e} > tolerance {options.tolerance:.0e}; not published"
            )
        inputs, outputs = signature(onnx_path)
        drift = None
        published = onnx_path
        if options.variant != "fp32":
            published = make_variant(options.variant, onnx_path, Path(tmp) / "variant.onnx")
            if signature(published) != (inputs, outputs):
                raise ValueError(f"the {options.variant} graph changed the model signature")
            drift = measure_drift(onnx_path, published, cases)
            log(
                f"[export] {options.variant} vs fp32 on {drift.rows} real-user rows: max |diff| = "
                f"{drift.max_abs_diff:.3e}, mean {drift.mean_abs_diff:.3e}, "
                f"overlap@10 {drift.overlap_at_10:.3f}"
            )
        manifest = build_manifest(
            options,
            config,
            checkpoint,
            (inputs, outputs),
            report.to_dict(),
            drift.to_dict() if drift is not None else None,
        )
        files = [
            VersionFile("model", "model.onnx", published),
            *(VersionFile(Path(f).stem, f, options.run_dir / f) for f in RUN_FILES),
        ]
        version_dir = publish_version(options.repo_root, name, manifest, files)
    log(
        f"[export] published {name} version {version_dir.name} at {version_dir} in {time.perf_counter() - started:.1f}s"
    )
    return version_dir
