"""``xdrec demo``: the whole path once, on the embedded MovieLens-100K default.

Trains the transfer model and its baselines (table printed), exports and publishes it, starts
the three services as separate processes on free loopback ports, asks the ranker for
recommendations for a few warm users, a held-out cold-start user and an unknown user, prints
them with titles, scores and model version, measures Recommend latency, and shuts everything
down. Torch is imported only here, never by the services.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from services.common.endpoints import ENDPOINTS, LOOPBACK, free_loopback_port
from trainer.command import DEFAULT_CONFIG

# The composition root of the project: the one place that puts the trainer, the exporter and the
# three services together (train -> export -> `xdrec serve all` -> recommend -> shut down).


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on MovieLens-100K, export, serve the three services, recommend, shut down",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("artifacts/demo"),
        help="where the run and model repository go",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="experiment YAML (default: MovieLens-100K)",
    )
    parser.add_argument("--seeds", type=int, nargs="*", help="override the config's seeds")
    parser.add_argument("-k", type=int, default=5, help="items per user (default 5)")
    parser.add_argument(
        "--latency-calls", type=int, default=200, help="Recommend calls for the latency figure"
    )
    parser.set_defaults(handler=run)


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from export.exporter import ExportOptions, export_run
    from trainer.config import ExperimentConfig
    from trainer.data import load_dataset
    from trainer.experiment import run_experiment
    from trainer.splits import split_dataset

    config = ExperimentConfig.load(args.config)
    if args.seeds:
        config.train.seeds = args.seeds
    run_dir, repo = args.workdir / "run", args.workdir / "model_repo"

    banner(
        f"1/4 train on {config.data.dataset}: baselines + {config.train.strategy}, seeds {config.train.seeds}"
    )
    split = split_dataset(load_dataset(config.data), config.data, config.split)
    run_experiment(config, run_dir, split=split)
    print((run_dir / "results.md").read_text())

    banner("2/4 export to ONNX and publish")
    version_dir = export_run(ExportOptions(run_dir, repo, config.name))

    banner("3/4 start encoder, scorer and ranker")
    ports = {name: free_loopback_port() for name in ENDPOINTS}
    command = [
        sys.executable, "-m", "cli", "serve", "all",
        "--model-repo", str(repo), "--model", config.name, "--features", str(run_dir / "features.tsv"),
        "--encoder-port", str(ports["encoder"]), "--scorer-port", str(ports["scorer"]),
        "--ranker-port", str(ports["ranker"]), "--metrics", "false", "--log-level", "WARNING",
    ]  # fmt: skip
    print("xdrec " + " ".join(command[3:]), flush=True)  # what a person would type
    supervisor = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        return _ask(args, split, f"{LOOPBACK}:{ports['ranker']}", version_dir, started)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
        print("services stopped.")


def _ask(args, split, address: str, version_dir: Path, started: float) -> int:
    import grpc
    from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

    from cli.serving.recommend import format_table, wait_until_serving

    with grpc.insecure_channel(address) as channel:
        if not wait_until_serving(channel, timeout=120):
            print("the ranker did not become SERVING within 120 s")
            return 1
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        banner("4/4 recommendations through the ranker")
        warm = split.test["warm"]
        order = np.argsort([-len(h) for h in warm.target_histories])
        users = [("warm", warm.users[i], warm.labels[i]) for i in order[:3]]
        cold = split.test["cold"]
        users.append(("cold-start (held out: no target history)", cold.users[0], cold.labels[0]))
        users.append(("unknown to both domains", "new-user-0001", None))
        for kind, user, labels in users:
            response = stub.Recommend(
                ranker_pb2.RecommendRequest(user_id=user, k=args.k), timeout=5
            )
            print(f"\n[{kind}]")
            print(format_table(response, user))
            if labels is not None:
                relevant = {split.target_vocab.ids[i] for i in labels}
                hits = [item.title for item in response.items if item.item_id in relevant]
                print(
                    f"  later watched (held-out) among these: {len(hits)}/{len(response.items)} {hits}"
                )
        latencies = []
        request = ranker_pb2.RecommendRequest(user_id=users[0][1], k=10)
        for _ in range(10):
            stub.Recommend(request, timeout=5)
        for _ in range(args.latency_calls):
            t0 = time.perf_counter()
            stub.Recommend(request, timeout=5)
            latencies.append((time.perf_counter() - t0) * 1000)
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        n_items = len(split.target_vocab) - 1
        print(
            f"\nRecommend latency (warm user, whole catalogue of {n_items} items, k=10, sequential, "
            f"{args.latency_calls} calls): p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"
        )
    print(f"model served: {version_dir}; demo wall time {time.perf_counter() - started:.0f} s")
    return 0
