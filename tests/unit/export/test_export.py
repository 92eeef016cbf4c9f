"""Train a tiny run, export it, and check parity, manifest and atomic publishing."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.exporter import ExportOptions, export_run, load_model
from export.parity import ParityError
from services.common.model_repository.hashing import sha256_file
from services.common.model_repository.manifest import Manifest, TensorSpec
from services.common.model_repository.publish import existing_versions, publish_version
from tests.conftest import tiny_config
from trainer.experiment import run_experiment


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_experiment(tiny_config(), out, show_progress=False)
    return out


def test_export_publishes_a_checked_version(tiny_run, tmp_path):
    repo = tmp_path / "repo"
    version_dir = export_run(ExportOptions(tiny_run, repo), log=lambda *_: None)
    assert version_dir == repo / "tiny" / "1"
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["version"] == "1" and manifest["name"] == "tiny"
    assert [i["name"] for i in manifest["inputs"]] == [
        "src_items",
        "src_mask",
        "tgt_items",
        "tgt_mask",
        "candidates",
    ]
    assert all(i["shape"] == [-1, -1] for i in manifest["inputs"] + manifest["outputs"])
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] < 1e-4
    assert manifest["training"]["data_fingerprint"] and manifest["exporter"]["opset"] == 17
    for entry in manifest["files"].values():
        assert sha256_file(version_dir / entry["path"]) == entry["sha256"]
    # Next export gets the next number; nothing half-written is left behind.
    export_run(ExportOptions(tiny_run, repo), log=lambda *_: None)
    assert existing_versions(repo / "tiny") == [1, 2]
    assert [p.name for p in (repo / "tiny").iterdir() if p.name.startswith(".")] == []


def test_onnx_matches_pytorch_on_ragged_batches(tiny_run, tmp_path):
    version_dir = export_run(ExportOptions(tiny_run, tmp_path), log=lambda *_: None)
    model, _ = load_model(tiny_run)
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    n_src, n_tgt = model.source_embeddings.num_items, model.target_output.num_items
    for batch, ls, lt, c in ((1, 1, 1, 1), (3, 17, 2, 250), (9, 5, 40, 7)):
        feeds = {
            "src_items": rng.integers(0, n_src, (batch, ls)),
            "src_mask": (rng.random((batch, ls)) > 0.3).astype(np.float32),
            "tgt_items": rng.integers(0, n_tgt, (batch, lt)),
            "tgt_mask": (rng.random((batch, lt)) > 0.3).astype(np.float32),
            "candidates": rng.integers(1, n_tgt, (batch, c)),
        }
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        actual = session.run(None, feeds)[0]
        assert actual.shape == (batch, c)
        np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_parity_failure_publishes_nothing(tiny_run, tmp_path):
    with pytest.raises(ParityError, match="not published"):
        export_run(ExportOptions(tiny_run, tmp_path, tolerance=0.0), log=lambda *_: None)
    assert not (tmp_path / "tiny").exists() or existing_versions(tmp_path / "tiny") == []


SPEC = (TensorSpec("x", "FP32", (-1,)),)


def test_publish_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="invalid model name"):
        publish_version(tmp_path, "../evil", Manifest(inputs=SPEC, outputs=SPEC), [])


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_variants_are_published_with_their_drift_and_load_in_the_scorer(
    tiny_run, tmp_path, variant
):
    from services.common.model_repository import ModelRepository
    from services.scorer.config import ScorerConfig
    from services.scorer.warmup import load_version

    repo = tmp_path / "repo"
    reference = export_run(ExportOptions(tiny_run, repo), log=lambda *_: None)
    version_dir = export_run(ExportOptions(tiny_run, repo, variant=variant), log=lambda *_: None)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["exporter"]["variant"] == variant and version_dir.name == "2"
    drift = manifest["drift"]
    assert drift["reference"] == "fp32" and drift["rows"] > 0
    assert 0 <= drift["max_abs_diff"] < 0.5 and drift["overlap_at_10"] >= 0.8
    # same signature as FP32: int64 indices, FP32 masks and scores
    assert manifest["inputs"] == json.loads((reference / "manifest.json").read_text())["inputs"]
    config = ScorerConfig(providers="cpu", intra_op_threads=1, warmup_runs=1, max_batch_size=4)
    model = load_version(ModelRepository(repo).open("tiny", "2"), config)
    assert model.variant == variant
    # dynamic INT8 quantisation is not batch-invariant: its manifest turns batching off
    assert model.policy.enabled == (variant != "int8")
