"""Closed-loop measurement: N callers, each sends its next request when the previous answer
arrives; latency percentiles and CPU time per request of client, server and everything else.

Why CPU accounting next to latency: on a small machine the load generator and the server share
the cores, so the client's CPU per request and the machine's other busy time say how much of a
figure is the server's own. Every loop is bounded by its clock and by a request count.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.serving.workload import decode_predict, decode_v2
from services.common.endpoints import SCORER

if TYPE_CHECKING:
    from bench.serving.peers import Server

PREDICT = f"/{SCORER.health_name}/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_REQUESTS_PER_LEVEL = 2_000_000  # a hard bound on every measurement loop besides its clock


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


PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def session_providers(spec: str) -> list:
    """``cpu`` / ``cuda`` / ``tensorrt`` -> ORT's provider list, CPU last, with the options the
    scorer uses (services/scorer/providers.py: device 0, nothing else), so in-process ORT and the
    scorer run the same kernels; FP16 comes from the graph (``xdrec export --variant fp16``)."""
    chosen: list = []
    for token in (t.strip().lower() for t in spec.split(",") if t.strip()):
        name = PROVIDER_NAMES[token]
        if name != "CPUExecutionProvider":
            chosen.append((name, {"device_id": "0"}))
    return [*chosen, "CPUExecutionProvider"]


def ort_session(model_path: Path, intra_op_threads: int, providers: str = "cpu"):
    """In-process ONNX Runtime with the benchmark's threading; refuses to fall back silently:
    when the first provider asked for is not the one the session uses, it raises."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    wanted = session_providers(providers)
    session = ort.InferenceSession(str(model_path), options, providers=wanted)
    first = wanted[0][0] if isinstance(wanted[0], tuple) else wanted[0]
    if session.get_providers()[0] != first:
        raise RuntimeError(
            f"ONNX Runtime runs {session.get_providers()} instead of {first}: the provider is "
            "not usable here (see bench/gpu_serving.sh --check)"
        )
    return session


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


def measure_ort(
    session,
    inputs: list[dict[str, np.ndarray]],
    system: str,
    concurrency: int,
    duration: float,
    warmup: float,
) -> Level:
    """One in-process level (``ort-loop`` / ``ort-pool``): the reference every ratio uses."""
    lat, errors, cpu, other = measure_in_process(session, inputs, concurrency, duration, warmup)
    level = summarize(system, "in-process", concurrency, duration, lat, errors, cpu, cpu)
    level.other_cpu_cores = other
    level.max_abs_diff_vs_ort = 0.0
    return level


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


def check_outputs(
    decode: Callable[[bytes], np.ndarray],
    replies: list[bytes],
    expected: list[np.ndarray],
) -> float:
    return max(
        float(np.max(np.abs(decode(reply) - want)))
        for reply, want in zip(replies, expected, strict=True)
    )


async def measure_server(
    server: Server,
    payloads: dict[str, list[bytes]],
    expected: list[np.ndarray],
    *,
    concurrency: Sequence[int],
    duration: float,
    warmup: float,
    timeout_s: float,
    report: Callable[[Level], None],
) -> list[Level]:
    """Every API of ``server`` at every concurrency, after checking its first answers against
    in-process ORT; ``report`` sees each level as soon as it is measured."""
    import grpc

    levels: list[Level] = []
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        for api in server.apis:
            method = PREDICT if api == "predict" else MODEL_INFER
            stub = channel.unary_unary(method)  # bytes in, bytes out: no client-side (de)coding

            async def call(payload: bytes, stub=stub) -> bytes:
                return await stub(payload, timeout=timeout_s)

            decode = decode_predict if api == "predict" else decode_v2
            checked = [await call(p) for p in payloads[api][: len(expected)]]
            diff = check_outputs(decode, checked, expected)
            for callers in concurrency:
                lat, errors, client_cpu, server_cpu, other = await measure_grpc(
                    call, payloads[api], callers, duration, warmup, server.proc.pid
                )
                level = summarize(
                    server.name, api, callers, duration, lat, errors, client_cpu, server_cpu
                )
                level.other_cpu_cores = other
                level.max_abs_diff_vs_ort = diff
                levels.append(level)
                report(level)
    return levels
