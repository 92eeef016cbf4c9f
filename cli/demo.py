"""``xdrec demo``: the whole path once, on the embedded MovieLens-100K default.

Trains the transfer model and its baselines (table printed), exports and publishes it, starts
the three services as separate processes on free loopback ports, asks the ranker for
recommendations for a few warm users, a held-out cold-start user and an unknown user, prints
them with titles, scores and model version, measures Recommend latency, and shuts everything
down. Torch is imported only here, never by the services.

With ``--feature-store redis`` (``make demo-redis``) the encoder reads histories from a private
``redis-server`` the demo starts (AOF on, fsync on every write; or an existing server with
``--redis-url``) after bulk-loading the trainer's snapshot into it, and a last step records events
live through the ranker: a new user goes UNKNOWN -> COLD_START -> WARM on the very next Recommend,
the item just bought is excluded at once, and ForgetUser makes the user UNKNOWN again.
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
    parser.add_argument(
        "--feature-store",
        choices=("memory", "redis"),
        default="memory",
        help="memory (default: the snapshot in the encoder's memory) or redis (starts a private "
        "redis-server, loads the snapshot, records events live)",
    )
    parser.add_argument(
        "--redis-url",
        default="",
        help="with --feature-store redis: use this running server instead of starting one "
        "(its keys under the prefix 'xdrec-demo' are overwritten)",
    )
    parser.set_defaults(handler=run)


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)), flush=True)


DEMO_PREFIX = "xdrec-demo"
"""Redis key prefix of the demo, so it never mixes with another deployment's keys."""
PREFIX = ["--redis-prefix", DEMO_PREFIX]


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    redis = None
    if args.feature_store == "redis" and not args.redis_url:
        from cli.local_redis import LocalRedis, RedisMissing, redis_binary

        try:
            redis_binary()  # before training: a missing binary fails in a second
        except RedisMissing as exc:
            print(f"xdrec demo --feature-store redis: {exc}; or pass --redis-url", file=sys.stderr)
            return 2
        redis = LocalRedis(args.workdir / "redis", aof=True)
    try:
        return _run(args, started, redis)
    finally:
        if redis is not None:
            redis.stop()
            print("redis-server stopped.")


def _run(args: argparse.Namespace, started: float, redis) -> int:
    from export.exporter import ExportOptions, export_run
    from trainer.config import ExperimentConfig
    from trainer.data import load_dataset
    from trainer.experiment import run_experiment
    from trainer.splits import split_dataset

    config = ExperimentConfig.load(args.config)
    if args.seeds:
        config.train.seeds = args.seeds
    run_dir, repo = args.workdir / "run", args.workdir / "model_repo"

    live = int(args.feature_store == "redis")
    banner(
        f"1/{4 + live} train on {config.data.dataset}: baselines + {config.train.strategy}, seeds {config.train.seeds}"
    )
    split = split_dataset(load_dataset(config.data), config.data, config.split)
    run_experiment(config, run_dir, split=split)
    print((run_dir / "results.md").read_text())

    banner(f"2/{4 + live} export to ONNX and publish")
    version_dir = export_run(ExportOptions(run_dir, repo, config.name))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    live = args.feature_store == "redis"
    if live:
        url = args.redis_url or redis.start().url
        banner(f"3/5 feature store: Redis at {url}, loading the trainer's snapshot")
        from cli import main as xdrec

        features = str(run_dir / "features.tsv")
        if xdrec.main(["features", "load", features, "--redis-url", url, *PREFIX]) != 0:
            return 1
        # `serve all` passes no store flags: its children read every flag from XDREC_<FLAG>
        env |= {"XDREC_FEATURE_STORE": "redis", "XDREC_REDIS_URL": url}
        env["XDREC_REDIS_PREFIX"] = DEMO_PREFIX
        # The read bound is 50 ms by default (production: a dedicated Redis next to the
        # encoder); a laptop that just trained a model, sharing its cores, needs more headroom.
        env["XDREC_REDIS_TIMEOUT_S"] = "0.25"
    banner(f"{3 + live}/{4 + live} start encoder, scorer and ranker")
    ports = {name: free_loopback_port() for name in ENDPOINTS}
    command = [
        sys.executable, "-m", "cli", "serve", "all",
        "--model-repo", str(repo), "--model", config.name, "--features", str(run_dir / "features.tsv"),
        "--encoder-port", str(ports["encoder"]), "--scorer-port", str(ports["scorer"]),
        "--ranker-port", str(ports["ranker"]), "--metrics", "false", "--log-level", "WARNING",
    ]  # fmt: skip
    shown = "".join(f"{k}={env[k]} " for k in sorted(env) if k.startswith("XDREC_"))
    print(shown + "xdrec " + " ".join(command[3:]), flush=True)  # what a person would type
    supervisor = subprocess.Popen(command, env=env)
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
        steps = 4 + (args.feature_store == "redis")
        banner(f"4/{steps} recommendations through the ranker")
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
        if args.feature_store == "redis":
            banner("5/5 live events through the ranker (RecordEvents), stored in Redis")
            _live_events(stub, split, args.k)
    print(f"model served: {version_dir}; demo wall time {time.perf_counter() - started:.0f} s")
    return 0


def _live_events(stub, split, k: int) -> None:
    """A new user's first clicks change the very next Recommend (nothing is retrained)."""
    from xdrec.common.v1 import events_pb2
    from xdrec.ranker.v1 import ranker_pb2

    from cli.serving.recommend import format_table

    user = f"live-user-{os.getpid()}"

    def recommend(step: str) -> ranker_pb2.RecommendResponse:
        response = stub.Recommend(ranker_pb2.RecommendRequest(user_id=user, k=k), timeout=5)
        print(f"\n[{step}]")
        print(format_table(response, user))
        return response

    def record(domain: str, items: list[str], kind: int) -> float:
        events = [
            events_pb2.UserEvent(event_id=f"{user}-{domain}-{item}", domain=domain, item_id=item,
                                 kind=kind, timestamp=time.time())
            for item in items
        ]  # fmt: skip
        t0 = time.perf_counter()
        ack = stub.RecordEvents(
            events_pb2.RecordEventsRequest(user_id=user, events=events), timeout=5
        )
        print(f"  RecordEvents: {ack.accepted} accepted, {ack.duplicates} duplicates")
        return t0

    def visible_ms(t0: float) -> str:
        return f"{(time.perf_counter() - t0) * 1000:.1f} ms from RecordEvents to this answer"

    recommend(f"{user}: unknown to both domains")
    cold = split.test["cold"]
    source = [split.source_vocab.ids[i] for i in cold.source_histories[0][-5:]]
    titles = [split.source_titles[i] for i in cold.source_histories[0][-5:]]
    print(f"\n  {user} clicks 5 source-domain items: {titles}")
    t0 = record("source", source, events_pb2.EVENT_KIND_CLICK)
    after = recommend("after 5 source clicks: cold-start transfer path")
    print(f"  {visible_ms(t0)}")
    bought = after.items[0]
    print(
        f"\n  {user} buys the top item, {bought.title!r} ({bought.item_id}), in the target domain"
    )
    t0 = record("target", [bought.item_id], events_pb2.EVENT_KIND_PURCHASE)
    warm = recommend("after 1 target purchase: warm")
    shown = [i.item_id for i in warm.items]
    print(
        f"  {visible_ms(t0)}; {bought.item_id} excluded at once: "
        f"{'yes' if bought.item_id not in shown else 'NO'}"
    )
    forgotten = stub.ForgetUser(events_pb2.ForgetUserRequest(user_id=user), timeout=5)
    print(f"\n  ForgetUser({user}): {forgotten.deleted_events} events deleted")
    recommend("after ForgetUser: unknown again")
