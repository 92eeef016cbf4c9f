"""Every strategy trains on a tiny configuration, exports, and its ONNX graph matches PyTorch."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.exporter import ExportOptions, export_run, load_model
from tests.conftest import tiny_config
from trainer.experiment import run_experiment
from trainer.models import FusedModel


def two_user_feeds() -> dict[str, np.ndarray]:
    """A warm user (both histories) and a cold one (source only, padded) with 4 candidates."""
    return {
        "src_items": np.array([[3, 5, 8], [2, 9, 0]]),
        "src_mask": np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32),
        "tgt_items": np.array([[4, 6], [0, 0]]),
        "tgt_mask": np.array([[1, 1], [0, 0]], dtype=np.float32),
        "candidates": np.array([[1, 2, 3, 10], [7, 1, 2, 3]]),
    }


@pytest.mark.parametrize(
    ("strategy", "text_fusion", "score_fusion"),
    [
        ("joint", False, False),
        ("emcdr", False, False),
        ("ptupcdr", False, False),
        ("pretrain_finetune", True, False),
        ("pretrain_finetune", False, True),
    ],
)
def test_strategy_exports_with_parity(strategy, text_fusion, score_fusion, ml100k_split, tmp_path):
    config = tiny_config(strategy=strategy)
    config.model.text_fusion = text_fusion
    config.fusion.enabled = score_fusion
    run_experiment(config, tmp_path / "run", show_progress=False, split=ml100k_split)
    version = export_run(ExportOptions(tmp_path / "run", tmp_path / "repo"), log=lambda *_: None)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["training"]["strategy"] == strategy
    assert manifest["parity"]["passed"]

    # Independent check on a warm and a cold-start row in one batch: the graph takes either path.
    model, checkpoint = load_model(tmp_path / "run")
    if score_fusion:  # the blend (trainer/fusion.py) helps this tiny model: it is what ships
        assert isinstance(model, FusedModel) and checkpoint["fusion"]["helps"]
        results = json.loads((tmp_path / "run/results.json").read_text())
        fused = results["strategies"]["pretrain_finetune + fusion"]
        assert manifest["metrics"]["test"] == fused["test"][0]  # the served figures are the blend's
        assert results["fusion"]["fits"]["0"]["helps"]
        # the graph does its item-KNN by scatter-add, not a dense items x items matrix
        ops = {n.op_type for n in __import__("onnx").load(str(version / "model.onnx")).graph.node}
        assert "ScatterElements" in ops
        # and its fp16 variant (GPU) keeps that op in float32: it loads and runs on the CPU too
        fp16 = export_run(
            ExportOptions(tmp_path / "run", tmp_path / "repo", variant="fp16"), log=lambda *_: None
        )
        assert json.loads((fp16 / "manifest.json").read_text())["drift"]["overlap_at_10"] > 0.9
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = two_user_feeds()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-5)
    if text_fusion:  # the title vectors travel inside the graph
        names = {
            init.name
            for init in __import__("onnx").load(str(version / "model.onnx")).graph.initializer
        }
        assert any("text" in name for name in names)


def test_history_tower_with_time_consistent_recency_exports_with_parity(ml100k_split, tmp_path):
    """Trained with recent popularity read at each example's moment, the exported graph keeps
    the five-input signature and holds the vector at the test cutoff as a constant."""
    from trainer.item_features import recent_popularity

    config = tiny_config(strategy="pretrain_finetune", objective="future", recency_half_life=0.2)
    config.model.recent_popularity_window = 0.1
    run_experiment(config, tmp_path / "run", show_progress=False, split=ml100k_split)
    version = export_run(ExportOptions(tmp_path / "run", tmp_path / "repo"), log=lambda *_: None)
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["parity"]["passed"]
    assert [i["name"] for i in manifest["inputs"]] == [
        "src_items",
        "src_mask",
        "tgt_items",
        "tgt_mask",
        "candidates",
    ]
    model, _ = load_model(tmp_path / "run")
    expected_recent = recent_popularity(ml100k_split, 0.1, "test")
    np.testing.assert_allclose(model.target_recent.numpy(), expected_recent)
    assert float(model.recent_weight.detach()) != 1.0  # the weight was trained
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = two_user_feeds()
    with torch.no_grad():
        expected = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        model.target_recent.zero_()  # the recency term is part of the served score
        without = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-5)
    assert np.abs(expected - without).max() > 1e-3
