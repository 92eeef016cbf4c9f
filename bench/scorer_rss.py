"""Resident memory of a real scorer process under large Predict requests (docs: memory budget).

Starts ``python -m services.scorer`` on a model repository (the small test model built in a
temporary directory unless ``--model-repo`` is given), waits for SERVING, then runs ``--rounds``
rounds of 3 sequential and 4 concurrent requests of ``--candidates`` candidates and prints the
process's RSS after every round and its peak (VmHWM) as one JSON object. Extra scorer flags go
after ``--``, e.g. the pre-hardening allocator settings:

    .venv/bin/python bench/scorer_rss.py --candidates 4194000 -- \\
        --cpu-mem-arena --malloc-threshold-kb 0 --max-request-bytes 67108864
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from xdrec.common.v1 import tensor_pb2  # noqa: E402
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc  # noqa: E402

from services.common.tensors import to_proto  # noqa: E402


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} missing")


def request(model: str, candidates: int) -> scorer_pb2.PredictRequest:
    arrays = {
        "src_items": np.array([[1, 2]], dtype=np.int64),
        "src_mask": np.ones((1, 2), dtype=np.float32),
        "tgt_items": np.array([[1]], dtype=np.int64),
        "tgt_mask": np.ones((1, 1), dtype=np.float32),
        "candidates": np.random.default_rng(0).integers(1, 21, (1, candidates), dtype=np.int64),
    }
    return scorer_pb2.PredictRequest(
        model=tensor_pb2.ModelRef(name=model),
        inputs=[to_proto(name, array) for name, array in arrays.items()],
    )


def wait_serving(channel: grpc.Channel, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the scorer exited with {process.returncode}")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise SystemExit("the scorer never reported SERVING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repo", default="", help="repository (default: build the test one)")
    parser.add_argument("--model", default="tiny-xd")
    parser.add_argument("--candidates", type=int, default=1_048_571)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--port", type=int, default=18431)
    parser.add_argument("scorer_flags", nargs="*", help="extra scorer flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repo = args.model_repo
        if not repo:
            from tests.fixtures.model_repo import build_model_repo

            repo = str(build_model_repo(Path(scratch), versions=1).root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
        command = [
            sys.executable, "-m", "services.scorer", "--model-repo", repo,
            "--host", "127.0.0.1", "--port", str(args.port), "--metrics-port", "0",
            "--providers", "cpu", "--log-level", "WARNING", *args.scorer_flags,
        ]  # fmt: skip
        process = subprocess.Popen(command, cwd=ROOT, env=env)
        report: dict = {"candidates": args.candidates, "scorer_flags": args.scorer_flags}
        try:
            address = f"127.0.0.1:{args.port}"
            options = [
                ("grpc.max_send_message_length", 128 << 20),
                ("grpc.max_receive_message_length", 128 << 20),
            ]
            with grpc.insecure_channel(address, options=options) as channel:
                wait_serving(channel, process, 120)
                stub = scorer_pb2_grpc.ScorerServiceStub(channel)
                stub.Predict(request(args.model, 3), timeout=30)
                report["rss_before_mb"] = round(rss_mb(process.pid))
                big = request(args.model, args.candidates)
                rounds, statuses = [], []

                def call(_: int) -> str:
                    try:
                        stub.Predict(big, timeout=120)
                        return "OK"
                    except grpc.RpcError as exc:
                        return exc.code().name

                for number in range(args.rounds):
                    statuses += [call(0) for _ in range(3)]
                    with ThreadPoolExecutor(4) as pool:
                        statuses += list(pool.map(call, range(4)))
                    time.sleep(0.3)
                    rounds.append(round(rss_mb(process.pid)))
                    print(f"round {number + 1}: RSS {rounds[-1]} MB", file=sys.stderr)
                report["rss_after_round_mb"] = rounds
                report["rss_peak_mb"] = round(rss_mb(process.pid, "VmHWM"))
                report["statuses"] = {s: statuses.count(s) for s in sorted(set(statuses))}
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
