#!/usr/bin/env python3
"""Feature store benchmark: memory vs Redis, on the MovieLens-1M feature snapshot.

    OMP_NUM_THREADS=1 nice -n 5 python bench/feature_store_benchmark.py \
        --out docs/results/features --appendfsync everysec   # and --appendfsync always

Measures, in one run and on the same rows:

1. bulk load of the ML-1M snapshot (the trainer's split of the embedded dataset) into a private
   ``redis-server`` (AOF on, ``--appendfsync always`` by default, the durable setting
   RecordEvents' acknowledgement relies on, or ``everysec``): events per second and memory;
2. the store read of one Encode (source + target history of one user): p50 / p99, memory vs
   Redis, sequential and with 32 concurrent readers;
3. event-to-visible latency: open-loop 200 appends/s (RecordEvents' store write) mixed with
   200 reads/s; per event, from sending the append to the end of the first read after its
   acknowledgement, which must contain it (writes are synchronous: the first read sees it);
   and how many connections Redis accepted meanwhile (0: no reconnects per request);
4. client CPU per Redis read, the store's read (raw ZRANGEs on one pooled connection) against
   the ``client.pipeline()`` read it replaced, on the same users in the same run
   (``process_time`` per read: CPU is what a loaded machine cannot hide, unlike wall time), and
   Redis's own CPU per read for both (``INFO commandstats``).

It drives the store classes directly (no gRPC), so the figures isolate the store; the gRPC hop is
the same for both backends. Writes JSON (and a PNG when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.local_redis import LocalRedis  # noqa: E402
from services.encoder.bulk_load import load_snapshot  # noqa: E402
from services.encoder.feature_store import (  # noqa: E402
    EMPTY,
    FeatureStoreConfig,
    FeatureStoreUnavailable,
    History,
    StoredEvent,
)
from services.encoder.memory_store import InMemoryFeatureStore  # noqa: E402
from services.encoder.redis_store import RedisFeatureStore, parse_member  # noqa: E402

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


async def event_to_visible(
    store, users: list[str], rate: float, seconds: float, read: Callable | None = None
) -> dict:
    """Open loop: ``rate`` appends/s and ``rate`` reads/s for ``seconds``; ``read(user)``
    replaces ``store.histories`` (the A/B against the previous read)."""
    histories = read or (lambda user: store.histories(user, DOMAINS))
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
            history = await histories(user)
        except FeatureStoreUnavailable:  # over its bound: counted, not measured
            errors["append"] += 1
            return
        assert item in history["target"].items, "an acknowledged event was not visible"
        visible.append(time.perf_counter() - t0)

    async def read() -> None:
        t0 = time.perf_counter()
        try:
            await histories(rng.choice(users))
        except FeatureStoreUnavailable:
            errors["read"] += 1
            return
        reads.append(time.perf_counter() - t0)

    count = int(rate * seconds)
    cpu = time.process_time()
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(append(i)))
        tasks.append(asyncio.create_task(read()))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    return {
        # CPU the client process used per second of the run: on a shared machine a value near
        # the core share it can get means the latencies measure CPU starvation, not the store.
        "client_cpu_cores": round((time.process_time() - cpu) / wall, 2),
        "seconds": round(wall, 1),
        "event_to_visible": percentiles(visible) if visible else {},
        "mixed_reads": percentiles(reads) if reads else {},
        "over_bound": errors,
    }


async def pipeline_histories(store: RedisFeatureStore, user: str) -> dict[str, History]:
    """The read as the store did it before: redis-py's ``pipeline()`` with two ZRANGEs and the
    same parsing (kept here only as the comparison)."""
    async with store.client.pipeline(transaction=False) as pipe:
        for domain in DOMAINS:
            pipe.zrange(store.history_key(user, domain), 0, -1, withscores=True)
        replies = await pipe.execute()
    return {
        domain: History(
            items=tuple(parse_member(raw)[2] for raw, _ in reply),
            timestamps=tuple(float(score) for _, score in reply),
        )
        if reply
        else EMPTY
        for domain, reply in zip(DOMAINS, replies, strict=True)
    }


async def read_cpu(store: RedisFeatureStore, users: list[str], reads: int) -> dict:
    """Client CPU per read (us), the store's read vs ``pipeline()``, alternating rounds; the
    best round of each (the least disturbed by other processes)."""
    sample = random.Random(2).choices(users, k=reads)
    for user in sample[:50]:
        assert await store.histories(user, DOMAINS) == await pipeline_histories(store, user)
    best = {"store": float("inf"), "pipeline": float("inf")}
    for _ in range(3):
        for name in best:
            start = time.process_time()
            for user in sample:
                if name == "store":
                    await store.histories(user, DOMAINS)
                else:
                    await pipeline_histories(store, user)
            best[name] = min(best[name], (time.process_time() - start) / reads * 1e6)
    stats = await store.client.info("commandstats")
    return {
        "store_us": round(best["store"]),
        "pipeline_us": round(best["pipeline"]),
        "ratio": round(best["store"] / best["pipeline"], 2),
        # both reads send the same two ZRANGEs: Redis's cost per read is the same
        "redis_server_us_per_read": round(2 * stats["cmdstat_zrange"]["usec_per_call"], 1),
    }


async def connections_received(store: RedisFeatureStore) -> int:
    info = await store.client.info("stats")
    return int(info["total_connections_received"])


async def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    rows = ml1m_rows()
    print(f"ML-1M feature rows: {len(rows):,} ({time.perf_counter() - t0:.1f} s to build)")
    users = sorted({row[0] for row in rows})
    result: dict = {
        "rows": len(rows),
        "users": len(users),
        "appendfsync": args.appendfsync,
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }

    memory = InMemoryFeatureStore.from_events(rows)
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalRedis(directory=Path(tmp), aof=True, appendfsync=args.appendfsync)
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
            result["read_cpu_redis"] = await read_cpu(redis, users, min(args.reads, 2000))
            print(f"read_cpu_redis: {result['read_cpu_redis']}")
            key = "mixed_memory"
            result[key] = await event_to_visible(memory, users, args.rate, args.seconds)
            print(f"{key}: {result[key]}")
            # A B A B: the store's read and the previous pipeline read, interleaved, same run
            previous = lambda user: pipeline_histories(redis, user)  # noqa: E731
            for round_ in (1, 2):
                for key, read in (("mixed_redis", None), ("mixed_redis_pipeline_read", previous)):
                    key = key if round_ == 1 else f"{key}_round2"
                    before = await connections_received(redis)
                    result[key] = await event_to_visible(
                        redis, users, args.rate, args.seconds, read
                    )
                    result[key]["connections_opened"] = await connections_received(redis) - before
                    print(f"{key}: {result[key]}")
            await redis.close()
        finally:
            server.stop()
    result["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/features")
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
    stem = f"feature_store_{args.appendfsync}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [k for k in result if k.startswith("read_") and "p50_ms" in result[k]]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.bar([f"{k[5:]}\np50" for k in labels], [result[k]["p50_ms"] for k in labels])
        ax.bar([f"{k[5:]}\np99" for k in labels], [result[k]["p99_ms"] for k in labels])
        ax.set_ylabel("ms per Encode's store read (log)")
        ax.set_yscale("log")
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"feature store read latency, ML-1M snapshot (appendfsync {args.appendfsync})")
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {out / stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
