"""Open Inference Protocol v2 conformance: the stock Triton client talks to the real scorer.

``tritonclient[grpc]`` pins an older protobuf than the project's grpcio-tools, so it lives in its
own environment ``.venv-triton`` (created here on first use by scripts/sidecar_venv.py; later runs
reuse it). The scorer runs in-process on a loopback port with the fixture model repository; the
client script (tests/interop/triton_client.py) runs in the side environment as a subprocess and
prints JSON. Its scores are compared with an in-process ONNX Runtime session on the same
model.onnx, with the numpy reference of the fixture graph and with the scorer's own Predict.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from xdrec.common.v1 import tensor_pb2
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.common.tensors import from_proto, to_proto  # noqa: E402
from services.scorer.app import ScorerApp  # noqa: E402
from tests.fixtures.model_repo import BuiltRepo, build_model_repo, reference_scores  # noqa: E402
from tests.fixtures.servers import LoopThread, scorer_config, start_host  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

CLIENT = Path(__file__).with_name("triton_client.py")
SIDECAR = ROOT / "scripts" / "sidecar_venv.py"


def _sidecar():
    spec = importlib.util.spec_from_file_location("xdrec_sidecar_venv", SIDECAR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batch_inputs(repo: BuiltRepo) -> dict[str, np.ndarray]:
    """Three users padded to one batch: warm (both histories), cold (source only), target only."""
    s = {item: i for i, item in enumerate(repo.vocab_source)}
    t = {item: i for i, item in enumerate(repo.vocab_target)}
    src = [[s["s01"], s["s02"], s["s03"]], [s["s04"], s["s05"], s["s06"]], [0, 0, 0]]
    tgt = [[t["t01"], t["t02"], t["t03"]], [0, 0, 0], [t["t05"], t["t06"], 0]]
    rng = np.random.default_rng(7)
    candidates = np.stack([rng.permutation(np.arange(1, len(repo.vocab_target))) for _ in src])
    src_items = np.asarray(src, dtype=np.int64)
    tgt_items = np.asarray(tgt, dtype=np.int64)
    return {
        "src_items": src_items,
        "src_mask": (src_items > 0).astype(np.float32),
        "tgt_items": tgt_items,
        "tgt_mask": (tgt_items > 0).astype(np.float32),
        "candidates": candidates.astype(np.int64),
    }


@pytest.fixture(scope="module")
def triton_python() -> Path:
    return _sidecar().ensure("triton", log=lambda line: print(line, file=sys.stderr))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    repo = build_model_repo(tmp_path_factory.mktemp("interop-repo"), versions=2)
    loop = LoopThread()
    host = start_host(loop, ScorerApp, scorer_config(repo.root))
    try:
        yield repo, host.address
    finally:
        loop.run(host.stop(grace=0.2))
        loop.close()


def test_tritonclient_against_scorer(triton_python: Path, served, tmp_path: Path) -> None:
    repo, address = served
    inputs = batch_inputs(repo)
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **inputs)

    proc = subprocess.run(
        [str(triton_python), str(CLIENT), "--url", address, "--model", repo.name, "--inputs", npz],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout)

    # Health and metadata, as tritonclient parses them.
    assert out["server_live"] is True
    assert out["server_ready"] is True
    assert out["model_ready"] is True
    assert out["unknown_model_ready"] is False
    assert out["server_metadata"]["name"] == "xdrec-scorer"
    assert "model_repository" in out["server_metadata"].get("extensions", [])
    meta = out["model_metadata"]
    assert meta["name"] == repo.name
    assert meta["platform"] == "onnxruntime_onnx"
    assert repo.latest in meta["versions"]
    signature = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
    assert signature == {
        "src_items": ("INT64", [-1, -1]),
        "src_mask": ("FP32", [-1, -1]),
        "tgt_items": ("INT64", [-1, -1]),
        "tgt_mask": ("FP32", [-1, -1]),
        "candidates": ("INT64", [-1, -1]),
    }
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("scores", "FP32")]

    # Inference: the same numbers as ONNX Runtime in-process, the graph's numpy reference and
    # the scorer's own Predict.
    infer = out["infer"]
    assert infer["model_name"] == repo.name
    assert infer["model_version"] == repo.latest
    assert infer["id"] == "triton-interop-1"
    assert infer["outputs"] == ["scores"]
    assert infer["dtype"] == "float32"
    scores = np.asarray(infer["scores"], dtype=np.float32)
    assert scores.shape == inputs["candidates"].shape

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(repo.model_path()), options, providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(["scores"], inputs)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        scores, reference_scores(repo.weights[repo.latest], inputs), rtol=1e-5, atol=1e-5
    )
    with grpc.insecure_channel(address) as channel:
        reply = scorer_pb2_grpc.ScorerServiceStub(channel).Predict(
            scorer_pb2.PredictRequest(
                model=tensor_pb2.ModelRef(name=repo.name),
                inputs=[to_proto(name, array) for name, array in inputs.items()],
            ),
            timeout=10,
        )
    predicted = {t.name: from_proto(t) for t in reply.outputs}
    np.testing.assert_array_equal(scores, predicted["scores"])
    assert out["infer_all_outputs"] == ["scores"]

    # Errors reach the Triton client with the documented status and a message naming the field.
    wrong = out["wrong_dtype_error"]
    assert wrong is not None, "an FP64 mask was accepted"
    assert wrong["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "inputs['src_mask']" in wrong["message"]
    assert "FP64" in wrong["message"] and "FP32" in wrong["message"]
    assert out["unknown_model_error"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in out["unknown_model_error"]["message"]
    assert out["unknown_output_error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "no_such_output" in out["unknown_output_error"]["message"]
