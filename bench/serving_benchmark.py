"""Serving benchmark: the same ONNX model and the same requests through every way of serving it.

Systems (``--systems``, all by default):

* ``ort-loop``   in-process ONNX Runtime, one thread calling ``session.run`` back to back: the
                 ceiling for one caller (concurrency 1 only);
* ``ort-pool``   in-process ONNX Runtime, N threads each calling ``session.run`` (closed loop):
                 the ceiling at concurrency N, and the reference every ratio is taken against;
* ``scorer``     the xdrec scorer (``python -m services.scorer``) over gRPC, both APIs
                 (``Predict`` and v2 ``ModelInfer``), with dynamic batching off and on when the
                 scorer has the switch (``--batching`` / ``--no-batching``);
* ``torch``      a PyTorch-eager gRPC server (bench/peers/torch_eager_server.py) on model.pt,
                 same Predict contract: what a team writes first;
* ``mlserver``   MLServer (Seldon) in ``.venv-peer`` with an ONNX Runtime runtime
                 (bench/peers/mlserver_onnx_runtime.py), driven over the v2 gRPC protocol.

Requests: real users of the model's features.tsv encoded by the encoder's own code
(``services.encoder.encoding``): one user per request (batch 1, their real source and target
histories), ``--candidates`` target items each (random, seeded). Every system gets the same
pre-serialised request bytes, cycled in the same order. Closed loop: N callers, each sends its
next request when the previous answer arrives, for ``--duration`` seconds per level after
``--warmup`` seconds unmeasured.

Fairness on a small machine: the load generator runs on the same cores as the server, so it is
kept cheap (requests serialised once up front, raw bytes on a single ``grpc.aio`` channel, the
responses of the timed calls are not parsed) and its CPU time per request is reported next to
the server's. Only one server runs at a time. Every server gets the same ONNX Runtime threading
(``--intra-op-threads``, default 1 per run) and ``--workers`` concurrent runs (default 2).

    python bench/serving_benchmark.py                      # trains + exports a model if needed
    python bench/serving_benchmark.py --repo R --run RUN   # an existing repository and run
    python bench/serving_benchmark.py --quick              # smoke run (2 levels, 2 s each)

Writes ``<out>/serving.json``, ``serving.md`` and ``serving.png``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.common.endpoints import LOOPBACK, SCORER  # noqa: E402

DEFAULT_WORKDIR = ROOT / "artifacts" / "bench-serving"
DEFAULT_OUT = ROOT / "bench" / "results" / "serving"
ALL_SYSTEMS = ("ort-loop", "ort-pool", "scorer", "torch", "mlserver")
PREDICT = f"/{SCORER.health_name}/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_START_TIMEOUT_S = 180.0
MAX_REQUESTS_PER_LEVEL = 2_000_000  # a hard bound on every measurement loop besides its clock


# --- the workload ------------------------------------------------------------------------------


@dataclass
class Workload:
    """Encoded requests (batch 1 each) and how they were made."""

    model: str
    version: str
    inputs: list[dict[str, np.ndarray]]
    users: list[str]
    kinds: Counter
    candidates: int

    def describe(self) -> dict[str, Any]:
        src = [int(x["src_mask"].sum()) for x in self.inputs]
        tgt = [int(x["tgt_mask"].sum()) for x in self.inputs]
        return {
            "model": self.model,
            "version": self.version,
            "requests": len(self.inputs),
            "batch": 1,
            "candidates_per_request": self.candidates,
            "user_kinds": dict(self.kinds),
            "source_history_median": float(np.median(src)),
            "target_history_median": float(np.median(tgt)),
            "source_history_max": max(src),
            "target_history_max": max(tgt),
        }


def feature_users(path: Path) -> list[str]:
    """User ids of a features.tsv snapshot, in first-seen order."""
    seen: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader)]
        column = header.index("user_id")
        for row in reader:
            if len(row) > column:
                seen.setdefault(row[column], None)
    return list(seen)


def build_workload(
    repo: Path, model: str, features: Path, *, users: int, candidates: int, seed: int
) -> Workload:
    """Real users encoded exactly as the encoder does for the ranker (one user per request)."""
    from services.common.repository import ModelRepository
    from services.encoder.encoding import WARM, EncodeQuery, Encoder, EncoderLimits
    from services.encoder.feature_store import InMemoryFeatureStore
    from services.encoder.vocab import ModelVocabulary

    version = ModelRepository(repo).open(model)
    vocab = ModelVocabulary.load(version)
    encoder = Encoder(vocab, InMemoryFeatureStore.from_tsv(features), EncoderLimits())
    rng = np.random.default_rng(seed)
    catalog = [entry.item_id for entry in vocab.catalog]
    per_request = min(candidates, len(catalog))
    pool = feature_users(features)
    rng.shuffle(pool)
    inputs, chosen, kinds = [], [], Counter()
    for user in pool:
        if len(inputs) >= users:
            break
        items = list(rng.choice(catalog, size=per_request, replace=False))
        encoded = encoder.encode(EncodeQuery(user_id=user, candidate_item_ids=items), now=0.0)
        if encoded.source_history_length + encoded.target_history_length == 0:
            continue  # unknown users never reach the scorer (the ranker's popularity fallback)
        inputs.append({k: np.ascontiguousarray(v) for k, v in encoded.inputs.items()})
        chosen.append(user)
        kinds["warm" if encoded.user_status == WARM else "cold_start"] += 1
    if not inputs:
        raise ValueError(f"{features}: no user with a history known to {model}")
    return Workload(model, version.version, inputs, chosen, kinds, per_request)


def predict_payloads(workload: Workload) -> list[bytes]:
    from xdrec.common.v1 import tensor_pb2
    from xdrec.scorer.v1 import scorer_pb2

    from services.common.tensors import to_proto

    return [
        scorer_pb2.PredictRequest(
            model=tensor_pb2.ModelRef(name=workload.model),
            inputs=[to_proto(name, array) for name, array in inputs.items()],
            output_names=["scores"],
        ).SerializeToString()
        for inputs in workload.inputs
    ]


V2_TYPES = {np.dtype("int64"): "INT64", np.dtype("float32"): "FP32"}


def v2_payloads(workload: Workload) -> list[bytes]:
    from xdrec.kserve.v2 import grpc_service_pb2 as v2

    payloads = []
    for inputs in workload.inputs:
        request = v2.ModelInferRequest(model_name=workload.model)
        for name, array in inputs.items():
            request.inputs.add(name=name, datatype=V2_TYPES[array.dtype], shape=list(array.shape))
            request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        request.outputs.add(name="scores")
        payloads.append(request.SerializeToString())
    return payloads


def decode_predict(data: bytes) -> np.ndarray:
    from xdrec.scorer.v1 import scorer_pb2

    reply = scorer_pb2.PredictResponse.FromString(data)
    out = next(t for t in reply.outputs if t.name == "scores")
    return np.frombuffer(out.data, dtype="<f4").reshape(tuple(out.shape))


def decode_v2(data: bytes) -> np.ndarray:
    from xdrec.kserve.v2 import grpc_service_pb2 as v2

    reply = v2.ModelInferResponse.FromString(data)
    for i, out in enumerate(reply.outputs):
        if out.name != "scores":
            continue
        if reply.raw_output_contents:
            values = np.frombuffer(reply.raw_output_contents[i], dtype="<f4")
        else:
            values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
        return values.reshape(tuple(out.shape))
    raise ValueError("no 'scores' output in the response")


# --- measurement -------------------------------------------------------------------------------


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack, seen = 0.0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (Linux /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    """One (system, api, concurrency) measurement."""

    system: str
    api: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_ms_per_req: float
    server_cpu_ms_per_req: float
    errors_by_code: dict[str, int] = field(default_factory=dict)
    other_cpu_cores: float = math.nan  # machine-wide busy CPU not used by client or server
    max_abs_diff_vs_ort: float | None = None
    x_throughput_vs_ort: float | None = None
    x_p50_vs_ort: float | None = None
    x_p99_vs_ort: float | None = None


def summarize(
    system: str,
    api: str,
    concurrency: int,
    duration: float,
    latencies: list[float],
    errors: Counter,
    client_cpu: float,
    server_cpu: float | None,
) -> Level:
    ms = sorted(x * 1e3 for x in latencies)
    done = len(ms) + sum(errors.values())
    per = max(done, 1)
    return Level(
        system=system,
        api=api,
        concurrency=concurrency,
        duration_s=duration,
        requests=len(ms),
        errors=sum(errors.values()),
        throughput_rps=len(ms) / duration,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else math.nan,
        client_cpu_ms_per_req=client_cpu * 1e3 / per,
        server_cpu_ms_per_req=(server_cpu * 1e3 / per) if server_cpu is not None else math.nan,
        errors_by_code=dict(errors),
    )


def ort_session(model_path: Path, intra_op_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def measure_in_process(
    session, inputs: list[dict[str, np.ndarray]], concurrency: int, duration: float, warmup: float
) -> tuple[list[float], Counter, float, float]:
    """N threads calling ``session.run`` back to back: latencies, errors, CPU s, other cores."""
    counter = itertools.count()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    errors: Counter = Counter()

    def caller(out: list[float]) -> None:
        for _ in range(MAX_REQUESTS_PER_LEVEL):
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            feeds = inputs[next(counter) % len(inputs)]
            try:
                session.run(["scores"], feeds)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal
                errors[type(exc).__name__] += 1
                continue
            if t0 >= measure_from:
                out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(out,), daemon=True) for out in per_thread]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0, busy0 = time.process_time(), machine_busy_s()
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu, busy = time.process_time() - cpu0, machine_busy_s() - busy0
    for thread in threads:
        thread.join(timeout=60)
    return [x for out in per_thread for x in out], errors, cpu, max(0.0, busy - cpu) / duration


async def measure_grpc(
    call: Callable[[bytes], Awaitable[bytes]],
    payloads: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    server_pid: int,
) -> tuple[list[float], Counter, float, float, float]:
    """Closed loop, N coroutines on one channel: latencies, errors, client/server CPU s, other."""
    import grpc

    counter = itertools.count()
    latencies: list[float] = []
    errors: Counter = Counter()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def caller() -> None:
        for _ in range(MAX_REQUESTS_PER_LEVEL):
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            payload = payloads[next(counter) % len(payloads)]
            try:
                await call(payload)
            except grpc.aio.AioRpcError as exc:
                if t0 >= measure_from:
                    errors[exc.code().name] += 1
                continue
            if t0 >= measure_from:
                latencies.append(time.perf_counter() - t0)

    async def cpu_window() -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        client0, server0 = time.process_time(), process_tree_cpu_s(server_pid)
        busy0 = machine_busy_s()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        client = time.process_time() - client0
        server = process_tree_cpu_s(server_pid) - server0
        other = max(0.0, machine_busy_s() - busy0 - client - server) / duration
        return client, server, other

    results = await asyncio.gather(cpu_window(), *(caller() for _ in range(concurrency)))
    client_cpu, server_cpu, other = results[0]
    return latencies, errors, client_cpu, server_cpu, other


# --- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


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


def scorer_batching_field() -> bool:
    """Whether this checkout's scorer has the dynamic-batching switch (``--[no-]batching``)."""
    from services.scorer.config import ScorerConfig

    return any(f.name == "batching" for f in dataclasses.fields(ScorerConfig))


def start_scorer(args: argparse.Namespace, repo: Path, model: str, batching: bool | None) -> Server:
    from services.scorer.config import ScorerConfig

    fields = {f.name for f in dataclasses.fields(ScorerConfig)}
    port = free_port()
    wanted: dict[str, Any] = {
        "model_repo": str(repo),
        "models": model,
        "host": LOOPBACK,
        "port": port,
        "metrics_port": 0,
        "providers": "cpu",
        "intra_op_threads": args.intra_op_threads,
        "inter_op_threads": 1,
        "inference_threads": args.workers,
        "access_log": args.scorer_access_log,
        "poll_interval_s": 0,
        "max_queue": 4096,
    }
    if batching is not None:
        wanted["batching"] = batching
    cmd = [sys.executable, "-m", "services.scorer"]
    for key, value in wanted.items():
        if key not in fields:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + flag[2:])
        else:
            cmd += [flag, str(value)]
    cmd += args.scorer_arg
    label = "scorer" if batching is None else f"scorer (batching {'on' if batching else 'off'})"
    suffix = "" if batching is None else ("+batch" if batching else "")
    server = Server(
        f"scorer{suffix}",
        spawn(cmd, args.out / "logs" / f"scorer{suffix or '-nobatch'}.log", cwd=ROOT),
        f"{LOOPBACK}:{port}",
        args.out / "logs" / f"scorer{suffix or '-nobatch'}.log",
        ["predict", "v2"],
        note=label + ": " + " ".join(cmd[3:]),
    )
    wait_ready(
        server,
        lambda: health_serving(server.address, SCORER.health_name),
        SERVER_START_TIMEOUT_S,
    )
    return server


def start_torch(args: argparse.Namespace, run: Path, model: str) -> Server:
    port = free_port()
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
        str(args.workers),
        "--torch-threads",
        str(args.intra_op_threads),
    ]
    log_path = args.out / "logs" / "torch-eager.log"
    server = Server(
        "torch-eager", spawn(cmd, log_path), f"{LOOPBACK}:{port}", log_path, ["predict"]
    )
    wait_ready(server, lambda: health_serving(server.address, ""), SERVER_START_TIMEOUT_S)
    return server


def start_mlserver(args: argparse.Namespace, repo: Path, model: str, workdir: Path) -> Server:
    sidecar = load_sidecar()
    python = sidecar.ensure("peer", log=lambda line: print(line, flush=True))
    from services.common.repository import ModelRepository

    version = ModelRepository(repo).open(model)
    root = workdir / "mlserver-repo"
    if root.exists():
        shutil.rmtree(root)
    (root / model).mkdir(parents=True)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "debug": False,
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": args.mlserver_workers,
        "model_repository_root": str(root),
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model,
        "implementation": "mlserver_onnx_runtime.OnnxRuntimeModel",
        "parameters": {
            "uri": str(version.model_path),
            "version": version.version,
            "extra": {"intra_op_threads": args.intra_op_threads, "inter_op_threads": 1},
        },
    }
    (root / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    mlserver = python.parent / "mlserver"
    log_path = args.out / "logs" / "mlserver.log"
    env = {"PYTHONPATH": str(ROOT / "bench" / "peers")}
    proc = spawn([str(mlserver), "start", str(root)], log_path, env=env, cwd=root)
    server = Server(
        "mlserver",
        proc,
        f"{LOOPBACK}:{grpc_port}",
        log_path,
        ["v2"],
        note=f"MLServer {mlserver_version(python)}, parallel_workers={args.mlserver_workers}",
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


# --- the run -----------------------------------------------------------------------------------


def ensure_model(args: argparse.Namespace) -> tuple[Path, Path | None, str]:
    """(repository, run directory or None, model name): given, or trained + exported once."""
    if args.repo is not None:
        repo = args.repo.resolve()
        run = args.run.resolve() if args.run else None
    else:
        workdir = args.workdir.resolve()
        run, repo = workdir / "run", workdir / "repo"
        if not (run / "model.pt").exists():
            print(f"== no --repo given: training a small ML-100K model into {run} (seed 0)")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "train",
                    "--out",
                    str(run),
                    "--quiet",
                    "--set",
                    "train.seeds=[0]",
                    "--set",
                    f"train.epochs={args.train_epochs}",
                    "--set",
                    f"train.pretrain_epochs={max(1, args.train_epochs // 2)}",
                ],
                check=True,
                timeout=3600,
                cwd=ROOT,
            )
        if not repo.exists() or not any(repo.iterdir()):
            subprocess.run(
                [sys.executable, "-m", "cli", "export", "--run", str(run)] + ["--repo", str(repo)],
                check=True,
                timeout=1800,
                cwd=ROOT,
            )
    from services.common.repository import ModelRepository

    names = ModelRepository(repo).models()
    if args.model:
        model = args.model
    elif len(names) == 1:
        model = names[0]
    else:
        raise SystemExit(f"{repo} holds {names or 'no models'}: pick one with --model")
    return repo, run, model


def find_features(args: argparse.Namespace, repo: Path, run: Path | None) -> Path:
    for candidate in (args.features, run and run / "features.tsv", repo / "features.tsv"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("no features.tsv found: pass --features or --run")


def attach_ratios(levels: list[Level]) -> None:
    """Each level against in-process ONNX Runtime (ort-pool) at the same concurrency."""
    ref = {lv.concurrency: lv for lv in levels if lv.system == "ort-pool"}
    for lv in levels:
        base = ref.get(lv.concurrency)
        if base is None or not base.requests or not lv.requests:
            continue
        lv.x_throughput_vs_ort = lv.throughput_rps / base.throughput_rps
        lv.x_p50_vs_ort = lv.p50_ms / base.p50_ms
        lv.x_p99_vs_ort = lv.p99_ms / base.p99_ms


def _f(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


COLUMNS = (
    "system",
    "api",
    "conc",
    "req/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "x tput",
    "x p50",
    "x p99",
    "errors",
    "cli CPU ms/req",
    "srv CPU ms/req",
    "max |d| vs ORT",
)


def table_rows(levels: list[Level]) -> list[list[str]]:
    return [
        [
            lv.system,
            lv.api,
            str(lv.concurrency),
            _f(lv.throughput_rps, ".0f"),
            _f(lv.p50_ms, ".2f"),
            _f(lv.p95_ms, ".2f"),
            _f(lv.p99_ms, ".2f"),
            _f(lv.x_throughput_vs_ort, ".2f"),
            _f(lv.x_p50_vs_ort, ".1f"),
            _f(lv.x_p99_vs_ort, ".1f"),
            str(lv.errors),
            _f(lv.client_cpu_ms_per_req, ".3f"),
            _f(lv.server_cpu_ms_per_req, ".3f"),
            _f(lv.max_abs_diff_vs_ort, ".1e"),
        ]
        for lv in levels
    ]


MIN_WIDTHS = (12, 10, 4, 6, 7, 7, 7, 6, 5, 5, 6)


def format_text(levels: list[Level]) -> str:
    rows = [list(COLUMNS), *table_rows(levels)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    widths = [max(w, m) for w, m in zip(widths, MIN_WIDTHS + (0,) * len(COLUMNS), strict=False)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def format_markdown(levels: list[Level]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(levels)]
    return "\n".join(lines)


def plot(levels: list[Level], path: Path, title: str) -> None:
    """Four panels against concurrency: throughput, p50, p95, p99 (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Level]] = {}
    for lv in levels:
        series.setdefault(f"{lv.system} / {lv.api}", []).append(lv)
    panels = (
        ("throughput_rps", "throughput (requests/s)"),
        ("p50_ms", "p50 latency (ms)"),
        ("p95_ms", "p95 latency (ms)"),
        ("p99_ms", "p99 latency (ms)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ticks = sorted({lv.concurrency for lv in levels})
    for i, (label, points) in enumerate(sorted(series.items())):
        points = sorted(points, key=lambda lv: lv.concurrency)
        xs = [lv.concurrency for lv in points]
        style = "--" if points[0].api == "in-process" else "-"
        for ax, (attr, _) in zip(axes, panels, strict=True):
            ax.plot(
                xs,
                [getattr(lv, attr) for lv in points],
                linestyle=style,
                marker="o" if len(xs) > 1 else "*",
                markersize=5 if len(xs) > 1 else 10,
                color=colors[i % len(colors)],
                label=label,
            )
    for ax, (_, name) in zip(axes, panels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + "  (dashed: in-process ONNX Runtime, the ceiling)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_outputs(
    decode: Callable[[bytes], np.ndarray],
    replies: list[bytes],
    expected: list[np.ndarray],
) -> float:
    return max(
        float(np.max(np.abs(decode(reply) - want)))
        for reply, want in zip(replies, expected, strict=True)
    )


async def bench_server(
    server: Server,
    args: argparse.Namespace,
    payloads: dict[str, list[bytes]],
    expected: list[np.ndarray],
    levels_out: list[Level],
    say: Callable[[str], None],
) -> None:
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        for api in server.apis:
            method = PREDICT if api == "predict" else MODEL_INFER
            stub = channel.unary_unary(method)  # bytes in, bytes out: no client-side (de)coding

            async def call(payload: bytes, stub=stub) -> bytes:
                return await stub(payload, timeout=args.timeout_s)

            decode = decode_predict if api == "predict" else decode_v2
            checked = [await call(p) for p in payloads[api][: len(expected)]]
            diff = check_outputs(decode, checked, expected)
            for concurrency in args.concurrency:
                lat, errors, client_cpu, server_cpu, other = await measure_grpc(
                    call, payloads[api], concurrency, args.duration, args.warmup, server.proc.pid
                )
                level = summarize(
                    server.name,
                    api,
                    concurrency,
                    args.duration,
                    lat,
                    errors,
                    client_cpu,
                    server_cpu,
                )
                level.other_cpu_cores = other
                level.max_abs_diff_vs_ort = diff
                levels_out.append(level)
                say(format_text([level]).splitlines()[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    def say(line: str) -> None:
        print(line, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    repo, run_dir, model = ensure_model(args)
    features = find_features(args, repo, run_dir)
    workload = build_workload(
        repo, model, features, users=args.users, candidates=args.candidates, seed=args.seed
    )
    desc = workload.describe()
    from services.common.repository import ModelRepository

    model_path = ModelRepository(repo).open(model, workload.version).model_path
    say(
        f"== serving benchmark: {model} v{workload.version} ({model_path}); request = 1 user "
        f"(real histories, median {desc['source_history_median']:.0f} source / "
        f"{desc['target_history_median']:.0f} target items) x {workload.candidates} candidates; "
        f"{len(workload.inputs)} distinct requests cycled; {desc['user_kinds']}"
    )
    say(
        f"   closed loop, {args.duration:g} s per level after {args.warmup:g} s warm-up; "
        f"concurrency {args.concurrency}; {os.cpu_count()} CPU cores shared by client and server; "
        f"{args.workers} inference workers x {args.intra_op_threads} intra-op thread(s) everywhere"
    )
    say(
        "   client: requests serialised up front, raw bytes on one grpc.aio channel, timed "
        "responses not parsed (its CPU per request is the 'cli CPU' column)"
    )
    session = ort_session(model_path, args.intra_op_threads)
    expected = [session.run(["scores"], x)[0] for x in workload.inputs[: args.check_requests]]
    payloads = {"predict": predict_payloads(workload), "v2": v2_payloads(workload)}
    levels: list[Level] = []
    notes: list[str] = []
    systems = args.systems
    say("")
    say(format_text([]))

    if "ort-loop" in systems:
        lat, errors, cpu, other = measure_in_process(
            session, workload.inputs, 1, args.duration, args.warmup
        )
        level = summarize("ort-loop", "in-process", 1, args.duration, lat, errors, cpu, cpu)
        level.other_cpu_cores = other
        level.max_abs_diff_vs_ort = 0.0
        levels.append(level)
        say(format_text([level]).splitlines()[1])
    if "ort-pool" in systems:
        for concurrency in args.concurrency:
            lat, errors, cpu, other = measure_in_process(
                session, workload.inputs, concurrency, args.duration, args.warmup
            )
            level = summarize(
                "ort-pool", "in-process", concurrency, args.duration, lat, errors, cpu, cpu
            )
            level.other_cpu_cores = other
            level.max_abs_diff_vs_ort = 0.0
            levels.append(level)
            say(format_text([level]).splitlines()[1])
    del session

    starters: list[tuple[str, Callable[[], Server]]] = []
    if "scorer" in systems:
        if scorer_batching_field():
            starters.append(("scorer", lambda: start_scorer(args, repo, model, False)))
            starters.append(("scorer+batch", lambda: start_scorer(args, repo, model, True)))
        else:
            notes.append(
                "this checkout's scorer has no dynamic-batching switch yet: scorer measured once, "
                "as it is (no batching)"
            )
            starters.append(("scorer", lambda: start_scorer(args, repo, model, None)))
    if "torch" in systems:
        if run_dir is None or not (run_dir / "model.pt").exists():
            notes.append("torch-eager skipped: no --run with model.pt")
        else:
            starters.append(("torch-eager", lambda: start_torch(args, run_dir, model)))
    if "mlserver" in systems:
        starters.append(("mlserver", lambda: start_mlserver(args, repo, model, args.out / "work")))
    servers_info = []
    for name, start in starters:
        try:
            server = start()
        except Exception as exc:  # noqa: BLE001 - one broken peer must not lose the others
            notes.append(f"{name}: failed to start: {str(exc).splitlines()[0]}")
            say(
                f"!! {name}: failed to start ({str(exc).splitlines()[0]}); log under {args.out}/logs"
            )
            continue
        servers_info.append({"name": server.name, "address": server.address, "note": server.note})
        try:
            asyncio.run(bench_server(server, args, payloads, expected, levels, say))
        finally:
            server.stop()

    attach_ratios(levels)
    busy = [lv for lv in levels if lv.other_cpu_cores > 0.25]
    if busy:
        worst = max(busy, key=lambda lv: lv.other_cpu_cores)
        notes.append(
            f"{len(busy)} level(s) saw other processes use more than 0.25 cores (worst: "
            f"{worst.other_cpu_cores:.2f} cores during {worst.system}/{worst.api} at concurrency "
            f"{worst.concurrency}): those figures are disturbed; rerun on a quiet machine"
        )
    title = (
        f"{model} v{workload.version}: 1 user x {workload.candidates} candidates per request, "
        f"closed loop {args.duration:g} s/level, {os.cpu_count()} cores shared by client and server"
    )
    result = {
        "title": title,
        "request": desc,
        "settings": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "intra_op_threads": args.intra_op_threads,
            "mlserver_parallel_workers": args.mlserver_workers,
            "scorer_access_log": args.scorer_access_log,
            "timeout_s": args.timeout_s,
            "quick": args.quick,
        },
        "machine": machine_info(),
        "servers": servers_info,
        "notes": notes,
        "levels": [dataclasses.asdict(lv) for lv in levels],
    }
    say("")
    say(format_text(levels))
    say(
        "x tput / x p50 / x p99: against in-process ONNX Runtime (ort-pool) at the same "
        "concurrency; max |d|: largest score difference from in-process ORT on the first "
        f"{len(expected)} requests"
    )
    for note in notes:
        say(f"note: {note}")
    (args.out / "serving.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
    (args.out / "serving.md").write_text(
        f"{title}\n\n{format_markdown(levels)}\n" + "".join(f"\nnote: {n}\n" for n in notes)
    )
    plot(levels, args.out / "serving.png", title)
    say(f"written: {args.out}/serving.json, serving.md, serving.png")
    return result


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for package in ("onnxruntime-gpu", "onnxruntime", "grpcio", "torch", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15": list(os.getloadavg()),
        "versions": versions,
    }


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def parse_levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or any(n < 1 or n > 1024 for n in levels):
        raise argparse.ArgumentTypeError("concurrency levels are integers in 1..1024")
    return levels


def parse_systems(text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown system(s) {unknown}; pick from {ALL_SYSTEMS}")
    return systems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serving_benchmark.py",
        description="Same ONNX model, same requests: in-process ONNX Runtime vs the xdrec scorer "
        "(Predict, v2; batching off/on) vs a PyTorch-eager gRPC server vs MLServer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--repo", type=Path, help="model repository (default: train + export one)")
    p.add_argument("--run", type=Path, help="training run (model.pt for torch, features.tsv)")
    p.add_argument("--model", help="model name in the repository (default: the only one)")
    p.add_argument("--features", type=Path, help="features.tsv (default: the run's / repo's)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where to train")
    p.add_argument("--train-epochs", type=int, default=5, help="epochs when training here")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument("--systems", type=parse_systems, default=list(ALL_SYSTEMS))
    p.add_argument("--concurrency", type=parse_levels, default=[1, 4, 16, 64])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per level")
    p.add_argument("--users", type=int, default=256, help="distinct requests (real users)")
    p.add_argument("--candidates", type=int, default=100, help="candidates per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="concurrent inference runs per server")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT / torch threads per run")
    p.add_argument("--mlserver-workers", type=int, default=2, help="MLServer parallel_workers")
    p.add_argument(
        "--scorer-access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep the scorer's per-RPC JSON access log (the peers log nothing per request)",
    )
    p.add_argument(
        "--scorer-arg", action="append", default=[], help="extra scorer flag (repeatable)"
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of every call")
    p.add_argument("--check-requests", type=int, default=16, help="responses checked vs ORT")
    p.add_argument("--quick", action="store_true", help="smoke run: levels 1,16; 2 s; 0.5 s")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        defaults = build_parser().parse_args([])
        if args.concurrency == defaults.concurrency:
            args.concurrency = [1, 16]
        if args.duration == defaults.duration:
            args.duration = 2.0
        if args.warmup == defaults.warmup:
            args.warmup = 0.5
    if args.duration <= 0 or args.duration > 600 or args.warmup < 0:
        print("error: --duration must be in (0, 600] s, --warmup >= 0", file=sys.stderr)
        return 2
    args.out = args.out.resolve()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
