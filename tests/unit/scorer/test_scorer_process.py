"""The services as real processes: stop signals from the first instant, bounded memory.

* A SIGTERM to any of the three services at any moment of start-up (before the imports are done, while the model loads,
  once serving) stops the process cleanly: exit code 0, promptly. A handler installed only after
  the slow imports left the first fraction of a second unguarded (PID 1 in a container ignored it).
* Requests of the largest size the limits allow (``--max-request-bytes``), one after the other
  and concurrently (merged by the batcher up to ``--max-batch-bytes``), leave the process's
  resident memory within ``RSS_GROWTH_BOUND_MB`` of what it was before, and its peak within
  ``RSS_PEAK_BOUND_MB``: the bound documented as the scorer's memory budget for this model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from xdrec.scorer.v1 import scorer_pb2_grpc

from services.common.endpoints import free_loopback_ports
from services.scorer.config import ScorerConfig
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.scorer_requests import predict, valid_arrays
from tests.fixtures.servers import health_status

ROOT = Path(__file__).resolve().parents[3]
SERVING = health_pb2.HealthCheckResponse.SERVING

RSS_GROWTH_BOUND_MB = 96
"""Resident memory the first rounds of max-size requests may leave behind (allocator pools,
gRPC buffers)."""
RSS_ROUND_BOUND_MB = 40
"""Growth of the last round over the highest earlier round: memory is flat once warm (nothing
accumulates per request). Why not tighter: a round ends with 4 concurrent 8 MiB requests, whose
receive and decode buffers (~32 MiB) the allocator may keep after one round and return after the
next (measured on a quiet machine: rounds 142 -> 141 -> 170 -> 166 MB, then 151 -> 159 -> 146 MB);
a leak of every request body (7 x 8 MiB a round) is still over it."""
RSS_PEAK_BOUND_MB = 512
"""Peak resident memory growth while max-size requests run, 4 at once (merged batch included)."""
ROUNDS = 4
"""Rounds of 3 sequential then 4 concurrent max-size requests."""


def scorer_command(repo: BuiltRepo, port: int) -> list[str]:
    return [
        sys.executable, "-m", "services.scorer",
        "--model-repo", str(repo.root), "--port", str(port), "--host", "127.0.0.1",
        "--metrics-port", "0", "--providers", "cpu", "--intra-op-threads", "1",
        "--warmup-runs", "1", "--grace-period-s", "1", "--log-level", "WARNING",
    ]  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}


def service_command(service: str, repo: BuiltRepo, port: int) -> list[str]:
    """``python -m services.<service>`` on a loopback port (the ranker's dependencies are
    unreachable: it starts, stays NOT_SERVING and must still stop on SIGTERM)."""
    if service == "scorer":
        return scorer_command(repo, port)
    common = ["--port", str(port), "--host", "127.0.0.1", "--metrics-port", "0",
              "--grace-period-s", "1", "--log-level", "WARNING"]  # fmt: skip
    if service == "encoder":
        extra = ["--model-repo", str(repo.root), "--features", str(repo.features_path)]
    else:
        extra = ["--encoder", "127.0.0.1:1", "--scorer", "127.0.0.1:1"]
    return [sys.executable, "-m", f"services.{service}", *common, *extra]


@contextmanager
def scorer_process(
    repo: BuiltRepo, port: int, service: str = "scorer"
) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        service_command(service, repo, port),
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if health_status(address, timeout=1.0) == SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"scorer at {address} never reported SERVING")


def interpreter_start_s() -> float:
    """How long this machine takes to start a bare Python (``-c pass``): before that no program
    code runs, so no handler can exist and the signal's default action ends the process (as
    PID 1 in a container the signal would be ignored: run the service under an init)."""
    timings = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=clean_env())
        timings.append(time.monotonic() - started)
    return min(timings)


AFTER_INTERPRETER_S = (0.1, 0.2, 0.4, 0.8)
"""Delays after the bare interpreter start-up: inside the imports of grpc and ONNX Runtime and
the model load, where the handler used to be missing."""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service", ["scorer", "encoder", "ranker"])
def test_sigterm_at_any_moment_of_start_up_stops_cleanly(repo: BuiltRepo, service: str) -> None:
    bare = interpreter_start_s()
    cases: list[float | None] = [0.0, *(bare + d for d in AFTER_INTERPRETER_S)]
    cases.append(None if service != "ranker" else bare + 2.0)  # the ranker never gets SERVING
    for delay_s in cases:  # None = once SERVING
        (port,) = free_loopback_ports(1)
        with scorer_process(repo, port, service) as process:
            if delay_s is None:
                wait_serving(f"127.0.0.1:{port}", process)
            else:
                time.sleep(delay_s)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=30)
            waited = time.monotonic() - signalled
            stderr = process.stderr.read() if process.stderr else ""
        where = f"{service}: SIGTERM after {delay_s} s (bare interpreter {bare:.3f} s)"
        if delay_s == 0.0:  # the interpreter itself may not have started yet
            assert returncode in (0, -signal.SIGTERM), (where, returncode, stderr[-2000:])
        else:
            assert returncode == 0, (where, returncode, stderr[-2000:])
        assert waited < 10, (where, waited)
        assert "Traceback" not in stderr, (where, stderr[-2000:])


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def max_size_request():
    """Candidates filling the default byte limit (the other inputs are a few bytes)."""
    arrays = valid_arrays()
    others = sum(a.nbytes for name, a in arrays.items() if name != "candidates")
    count = (ScorerConfig().max_request_bytes - others) // 8
    rng = np.random.default_rng(0)
    arrays["candidates"] = rng.integers(1, 21, size=(1, count), dtype=np.int64)
    return predict(arrays), count


@pytest.mark.timeout(240)
def test_max_size_requests_leave_rss_within_the_bound(repo: BuiltRepo) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read the process's resident memory")
    (port,) = free_loopback_ports(1)
    address = f"127.0.0.1:{port}"
    request, count = max_size_request()
    with scorer_process(repo, port) as process:
        wait_serving(address, process)
        with grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            stub.Predict(predict(), timeout=30)  # first-call allocations are not the request's
            before = rss_kb(process.pid)
            after_round = []
            for _ in range(ROUNDS):
                for _ in range(3):
                    scores = stub.Predict(request, timeout=60).outputs[0]
                    assert list(scores.shape) == [1, count]
                with ThreadPoolExecutor(4) as pool:
                    done = list(pool.map(lambda _: stub.Predict(request, timeout=60), range(4)))
                assert all(list(r.outputs[0].shape) == [1, count] for r in done)
                time.sleep(0.3)
                after_round.append(rss_kb(process.pid))
            after = after_round[-1]
            peak = rss_kb(process.pid, "VmHWM")
    growth_mb, peak_mb = (after - before) / 1024, (peak - before) / 1024
    print(
        f"scorer RSS before {before / 1024:.0f} MB, after {after / 1024:.0f} MB "
        f"(+{growth_mb:.0f} MB), peak {peak / 1024:.0f} MB (+{peak_mb:.0f} MB); "
        f"per round {[round(kb / 1024) for kb in after_round]} MB; request {count} candidates"
    )
    # Flat once warm: the last round stays within the bound of the highest earlier round (RSS
    # moves up and down by a few MB as the allocator returns memory; only a new high counts).
    last_round_mb = (after_round[-1] - max(after_round[:-1])) / 1024
    assert last_round_mb <= RSS_ROUND_BOUND_MB, after_round
    assert growth_mb <= RSS_GROWTH_BOUND_MB, (before, after, peak)
    assert peak_mb <= RSS_PEAK_BOUND_MB, (before, after, peak)
