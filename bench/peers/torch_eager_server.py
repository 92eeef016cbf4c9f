"""The PyTorch-eager gRPC server a team writes first: the comparison point for the ONNX scorer.

Minimal but honest: it loads the trained model (``model.pt`` via ``export.exporter.load_model``),
serves the same ``xdrec.scorer.v1.ScorerService/Predict`` contract (raw little-endian tensors in
and out, so the benchmark sends it the very same request bytes as the scorer) on a ``grpc.aio``
server, and runs eager ``torch`` inference under ``inference_mode`` on a small thread pool so the
event loop stays responsive. No validation beyond what torch itself complains about, no batching,
no metrics: what a first version looks like. Health (``grpc.health.v1``) reports SERVING once
the model has been loaded and warmed up.

    python bench/peers/torch_eager_server.py --run artifacts/run --port 50060
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xdrec.common.v1 import tensor_pb2  # noqa: E402
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc  # noqa: E402

from export.exporter import load_model  # noqa: E402
from services.common.endpoints import SCORER  # noqa: E402
from trainer.models.base import INPUT_NAMES, OUTPUT_NAMES  # noqa: E402

DTYPES = {
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
}
SERVICE = SCORER.health_name  # it stands in for the scorer


class TorchScorer(scorer_pb2_grpc.ScorerServiceServicer):
    def __init__(self, model: torch.nn.Module, name: str, workers: int) -> None:
        self.model = model
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torch")

    def _run(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return self.model(*(tensors[name] for name in INPUT_NAMES)).numpy()

    async def Predict(self, request, context):
        tensors = {}
        for t in request.inputs:
            dtype = DTYPES.get(t.dtype)
            if dtype is None:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unsupported dtype {t.dtype}"
                )
            array = np.frombuffer(t.data, dtype=dtype).reshape(tuple(t.shape))
            tensors[t.name] = torch.from_numpy(array.copy())
        missing = [name for name in INPUT_NAMES if name not in tensors]
        if missing:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"missing inputs {missing}")
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(self.pool, self._run, tensors)
        scores = np.ascontiguousarray(scores, dtype="<f4")
        return scorer_pb2.PredictResponse(
            model=tensor_pb2.ModelRef(name=self.name, version="torch"),
            outputs=[
                tensor_pb2.Tensor(
                    name=OUTPUT_NAMES[0],
                    dtype=tensor_pb2.DATA_TYPE_FP32,
                    shape=list(scores.shape),
                    data=scores.tobytes(),
                )
            ],
        )


async def serve(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.torch_threads)
    torch.set_num_interop_threads(1)
    started = time.perf_counter()
    model, checkpoint = load_model(Path(args.run))
    name = args.model_name or checkpoint["config"].get("name", "model")
    with torch.inference_mode():  # warm-up
        model(
            torch.ones(1, 8, dtype=torch.long),
            torch.ones(1, 8),
            torch.ones(1, 8, dtype=torch.long),
            torch.ones(1, 8),
            torch.ones(1, 100, dtype=torch.long),
        )
    server = grpc.aio.server()
    servicer = TorchScorer(model, name, args.workers)
    scorer_pb2_grpc.add_ScorerServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    for service in ("", SERVICE):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    print(
        f"torch-eager serving {name} on {args.host}:{port} "
        f"(torch {torch.__version__}, {args.workers} workers x {args.torch_threads} threads, "
        f"loaded in {time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)
    servicer.pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run directory with model.pt")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50060)
    parser.add_argument("--model-name", default="", help="name in responses (default: config)")
    parser.add_argument("--workers", type=int, default=2, help="inference threads")
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
