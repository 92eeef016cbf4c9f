#!/usr/bin/env python3
"""One load-generator process of the fault drill: Recommends open- or closed-loop, every answer
recorded, and what the generator itself could not keep up with.

    python bench/drill_generator.py JOB.json OUT.json

Why a process of its own (started by ``bench/fault_drill.py``, one or more, pinned to their own
CPUs with ``taskset`` when asked): at several times the services' capacity a load generator in
the drill's own event loop spends about as much CPU per request as the services do, and a late
generator queues requests *before* they reach the server - the drill then measures the
generator. Separate processes spread that work, and each reports its own lag so that a run the
generator could not drive is flagged as such instead of being blamed on the server:

* ``send_lag_ms``: how late each request left versus its open-loop schedule (p50/p99/max);
* ``sent_per_s`` vs the rate asked for;
* ``cpu_share``: the process's CPU time over the wall time of the run (near 1.0 = saturated).

The job (JSON): target, features, mode (``open`` / ``closed``), rate (open) or concurrency
(closed), duration_s (SIGUSR1 ends a run early: the fault phases last until the restarted
service has settled), start_at (``time.monotonic()`` instant shared by all processes: Linux's
monotonic clock is system-wide), timeout_s, channels, seed, warmup_s. Requests are built before
the start so that sending costs only the RPC.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import loadtest  # noqa: E402 - the sibling bench/loadtest.py

REFUSED_PAUSE_S = 0.01
"""Closed loop: pause after a RESOURCE_EXHAUSTED instead of asking again at once (a client
spinning on refusals measures how fast the server refuses, not its capacity)."""

POOL = 2000
"""Requests built ahead of the run and reused round robin (sampling costs CPU at send time)."""


async def run(job: dict[str, Any]) -> dict[str, Any]:
    import grpc

    ranker_pb2, ranker_grpc = loadtest.import_stubs()
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    channels = [
        grpc.aio.insecure_channel(job["target"], options=options) for _ in range(job["channels"])
    ]
    stubs = [ranker_grpc.RankerServiceStub(c) for c in channels]
    workload = loadtest.Workload.from_features(Path(job["features"]))
    mix = loadtest.TrafficMix()
    workload.check(mix)
    rng = random.Random(job["seed"])
    pool = []
    for _ in range(POOL):
        spec = workload.sample(rng, mix)
        pool.append(
            ranker_pb2.RecommendRequest(
                user_id=spec.user_id, k=spec.k, candidate_item_ids=list(spec.candidates)
            )
        )
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    timeout = job["timeout_s"]
    rows: list[tuple[float, float, float, str, str]] = []
    fallback_name = ranker_pb2.Fallback.Name
    counter = 0

    async def one(scheduled: float) -> None:
        nonlocal counter
        i = counter
        counter += 1
        sent = time.monotonic()
        try:
            reply = await stubs[i % len(stubs)].Recommend(pool[i % POOL], timeout=timeout)
            code, flag = "OK", fallback_name(reply.fallback)
        except grpc.aio.AioRpcError as exc:
            code, flag = exc.code().name, ""
        rows.append((scheduled, sent, time.monotonic(), code, flag))

    stop = asyncio.Event()  # SIGUSR1: the parent says the phase is over
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stop.set)

    async def closed(until: float, record: bool) -> None:
        async def worker() -> None:
            while time.monotonic() < until and not stop.is_set():
                await one(time.monotonic())
                if rows and rows[-1][3] == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(REFUSED_PAUSE_S)  # a refused client backs off a little

        before = len(rows)
        await asyncio.gather(*(worker() for _ in range(job["concurrency"])))
        if not record:
            del rows[before:]

    if job.get("warmup_s", 0) > 0:
        await closed(time.monotonic() + job["warmup_s"], record=False)
    start = job["start_at"]
    await asyncio.sleep(max(start - time.monotonic(), 0.0))
    cpu0, wall0 = time.process_time(), time.monotonic()
    lags: list[float] = []
    end = start + job["duration_s"]
    if job["mode"] == "closed":
        await closed(end, record=True)
    else:
        rate = job["rate"]
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            if due >= end:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))  # wakes in time for a stop
                continue
            lags.append(now - due)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if tasks:
            await asyncio.gather(*tasks)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    for channel in channels:
        await channel.close()
    lags.sort()

    def ms(q: float) -> float | None:
        return round(loadtest.percentile(lags, q) * 1000, 2) if lags else None

    return {
        "rows": rows,
        "sent": len(rows),
        "wall_s": round(wall, 3),
        "cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        "send_lag_ms": {"p50": ms(50), "p99": ms(99), "max": ms(100)},
    }


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    result = asyncio.run(run(job))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
