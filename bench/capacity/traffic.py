"""What the generator sends: a documented Recommend traffic mix, and the ceiling's health Check.

Why pre-serialised requests on raw-bytes stubs: the generator shares the machine's cores with the
servers; building and encoding protos per call would cost it CPU that the ceiling's tiny request
does not, and skew the ratio. Both targets get the same treatment: bytes prepared up front, one
cheap response parse (Recommend's to see its fallback flag, health's to see SERVING).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import grpc

from bench import loadtest

RANKER_RECOMMEND = "/xdrec.ranker.v1.RankerService/Recommend"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class CapacityMix:
    """The Recommend traffic (shares are of all requests; user shares are normalised).

    Defaults: 60% warm users (target-domain history), 30% cold-start (source history only), 10%
    unknown (random ids: the popularity path); 30% carry an explicit list of 50 candidates (the
    rest rank the whole target catalogue); 20% exclude 5 items (a business filter); k = 10.
    """

    warm: float = 0.6
    cold: float = 0.3
    unknown: float = 0.1
    candidate_share: float = 0.3
    candidates: int = 50
    exclude_share: float = 0.2
    excluded: int = 5
    k: int = 10

    def loadtest_mix(self) -> loadtest.TrafficMix:
        return loadtest.TrafficMix(
            warm=self.warm,
            cold=self.cold,
            unknown=self.unknown,
            candidate_share=self.candidate_share,
            candidates=self.candidates,
            k=self.k,
        )


@dataclass(frozen=True)
class CapacitySpec(loadtest.RequestSpec):
    """A load-test request plus its exclusions and its wire bytes (built once)."""

    excluded: tuple[str, ...] = ()
    payload: bytes = field(default=b"", repr=False)


def build_requests(
    features: Path, mix: CapacityMix, *, count: int = 4096, seed: int = 0
) -> list[CapacitySpec]:
    """``count`` requests drawn from the snapshot's users and items, cycled during a run."""
    ranker_pb2, _ = loadtest.import_stubs()
    workload = loadtest.Workload.from_features(features)
    base_mix = mix.loadtest_mix()
    workload.check(base_mix)
    rng = random.Random(seed)
    specs = []
    for _ in range(count):
        spec = workload.sample(rng, base_mix)
        excluded: tuple[str, ...] = ()
        if workload.items and mix.excluded > 0 and rng.random() < mix.exclude_share:
            excluded = tuple(rng.sample(workload.items, min(mix.excluded, len(workload.items))))
        request = ranker_pb2.RecommendRequest(
            user_id=spec.user_id,
            k=spec.k,
            candidate_item_ids=list(spec.candidates),
            exclude_item_ids=list(excluded),
        )
        specs.append(
            CapacitySpec(
                kind=spec.kind,
                user_id=spec.user_id,
                candidates=spec.candidates,
                k=spec.k,
                excluded=excluded,
                payload=request.SerializeToString(),
            )
        )
    return specs


def describe_requests(specs: list[CapacitySpec]) -> dict[str, Any]:
    """The mix as drawn (what was actually sent, cycled)."""
    n = max(1, len(specs))
    kinds: dict[str, int] = {}
    for spec in specs:
        kinds[spec.kind] = kinds.get(spec.kind, 0) + 1
    return {
        "distinct_requests": len(specs),
        "user_kinds": {k: round(v / n, 3) for k, v in sorted(kinds.items())},
        "with_candidates": round(sum(1 for s in specs if s.candidates) / n, 3),
        "with_exclusions": round(sum(1 for s in specs if s.excluded) / n, 3),
    }


def request_source(specs: list[CapacitySpec]) -> Callable[[], CapacitySpec]:
    it = cycle(specs)
    return lambda: next(it)


HEALTH_SPEC = CapacitySpec(kind="health", user_id="", candidates=(), k=0)


class Channels:
    """``count`` separate HTTP/2 connections to one target, used round robin (as loadtest.py)."""

    def __init__(self, target: str, count: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
        self.channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, count))
        ]
        self._next = 0

    def pick(self) -> grpc.aio.Channel:
        channel = self.channels[self._next % len(self.channels)]
        self._next += 1
        return channel

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def recommend_sender(
    channels: Channels, timeout_s: float
) -> Callable[[CapacitySpec], Awaitable[str]]:
    """Sends a spec's bytes; "OK", a status name, or ``DEGRADED_<fallback>`` (an answer by
    popularity because a dependency could not answer counts against the budget)."""
    ranker_pb2, _ = loadtest.import_stubs()
    stubs = [
        c.unary_unary(
            RANKER_RECOMMEND, response_deserializer=ranker_pb2.RecommendResponse.FromString
        )
        for c in channels.channels
    ]
    pick = cycle(stubs)
    name = ranker_pb2.Fallback.Name

    async def send(spec: CapacitySpec) -> str:
        try:
            reply = await next(pick)(spec.payload, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        flag = name(reply.fallback)
        return "DEGRADED_" + flag if flag.endswith("_UNAVAILABLE") else "OK"

    return send


def health_sender(
    channels: Channels, timeout_s: float, service: str = ""
) -> Callable[[CapacitySpec], Awaitable[str]]:
    """The ceiling: a health Check with the same stubs, deadline and bookkeeping."""
    from grpc_health.v1 import health_pb2

    payload = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    stubs = [
        c.unary_unary(HEALTH_CHECK, response_deserializer=health_pb2.HealthCheckResponse.FromString)
        for c in channels.channels
    ]
    pick = cycle(stubs)
    serving = health_pb2.HealthCheckResponse.SERVING

    async def send(_spec: CapacitySpec) -> str:
        try:
            reply = await next(pick)(payload, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK" if reply.status == serving else "NOT_SERVING"

    return send
