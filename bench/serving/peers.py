"""The servers under test, one at a time: the xdrec scorer, the PyTorch-eager gRPC server and
MLServer (their code lives in bench/peers/), each in its own process group on a loopback port.

Why one settings object for all of them: fairness. Every server gets the same number of
concurrent inference runs and the same ONNX Runtime / torch threads per run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.endpoints import LOOPBACK, SCORER, free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class PeerSettings:
    """What every server is started with (the benchmark's flags of the same names)."""

    logs: Path  # one log file per server
    workers: int = 2  # concurrent inference runs per server
    intra_op_threads: int = 1  # ORT / torch threads per run
    mlserver_workers: int = 2  # MLServer parallel_workers
    scorer_access_log: bool = False  # the peers log nothing per request
    scorer_args: tuple[str, ...] = ()  # extra scorer flags
    providers: str = "cpu"  # the scorer's --providers (cpu | cuda | tensorrt, comma-separated)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    address: str
    log_path: Path
    apis: list[str]  # "predict" and/or "v2"
    note: str = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def spawn(cmd: list[str], log_path: Path, *, env: dict | None = None, cwd: Path | None = None):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # its own process group: stop() ends it and its children
        )


def wait_ready(server: Server, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    server.stop()
    tail = server.log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f}s:\n{tail}")


def health_serving(address: str, service: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=1.0
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def v2_model_ready(address: str, model: str) -> bool:
    import grpc
    from xdrec.kserve.v2 import grpc_service_pb2 as v2
    from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = v2_grpc.GRPCInferenceServiceStub(channel).ModelReady(
            v2.ModelReadyRequest(name=model), timeout=1.0
        )
    return reply.ready


def start_scorer(settings: PeerSettings, repo: Path, model: str, batching: bool) -> Server:
    """``python -m services.scorer`` with dynamic batching on or off."""
    port = free_loopback_port()
    flags: dict[str, object] = {
        "model_repo": str(repo),
        "models": model,
        "host": LOOPBACK,
        "port": port,
        "metrics_port": 0,
        "providers": settings.providers,
        "intra_op_threads": settings.intra_op_threads,
        "inter_op_threads": 1,
        "inference_threads": settings.workers,
        "access_log": settings.scorer_access_log,
        "poll_interval_s": 0,
        "max_queue": 4096,
        "batching": batching,
    }
    cmd = [sys.executable, "-m", "services.scorer"]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        else:
            cmd += [flag, str(value)]
    cmd += settings.scorer_args
    name = "scorer+batch" if batching else "scorer"
    log_path = settings.logs / ("scorer+batch.log" if batching else "scorer-nobatch.log")
    server = Server(
        name,
        spawn(cmd, log_path, cwd=ROOT),
        f"{LOOPBACK}:{port}",
        log_path,
        ["predict", "v2"],
        note=f"scorer (batching {'on' if batching else 'off'}): " + " ".join(cmd[3:]),
    )
    wait_ready(
        server,
        lambda: health_serving(server.address, SCORER.health_name),
        SERVER_START_TIMEOUT_S,
    )
    return server


def start_torch(settings: PeerSettings, run: Path, model: str) -> Server:
    """bench/peers/torch_eager_server.py on the run's model.pt (same Predict contract)."""
    port = free_loopback_port()
    script = ROOT / "bench" / "peers" / "torch_eager_server.py"
    cmd = [
        sys.executable,
        str(script),
        "--run",
        str(run),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--model-name",
        model,
        "--workers",
        str(settings.workers),
        "--torch-threads",
        str(settings.intra_op_threads),
    ]
    log_path = settings.logs / "torch-eager.log"
    server = Server(
        "torch-eager", spawn(cmd, log_path), f"{LOOPBACK}:{port}", log_path, ["predict"]
    )
    wait_ready(server, lambda: health_serving(server.address, ""), SERVER_START_TIMEOUT_S)
    return server


def start_mlserver(settings: PeerSettings, repo: Path, model: str, workdir: Path) -> Server:
    """MLServer from ``.venv-peer`` (created on first use) with bench/peers' ONNX runtime."""
    sidecar = load_sidecar()
    python = sidecar.ensure("peer", log=lambda line: print(line, flush=True))
    from services.common.model_repository import ModelRepository

    version = ModelRepository(repo).open(model)
    root = workdir / "mlserver-repo"
    if root.exists():
        shutil.rmtree(root)
    (root / model).mkdir(parents=True)
    grpc_port, http_port, metrics_port = (
        free_loopback_port(),
        free_loopback_port(),
        free_loopback_port(),
    )
    settings = {
        "debug": False,
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": settings.mlserver_workers,
        "model_repository_root": str(root),
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model,
        "implementation": "mlserver_onnx_runtime.OnnxRuntimeModel",
        "parameters": {
            "uri": str(version.model_path),
            "version": version.version,
            "extra": {"intra_op_threads": settings.intra_op_threads, "inter_op_threads": 1},
        },
    }
    (root / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    mlserver = python.parent / "mlserver"
    log_path = settings.logs / "mlserver.log"
    env = {"PYTHONPATH": str(ROOT / "bench" / "peers")}
    proc = spawn([str(mlserver), "start", str(root)], log_path, env=env, cwd=root)
    server = Server(
        "mlserver",
        proc,
        f"{LOOPBACK}:{grpc_port}",
        log_path,
        ["v2"],
        note=f"MLServer {mlserver_version(python)}, parallel_workers={settings.mlserver_workers}",
    )
    wait_ready(server, lambda: v2_model_ready(server.address, model), SERVER_START_TIMEOUT_S)
    return server


def mlserver_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import mlserver; print(mlserver.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or "?"


def load_sidecar():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "xdrec_sidecar_venv", ROOT / "scripts" / "sidecar_venv.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
