"""Scorer pieces without gRPC: providers, signature validation, sessions, the model manager."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.model_repository import ModelRepository
from services.common.tensors import dtype_code
from services.scorer import providers
from services.scorer.config import ScorerConfig
from services.scorer.manager import ModelManager
from services.scorer.session import SignatureMismatch, create_session, warmup_inputs
from services.scorer.signature import RawTensor, decode_inputs, select_outputs
from services.scorer.warmup import load_version
from tests.fixtures.model_repo import BuiltRepo, build_model_repo, reference_scores

CONFIG = ScorerConfig(providers="cpu", intra_op_threads=1, warmup_runs=1)


def raw(name: str, array: np.ndarray) -> RawTensor:
    return RawTensor(name, dtype_code(array.dtype), tuple(array.shape), array.tobytes())


def good_inputs(c: int = 3) -> dict[str, np.ndarray]:
    return {
        "src_items": np.array([[1, 2]], dtype=np.int64),
        "src_mask": np.ones((1, 2), dtype=np.float32),
        "tgt_items": np.array([[0]], dtype=np.int64),
        "tgt_mask": np.zeros((1, 1), dtype=np.float32),
        "candidates": np.arange(1, c + 1, dtype=np.int64).reshape(1, c),
    }


@pytest.fixture(scope="module")
def model(repo: BuiltRepo):
    return load_version(ModelRepository(repo.root).open(repo.name), CONFIG)


def test_parse_providers() -> None:
    assert providers.parse_providers("auto") == [providers.CUDA, providers.CPU]
    assert providers.parse_providers("TensorRT, cuda,cpu") == [
        providers.TENSORRT,
        providers.CUDA,
        providers.CPU,
    ]
    with pytest.raises(ValueError, match="unknown execution provider 'gpu'"):
        providers.parse_providers("gpu")


def test_cuda_is_only_requested_when_the_probe_passes() -> None:
    resolved = providers.resolve_providers("auto")
    assert resolved[-1] == providers.CPU
    devices, _reason = providers.cuda_device_count()
    if devices == 0:
        assert resolved == [providers.CPU]
        assert not providers.probe(providers.CUDA).usable


def test_session_runs_on_the_reported_provider(model) -> None:
    assert model.providers[0] in (providers.CPU, providers.CUDA)
    assert [s.name for s in model.inputs][-1] == "candidates"
    assert model.inputs[0].dim_names == ("B", "Ls")


def test_scores_match_the_numpy_reference(model, repo: BuiltRepo) -> None:
    inputs = good_inputs()
    scores = model.run(inputs, ["scores"])["scores"]
    np.testing.assert_allclose(
        scores, reference_scores(repo.weights[repo.latest], inputs), rtol=1e-5, atol=1e-6
    )


def test_warmup_inputs_follow_the_signature(model) -> None:
    sample = warmup_inputs(model.inputs, 4)
    assert sample["candidates"].shape == (1, 4) and sample["candidates"].dtype == np.int64
    assert sample["src_mask"].dtype == np.float32 and sample["src_mask"].min() == 1.0


def test_decode_accepts_good_inputs(model) -> None:
    decoded = decode_inputs(
        "m", model.inputs, [raw(n, a) for n, a in good_inputs().items()], 10_000
    )
    assert decoded["candidates"].tolist() == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda t: t.pop("candidates"), InvalidArgument, r"inputs\['candidates'\]: missing"),
        (
            lambda t: t.update(extra=np.zeros(1, np.int64)),
            InvalidArgument,
            r"inputs\['extra'\]: unexpected",
        ),
        (
            lambda t: t.update(src_mask=np.ones((1, 2), np.float64)),
            InvalidArgument,
            r"inputs\['src_mask'\]: dtype FP64 given, the model expects FP32",
        ),
        (
            lambda t: t.update(candidates=np.arange(3, dtype=np.int64)),
            InvalidArgument,
            r"inputs\['candidates'\]: rank 1 given",
        ),
        (
            lambda t: t.update(src_mask=np.ones((1, 3), np.float32)),
            InvalidArgument,
            r"inputs\['src_mask'\]: axis 1 \('Ls'\) is 3 but 'src_items' has 2",
        ),
        (
            lambda t: t.update(candidates=np.ones((1, 20_000), np.int64)),
            ResourceExhausted,
            r"inputs\['candidates'\]: the request has more than 10000",
        ),
    ],
)
def test_decode_errors_name_the_tensor(model, mutate, error, message: str) -> None:
    tensors = good_inputs()
    mutate(tensors)
    with pytest.raises(error, match=message):
        decode_inputs("m", model.inputs, [raw(n, a) for n, a in tensors.items()], 10_000)


def test_byte_count_mismatch_and_duplicates(model) -> None:
    tensors = [raw(n, a) for n, a in good_inputs().items()]
    short = RawTensor("candidates", tensors[-1].dtype, tensors[-1].shape, tensors[-1].data[:-8])
    with pytest.raises(Exception, match="tensor 'candidates'.*needs 24 bytes, got 16"):
        decode_inputs("m", model.inputs, [*tensors[:-1], short], 10_000)
    with pytest.raises(InvalidArgument, match="given more than once"):
        decode_inputs("m", model.inputs, [*tensors, tensors[0]], 10_000)


def test_select_outputs(model) -> None:
    assert select_outputs(model.outputs, [], "output_names") == ["scores"]
    with pytest.raises(InvalidArgument, match="output_names: unknown output 'logits'"):
        select_outputs(model.outputs, ["logits"], "output_names")


def test_graph_that_contradicts_its_manifest_is_refused(fresh_repo: BuiltRepo) -> None:
    path = fresh_repo.version_dir() / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"][1]["dtype"] = "FP64"
    path.write_text(json.dumps(manifest))
    version = ModelRepository(fresh_repo.root).open(fresh_repo.name)
    with pytest.raises(
        SignatureMismatch, match="'src_mask' is tensor\\(float\\) in the graph, FP64"
    ):
        create_session(version, CONFIG)


def test_manager_keeps_serving_when_a_new_version_is_broken(tmp_path) -> None:
    repo = build_model_repo(tmp_path, versions=2)
    (repo.version_dir("2") / "model.onnx").write_bytes(b"not an onnx graph")

    async def scenario() -> None:
        manager = ModelManager(ModelRepository(repo.root), CONFIG)
        await manager.load(repo.name, "1")
        with pytest.raises(FailedPrecondition, match="version 2 refused"):
            await manager.load(repo.name, "2")
        assert manager.get(repo.name).version_id == "1"
        with pytest.raises(NotFound, match="version 2 is not loaded"):
            manager.get(repo.name, "2")
        with pytest.raises(NotFound, match="model 'other' is not loaded"):
            manager.get("other")
        await manager.unload(repo.name)
        assert manager.models() == []

    asyncio.run(scenario())


def test_manager_swaps_to_a_newer_version(tmp_path) -> None:
    repo = build_model_repo(tmp_path, versions=2)

    async def scenario() -> None:
        config = ScorerConfig(
            providers="cpu", intra_op_threads=1, warmup_runs=1, version_policy="latest:1"
        )
        manager = ModelManager(ModelRepository(repo.root), config)
        await manager.load(repo.name, "1")
        await manager.load(repo.name)  # newest on disk
        assert [m.version_id for m in manager.models()] == ["2"]  # latest:1

    asyncio.run(scenario())
