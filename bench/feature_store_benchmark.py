#!/usr/bin/env python3
"""Feature store benchmark: memory vs Redis, on the MovieLens-1M feature snapshot.

    python bench/feature_store_benchmark.py --out bench/results/feature_store

Measures, in one run and on the same rows:

1. bulk load of the ML-1M snapshot (the trainer's split of the embedded dataset) into a private
   ``redis-server`` (AOF on, ``--appendfsync always`` by default, the durable setting
   RecordEvents' acknowledgement relies on, or ``everysec``): events per second and memory;
2. the store read of one Encode (source + target history of one user): p50 / p99, memory vs
   Redis, sequential and with 32 concurrent readers;
3. event-to-visible latency: open-loop 200 appends/s (RecordEvents' store write) mixed with
   200 reads/s; per event, from sending the append to the end of the first read after its
   acknowledgement, which must contain it (writes are synchronous: the first read sees it).

It drives the store classes directly (no gRPC), so the figures isolate the store; the gRPC hop is
the same for both backends. Writes JSON (and a PNG when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.encoder.bulk_load import load_snapshot  # noqa: E402
from services.encoder.feature_store import (  # noqa: E402
    FeatureStoreConfig,
    FeatureStoreUnavailable,
    StoredEvent,
)
from services.encoder.memory_store import InMemoryFeatureStore  # noqa: E402
from services.encoder.redis_store import RedisFeatureStore  # noqa: E402
from tests.fixtures.redis_server import RedisServer  # noqa: E402

DOMAINS = ("source", "target")


def ml1m_rows() -> list[tuple[str, str, str, float]]:
    """The ML-1M feature rows exactly as ``xdrec train`` writes them to features.tsv."""
    from trainer.config import ExperimentConfig
    from trainer.data import load_dataset
    from trainer.splits import split_dataset

    config = ExperimentConfig()
    config.data.dataset = "ml-1m"
    raw = load_dataset(config.data)
    return split_dataset(raw, config.data, config.split).feature_rows


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def read_latency(store, users: list[str], requests: int, concurrency: int) -> dict:
    samples: list[float] = []
    queue = iter(random.Random(0).choices(users, k=requests))

    async def worker() -> None:
        for user in queue:
            start = time.perf_counter()
            await store.histories(user, DOMAINS)
            samples.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return percentiles(samples)


async def event_to_visible(store, users: list[str], rate: float, seconds: float) -> dict:
    """Open loop: ``rate`` appends/s and ``rate`` reads/s for ``seconds``."""
    visible: list[float] = []
    reads: list[float] = []
    errors = {"append": 0, "read": 0}
    rng = random.Random(1)
    start = time.perf_counter()
    tasks = []

    async def append(i: int) -> None:
        user = rng.choice(users)
        item = f"bench-{i}"
        t0 = time.perf_counter()
        try:
            event = StoredEvent(f"bench-{i}", "target", item, time.time(), "click")
            await store.append(user, [event])
            history = await store.histories(user, DOMAINS)
        except FeatureStoreUnavailable:  # over its bound: counted, not measured
            errors["append"] += 1
            return
        assert item in history["target"].items, "an acknowledged event was not visible"
        visible.append(time.perf_counter() - t0)

    async def read() -> None:
        t0 = time.perf_counter()
        try:
            await store.histories(rng.choice(users), DOMAINS)
        except FeatureStoreUnavailable:
            errors["read"] += 1
            return
        reads.append(time.perf_counter() - t0)

    count = int(rate * seconds)
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(append(i)))
        tasks.append(asyncio.create_task(read()))
    await asyncio.gather(*tasks)
    return {
        "event_to_visible": percentiles(visible) if visible else {},
        "mixed_reads": percentiles(reads) if reads else {},
        "over_bound": errors,
    }


async def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    rows = ml1m_rows()
    print(f"ML-1M feature rows: {len(rows):,} ({time.perf_counter() - t0:.1f} s to build)")
    users = sorted({row[0] for row in rows})
    result: dict = {"rows": len(rows), "users": len(users), "appendfsync": args.appendfsync}

    memory = InMemoryFeatureStore.from_events(rows)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(directory=Path(tmp), aof=True, appendfsync=args.appendfsync)
        server.start()
        try:
            config = FeatureStoreConfig(backend="redis", redis_url=server.url, redis_timeout_s=5.0)
            redis = RedisFeatureStore.from_config(config)
            before = await redis.memory_used()

            def progress(p) -> None:
                print(f"  load: {p.rows:>9,} rows {p.rows_per_s:>9,.0f} events/s")

            loaded = await load_snapshot(redis, rows, progress=progress)
            after = await redis.memory_used()
            result["bulk_load"] = {
                "rows": loaded.rows,
                "seconds": round(loaded.seconds, 2),
                "events_per_s": round(loaded.rows_per_s),
                "redis_used_memory_mib": round((after - before) / 2**20, 1),
            }
            print(f"bulk load: {result['bulk_load']}")
            for name, store in (("memory", memory), ("redis", redis)):
                for concurrency in (1, 32):
                    key = f"read_{name}_c{concurrency}"
                    result[key] = await read_latency(store, users, args.reads, concurrency)
                    print(f"{key}: {result[key]}")
            for name, store in (("memory", memory), ("redis", redis)):
                key = f"mixed_{name}"
                result[key] = await event_to_visible(store, users, args.rate, args.seconds)
                print(f"{key}: {result[key]}")
            await redis.close()
        finally:
            server.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/feature_store")
    parser.add_argument("--reads", type=int, default=5000, help="reads per latency measurement")
    parser.add_argument("--rate", type=float, default=200.0, help="appends/s and reads/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="mixed-load duration")
    parser.add_argument(
        "--appendfsync", choices=("always", "everysec"), default="always", help="Redis AOF policy"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=1.0, help="Redis read bound (writes: 1 s, as served)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "feature_store.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [k for k in result if k.startswith("read_")]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar([f"{k[5:]}\np50" for k in labels], [result[k]["p50_ms"] for k in labels])
        ax.bar([f"{k[5:]}\np99" for k in labels], [result[k]["p99_ms"] for k in labels])
        ax.set_ylabel("ms per Encode's store read (log)")
        ax.set_yscale("log")
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title("feature store read latency, ML-1M snapshot")
        fig.tight_layout()
        fig.savefig(out / "feature_store.png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {out / 'feature_store.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
