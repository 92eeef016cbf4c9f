"""Precomputed item vectors: the three layouts, every validation error naming file and fix, the
coverage report, and a tiny train + export whose ONNX graph carries the vectors (parity passes)."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from export.exporter import ExportOptions, export_run, load_model
from tests.conftest import tiny_config
from tests.unit.trainer.generic_logs import generic_config, write_csv
from tests.unit.trainer.test_multisource import three_domain_rows
from trainer.config import DataConfig, ExperimentConfig
from trainer.config_checks import config_problems
from trainer.data import load_dataset
from trainer.experiment import run_experiment
from trainer.item_vectors import ItemVectorError, align, content_for_split, load_item_vectors
from trainer.splits import split_dataset
from trainer.training import Trainer

IDS = [f"{p}{i}" for p in "bmt" for i in range(9)]


def vectors_npz(tmp_path, ids=IDS, dim: int = 8, seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    path = tmp_path / "vectors.npz"
    np.savez(path, ids=np.array(ids), vectors=vectors)
    return path, vectors


def test_npz_npy_and_parquet_column_load_the_same_vectors(tmp_path):
    path, vectors = vectors_npz(tmp_path)
    from_npz = load_item_vectors(DataConfig(item_vectors=str(path)))
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.json").write_text(json.dumps(IDS))
    (tmp_path / "ids.txt").write_text("\n".join(IDS) + "\n")
    for ids_file in ("ids.json", "ids.txt"):
        from_npy = load_item_vectors(
            DataConfig(
                item_vectors=str(tmp_path / "v.npy"), item_vectors_ids=str(tmp_path / ids_file)
            )
        )
        assert from_npy.ids == from_npz.ids
        np.testing.assert_array_equal(from_npy.vectors, from_npz.vectors)
    rows = [v.tolist() for v in vectors]
    rows[3] = None  # an item of the table without a vector
    pq.write_table(
        pa.table({"item_id": IDS, "title": IDS, "embedding": rows}), tmp_path / "items.parquet"
    )
    from_column = load_item_vectors(
        DataConfig(items_path=str(tmp_path / "items.parquet"), item_vectors_column="embedding")
    )
    assert from_column.ids == IDS[:3] + IDS[4:] and from_column.dim == 8
    np.testing.assert_allclose(from_column.vectors[3], vectors[4])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: np.savez(p / "v.npz", keys=np.array(["a"])),
            r"needs arrays 'ids' and 'vectors'",
        ),
        (lambda p: np.save(p / "v.npy", np.zeros((2, 3))), r"set data.item_vectors_ids"),
        (
            lambda p: np.savez(p / "v.npz", ids=np.array(["a", "b"]), vectors=np.zeros(2)),
            r"2-D array \[items, dim\]; got shape \(2,\)",
        ),
        (
            lambda p: np.savez(p / "v.npz", ids=np.array(["a", "b"]), vectors=np.zeros((3, 4))),
            r"3 vectors but 2 ids",
        ),
        (
            lambda p: np.savez(
                p / "v.npz",
                ids=np.array(["a", "b", "c"]),
                vectors=np.array([[0.0, 1.0], [np.nan, 0.0], [np.inf, 1.0]]),
            ),
            r"2 vector\(s\) contain NaN or Inf \(e.g. items \['b', 'c'\]\)",
        ),
        (
            lambda p: np.savez(p / "v.npz", ids=np.array(["a", "a"]), vectors=np.zeros((2, 2))),
            r"have more than one vector \(e.g. \['a'\]\)",
        ),
    ],
)
def test_bad_vector_files_fail_naming_the_file_and_the_fix(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(ItemVectorError, match=message) as error:
        load_item_vectors(DataConfig(item_vectors=str(path)))
    assert str(path) in str(error.value)


def test_list_column_with_mixed_dimensions_or_in_a_csv_is_refused(tmp_path):
    pq.write_table(
        pa.table({"item_id": ["a", "b"], "emb": [[1.0, 2.0], [1.0, 2.0, 3.0]]}),
        tmp_path / "items.parquet",
    )
    data = DataConfig(items_path=str(tmp_path / "items.parquet"), item_vectors_column="emb")
    with pytest.raises(ItemVectorError, match=r"item 'a' has 2 values, item 'b' has 3"):
        load_item_vectors(data)
    data.item_vectors_column = "image"
    with pytest.raises(ItemVectorError, match=r"needs columns 'item_id' and 'image'"):
        load_item_vectors(data)
    write_csv(tmp_path / "items.csv", [{"item_id": "a", "emb": "[1, 2]"}])
    data.items_path = str(tmp_path / "items.csv")
    with pytest.raises(ItemVectorError, match="CSV has no list type"):
        load_item_vectors(data)


def test_alignment_counts_unknown_and_missing_items(tmp_path):
    path, vectors = vectors_npz(tmp_path, ids=["b1", "b2", "t1", "nobody", "ghost"])
    source_ids, target_ids = ["<pad>", "b1", "b2", "b3"], ["<pad>", "t1", "t2"]
    source, target, report = content_for_split(
        DataConfig(item_vectors=str(path)), source_ids, target_ids
    )
    assert source.missing.tolist() == [False, False, False, True]  # padding is not "missing"
    np.testing.assert_array_equal(source.vectors[2], vectors[1])
    assert not source.vectors[3].any() and not source.vectors[0].any()
    assert report.coverage == {
        "source": {"covered": 2, "missing": 1},
        "target": {"covered": 1, "missing": 1},
    }
    assert report.unknown_ids == 2 and report.unknown_examples == ["nobody", "ghost"]
    assert any("WARNING: 2 id(s)" in line for line in report.lines())
    namespaced = align(
        load_item_vectors(DataConfig(item_vectors=str(path))), ["<pad>", "target:t1"]
    )
    assert not namespaced.missing[1]  # ids renamed by data.item_id_collisions=namespace
    path, _ = vectors_npz(tmp_path, ids=["x", "y"])
    with pytest.raises(ItemVectorError, match="none of the 2 ids matches an item"):
        content_for_split(DataConfig(item_vectors=str(path)), source_ids, target_ids)


def test_content_fusion_without_vectors_is_a_config_problem(tmp_path):
    config = ExperimentConfig.from_dict({"model": {"content_fusion": True}})
    assert any("no item vectors are configured" in p for p in config_problems(config))
    config.data.item_vectors = str(tmp_path / "absent.npz")
    assert any("absent.npz': no such file" in p for p in config_problems(config))


@pytest.mark.parametrize("strategy", ["pretrain_finetune", "emcdr"])
def test_train_and_export_with_item_vectors_and_two_sources(strategy, tmp_path):
    """Two named sources with a domain embedding plus item vectors (one target item without a
    vector, one unknown id): trains, exports, passes parity, and the graph carries the vectors."""
    ids = [i for i in IDS if i != "t8"] + ["unknown-item"]
    path, _ = vectors_npz(tmp_path, ids=ids)
    log = write_csv(tmp_path / "log.csv", three_domain_rows())
    config = generic_config(
        log,
        source_domains=["books", "music"],
        target_domain="movies",
        item_vectors=str(path),
    )
    config.data.__post_init__()
    tiny = tiny_config(strategy=strategy, epochs=2, pretrain_epochs=1)
    config.model, config.train, config.baselines = tiny.model, tiny.train, tiny.baselines
    config.train.bridge_epochs = 1
    config.model.content_fusion = True
    config.model.source_domain_embedding = True
    run_experiment(config, tmp_path / "run", show_progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["dataset"]["item_vectors"]["coverage"]["target"] == {"covered": 8, "missing": 1}
    assert results["dataset"]["item_vectors"]["unknown_ids"] == 1
    assert (
        "1 without (they get a learned 'missing' vector)"
        in (tmp_path / "run" / "results.md").read_text()
    )
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
    names = {init.name for init in onnx.load(str(version / "model.onnx")).graph.initializer}
    assert any("content" in n for n in names)  # (the domain table is folded into a constant)

    model, _ = load_model(tmp_path / "run")
    vocab = json.loads((tmp_path / "run" / "vocab_target.json").read_text())
    table = model.target_output if strategy != "emcdr" else model.target_model.target_output
    assert table.content_missing[vocab.index("t8"), 0] == 1.0
    assert table.content_missing[vocab.index("t1"), 0] == 0.0
    feeds = {
        "src_items": np.array([[1, 2, 3], [4, 5, 0]]),
        "src_mask": np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32),
        "tgt_items": np.array([[1, 2], [0, 0]]),
        "tgt_mask": np.array([[1, 1], [0, 0]], dtype=np.float32),
        "candidates": np.array([[1, 2, 3, 4], [5, 6, 7, 8]]),
    }
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(*(torch.from_numpy(v) for v in feeds.values()))
    np.testing.assert_allclose(session.run(None, feeds)[0], expected.numpy(), atol=1e-5)
    # The vectors are really fused: other vectors give other scores.
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "content"):
                module.content.mul_(-1.0)
        changed = model(*(torch.from_numpy(v) for v in feeds.values()))
    assert not torch.allclose(changed, expected)
    with torch.no_grad():  # and so is the source domain of each item
        for module in model.modules():
            if hasattr(module, "item_domain"):
                module.item_domain.copy_(torch.where(module.item_domain == 1, 2, 1))
                module.item_domain[0] = 0
        swapped = model(*(torch.from_numpy(v) for v in feeds.values()))
    assert not torch.allclose(swapped, changed)


def test_content_fusion_of_title_vectors_equals_text_fusion(tmp_path):
    """The same vectors fused as "content" or as "text" give the same model: one mechanism."""
    log = write_csv(tmp_path / "log.csv", three_domain_rows())
    items = write_csv(
        tmp_path / "items.csv", [{"item_id": i, "title": f"Item number {i}"} for i in IDS]
    )
    config = generic_config(log, items, source_domains=["books", "music"], target_domain="movies")
    config.data.__post_init__()
    config.model = tiny_config().model
    split = split_dataset(load_dataset(config.data), config.data, config.split)
    config.model.text_fusion = True
    text_trainer = Trainer(config, split, show_progress=False)
    source, target = (t.numpy() for t in text_trainer.text)
    np.savez(
        tmp_path / "titles.npz",
        ids=np.array(split.source_vocab.ids[1:] + split.target_vocab.ids[1:]),
        vectors=np.concatenate([source[1:], target[1:]]),
    )
    content = copy.deepcopy(config)
    content.model.text_fusion, content.model.content_fusion = False, True
    content.data.item_vectors = str(tmp_path / "titles.npz")
    content_trainer = Trainer(content, split, show_progress=False)
    assert content_trainer.content_report.coverage["target"] == {"covered": 9, "missing": 0}
    torch.manual_seed(0)
    with_text = text_trainer.new_model().eval()
    torch.manual_seed(0)
    with_content = content_trainer.new_model().eval()
    inputs = (
        torch.tensor([[1, 2, 3], [4, 5, 0]]),
        torch.tensor([[1.0, 1, 1], [1, 1, 0]]),
        torch.tensor([[1, 2], [0, 0]]),
        torch.tensor([[1.0, 1], [0, 0]]),
        torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]),
    )
    with torch.no_grad():
        torch.testing.assert_close(with_content(*inputs), with_text(*inputs))
