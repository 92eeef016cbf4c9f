"""Live features through the real services and a real ``redis-server``: RecordEvents changes the
very next Recommend (UNKNOWN -> COLD_START -> WARM, interacted items excluded), two encoder
processes share one Redis, acknowledged events survive a Redis restart (AOF), ForgetUser, input
validation, and the degraded answers while Redis is down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from xdrec.ranker.v1 import ranker_pb2

from services.common.endpoints import ENCODER, FEATURE_STORE_HEALTH, RANKER, free_loopback_port
from services.encoder.app import EncoderApp
from services.encoder.bulk_load import load_snapshot, read_rows
from services.encoder.feature_store import FeatureStoreConfig
from services.encoder.redis_store import RedisFeatureStore
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.redis_server import RedisServer, start_redis
from tests.fixtures.servers import (
    LoopThread,
    Stack,
    encoder_config,
    ranker_config,
    scorer_config,
    start_host,
    wait_for_status,
)

VIEW, CLICK, PURCHASE = (
    events_pb2.EVENT_KIND_VIEW,
    events_pb2.EVENT_KIND_CLICK,
    events_pb2.EVENT_KIND_PURCHASE,
)
WARM, COLD_START, UNKNOWN = (
    tensor_pb2.USER_STATUS_WARM,
    tensor_pb2.USER_STATUS_COLD_START,
    tensor_pb2.USER_STATUS_UNKNOWN,
)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def store_up() -> float | None:
    return REGISTRY.get_sample_value("xdrec_feature_store_up", {"backend": "redis"})


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def load_redis(server: RedisServer, features: Path) -> int:
    """The repo's features.tsv snapshot, bulk-loaded into ``server``."""

    async def load() -> int:
        store = RedisFeatureStore.from_config(
            FeatureStoreConfig(backend="redis", redis_url=server.url, redis_timeout_s=2.0)
        )
        try:
            return (await load_snapshot(store, read_rows(features))).rows
        finally:
            await store.close()

    return asyncio.run(load())


def redis_encoder(repo: BuiltRepo, server: RedisServer, **overrides: object):
    return encoder_config(
        repo.root,
        repo.features_path,
        feature_store="redis",
        redis_url=server.url,
        redis_timeout_s=0.5,
        store_check_interval_s=0.1,
        **overrides,
    )


def start_redis_stack(loop: LoopThread, repo: BuiltRepo, server: RedisServer) -> Stack:
    encoder = start_host(loop, EncoderApp, redis_encoder(repo, server))
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, scorer.address))
    return Stack(loop=loop, encoder=encoder, scorer=scorer, ranker=ranker)


@dataclass
class Live:
    stack: Stack
    redis: RedisServer

    def record(self, user: str, *events: tuple, timeout: float = 5.0):
        return self.stack.ranker_stub.RecordEvents(
            events_pb2.RecordEventsRequest(
                user_id=user,
                events=[
                    events_pb2.UserEvent(
                        event_id=eid, domain=domain, item_id=item, kind=kind, timestamp=ts
                    )
                    for eid, domain, item, kind, ts in events
                ],
            ),
            timeout=timeout,
        )

    def recommend(self, user: str, k: int = 20) -> ranker_pb2.RecommendResponse:
        return self.stack.ranker_stub.Recommend(
            ranker_pb2.RecommendRequest(user_id=user, k=k), timeout=5.0
        )


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"), aof=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live(loop: LoopThread, repo: BuiltRepo, module_redis: RedisServer) -> Iterator[Live]:
    assert load_redis(module_redis, repo.features_path) > 0
    stack = start_redis_stack(loop, repo, module_redis)
    yield Live(stack, module_redis)
    stack.close()


def test_snapshot_users_are_served_from_redis(live: Live) -> None:
    assert live.recommend("warm").user_status == WARM
    assert live.recommend("cold").user_status == COLD_START
    assert live.recommend("never-seen").fallback == ranker_pb2.FALLBACK_POPULARITY


def test_an_unknown_user_with_source_events_is_cold_start_at_once(live: Live) -> None:
    before = live.recommend("newcomer")
    assert (before.user_status, before.fallback) == (UNKNOWN, ranker_pb2.FALLBACK_POPULARITY)
    ack = live.record(
        "newcomer", ("n1", "source", "s04", CLICK, 0), ("n2", "source", "s05", VIEW, 0)
    )
    assert (ack.accepted, ack.duplicates) == (2, 0)
    after = live.recommend("newcomer")
    assert (after.user_status, after.fallback) == (COLD_START, ranker_pb2.FALLBACK_NONE)
    assert [i.score for i in after.items] != [i.score for i in before.items]


def test_a_cold_start_user_with_target_events_is_warm_and_the_item_is_excluded(
    live: Live,
) -> None:
    before = live.recommend("cold", k=20)
    assert before.user_status == COLD_START
    top = before.items[0].item_id
    live.record("cold", ("c1", "target", top, PURCHASE, 0))
    after = live.recommend("cold", k=20)
    assert after.user_status == WARM
    assert top not in [i.item_id for i in after.items]
    assert len(after.items) == len(before.items) - 1


def test_a_retried_batch_is_counted_once(live: Live) -> None:
    batch = (("r1", "target", "t10", CLICK, 0), ("r2", "target", "t11", CLICK, 0))
    assert live.record("retrier", *batch).accepted == 2
    again = live.record("retrier", *batch)
    assert (again.accepted, again.duplicates) == (0, 2)
    response = live.stack.encoder_stub.Encode(
        encoder_pb2.EncodeRequest(user_id="retrier"), timeout=5.0
    )
    assert response.target_history_length == 2


@pytest.mark.parametrize(
    ("events", "code", "field"),
    [
        ((("e", "music", "t01", CLICK, 0),), grpc.StatusCode.INVALID_ARGUMENT, "events[0].domain"),
        (
            (("e", "target", "t01", CLICK, 0), ("f", "target", "t01", CLICK, time.time() + 3600)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[1].timestamp",
        ),
        ((("e", "target", "t01", CLICK, 100.0),), grpc.StatusCode.INVALID_ARGUMENT, "timestamp"),
        ((("", "target", "t01", CLICK, 0),), grpc.StatusCode.INVALID_ARGUMENT, "event_id"),
        (
            (("e", "target", "t01", events_pb2.EVENT_KIND_UNSPECIFIED, 0),),
            grpc.StatusCode.INVALID_ARGUMENT,
            "events[0].kind",
        ),
        (
            tuple((f"e{i}", "target", "t01", CLICK, 0) for i in range(501)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "events: 501 events exceed the limit of 500",
        ),
    ],
)
def test_bad_events_are_refused_naming_the_field_and_nothing_is_written(
    live: Live, events: tuple, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        live.record("validated", *events)
    assert caught.value.code() == code
    assert field in caught.value.details()
    assert live.recommend("validated").user_status == UNKNOWN  # no half batch was stored


def test_forget_user_removes_every_domain_and_is_idempotent(live: Live) -> None:
    live.record("leaver", ("l1", "source", "s01", CLICK, 0), ("l2", "target", "t02", CLICK, 0))
    assert live.recommend("leaver").user_status == WARM
    forget = live.stack.ranker_stub.ForgetUser
    assert forget(events_pb2.ForgetUserRequest(user_id="leaver"), timeout=5).deleted_events == 2
    assert forget(events_pb2.ForgetUserRequest(user_id="leaver"), timeout=5).deleted_events == 0
    assert live.recommend("leaver").user_status == UNKNOWN
    with pytest.raises(grpc.RpcError) as caught:
        forget(events_pb2.ForgetUserRequest(user_id=""), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in caught.value.details()


def test_two_encoder_processes_share_one_redis(live: Live, repo: BuiltRepo) -> None:
    """An event recorded through the in-process stack is used by a separate encoder process."""
    port = free_loopback_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.encoder",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--model-repo",
            str(repo.root),
            "--feature-store",
            "redis",
            "--redis-url",
            live.redis.url,
            "--redis-timeout-s",
            "1.0",  # two shared cores: a generous bound, the point here is the shared state
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_for_status(address, "", health_pb2.HealthCheckResponse.SERVING, timeout=60)
        # The process start may starve the in-process stack on a busy machine (health checks
        # time out): wait until the ranker reports SERVING again.
        wait_for_status(
            live.stack.ranker.address, "", health_pb2.HealthCheckResponse.SERVING, timeout=30
        )
        live.record("shared", ("x1", "target", "t07", CLICK, 0))
        with grpc.insecure_channel(address) as channel:
            other = encoder_pb2_grpc.EncoderServiceStub(channel)
            seen = other.Encode(encoder_pb2.EncodeRequest(user_id="shared"), timeout=5)
            assert seen.user_status == WARM and seen.target_history_length == 1
            # ...and the other way round: recorded at the process, used by the stack.
            other.RecordEvents(
                events_pb2.RecordEventsRequest(
                    user_id="shared",
                    events=[
                        events_pb2.UserEvent(
                            event_id="x2", domain="source", item_id="s02", kind=VIEW
                        )
                    ],
                ),
                timeout=5,
            )
        encoded = live.stack.encoder_stub.Encode(
            encoder_pb2.EncodeRequest(user_id="shared"), timeout=5
        )
        assert encoded.source_history_length == 1
    finally:
        process.terminate()
        process.wait(10)


def test_an_acknowledged_event_survives_a_redis_restart(live: Live) -> None:
    live.record("durable", ("d1", "target", "t12", CLICK, 0))
    live.redis.kill()  # SIGKILL: only what AOF had fsynced before the ack can survive
    live.redis.start()
    deadline = time.monotonic() + 5
    while True:  # the encoder's pooled connections reconnect on their own
        response = live.recommend("durable")
        if response.fallback != ranker_pb2.FALLBACK_FEATURES_UNAVAILABLE:
            break
        assert time.monotonic() < deadline, "the encoder did not reconnect to Redis"
        time.sleep(0.05)
    assert response.user_status == WARM
    assert "t12" not in [i.item_id for i in response.items]


def test_redis_down_degrades_recommend_and_refuses_record_events(live: Live) -> None:
    live.redis.pause()  # hung: connections open, nothing answers
    try:
        start = time.monotonic()
        response = live.recommend("warm")
        assert time.monotonic() - start < 2.0
        assert response.fallback == ranker_pb2.FALLBACK_FEATURES_UNAVAILABLE
        assert len(response.items) > 0
        with pytest.raises(grpc.RpcError) as caught:
            live.record("warm", ("w1", "target", "t15", CLICK, 0))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry" in caught.value.details()
        wait_until(lambda: store_up() == 0.0)  # the metric says what is degraded
    finally:
        live.redis.resume()
    wait_until(lambda: store_up() == 1.0)
    deadline = time.monotonic() + 5
    while live.recommend("warm").fallback == ranker_pb2.FALLBACK_FEATURES_UNAVAILABLE:
        assert time.monotonic() < deadline, "no recovery after Redis came back"
        time.sleep(0.05)
    assert live.record("warm", ("w1", "target", "t15", CLICK, 0)).accepted == 1


def ranker_sees_store() -> float | None:
    return REGISTRY.get_sample_value("xdrec_ranker_dependency_up", {"dependency": "feature_store"})


def test_health_says_the_feature_store_is_degraded_while_redis_is_stopped(live: Live) -> None:
    """Redis stopped and restarted: the services stay SERVING (they still answer, degraded) and
    the feature store's own health name, at the encoder and at the ranker, and the gauges say
    DEGRADED until Redis is back."""
    encoder, ranker = live.stack.encoder.address, live.stack.ranker.address
    for address in (encoder, ranker):
        wait_for_status(address, FEATURE_STORE_HEALTH, SERVING)
    live.redis.stop()  # SIGTERM: connections refused from now on
    try:
        for address in (encoder, ranker):
            wait_for_status(address, FEATURE_STORE_HEALTH, NOT_SERVING, timeout=5)
        assert store_up() == 0.0 and ranker_sees_store() == 0.0
        for address, name in ((encoder, ENCODER.health_name), (ranker, RANKER.health_name)):
            # waits: on a loaded machine a health check of the ranker's may time out for a moment
            wait_for_status(address, name, SERVING)
            wait_for_status(address, "", SERVING)
        response = live.recommend("warm")
        assert response.fallback == ranker_pb2.FALLBACK_FEATURES_UNAVAILABLE
        assert len(response.items) > 0
    finally:
        live.redis.start()
    for address in (encoder, ranker):
        wait_for_status(address, FEATURE_STORE_HEALTH, SERVING, timeout=5)
    assert store_up() == 1.0 and ranker_sees_store() == 1.0
    assert live.recommend("warm").fallback == ranker_pb2.FALLBACK_NONE


def test_the_memory_store_records_and_forgets_too(stack: Stack) -> None:
    """The embedded default implements the same RPCs (in this process only)."""
    ranker = stack.ranker_stub
    request = events_pb2.RecordEventsRequest(
        user_id="memory-newcomer",
        events=[events_pb2.UserEvent(event_id="m1", domain="source", item_id="s01", kind=CLICK)],
    )
    assert ranker.RecordEvents(request, timeout=5).accepted == 1
    assert ranker.RecordEvents(request, timeout=5).duplicates == 1
    recommend = ranker_pb2.RecommendRequest(user_id="memory-newcomer", k=5)
    assert ranker.Recommend(recommend, timeout=5).user_status == COLD_START
    forget = events_pb2.ForgetUserRequest(user_id="memory-newcomer")
    assert ranker.ForgetUser(forget, timeout=5).deleted_events == 1
    assert ranker.Recommend(recommend, timeout=5).user_status == UNKNOWN


def test_user_ids_in_logs_are_keyed_hashes(tmp_path: Path) -> None:
    from services.encoder.user_hash import UserHasher

    key = tmp_path / "key"
    key.write_bytes(b"k1\n")
    one, source = UserHasher.configured(str(key))
    assert source == f"key file {key}"
    assert one("alice") == UserHasher(b"k1")("alice") != UserHasher(b"k2")("alice")
    assert one("alice").startswith("u_") and "alice" not in one("alice")
    assert "k1" not in repr(one)


def test_xdrec_features_record_changes_the_next_recommend(
    live: Live, capsys: pytest.CaptureFixture
) -> None:
    from cli import main as cli

    argv = ["features", "record", "--ranker", live.stack.ranker.address, "--user", "cli-user"]
    argv += ["--item", "s03", "--item", "s04", "--domain", "source", "--event-id", "b1"]
    assert cli.main(argv) == 0
    assert "2 accepted, 0 duplicates" in capsys.readouterr().out
    assert cli.main(argv) == 0  # the same batch again: counted once
    assert "0 accepted, 2 duplicates" in capsys.readouterr().out
    assert live.recommend("cli-user").user_status == COLD_START
    assert cli.main([*argv[:-4], "--domain", "music"]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "events[0].domain: 'music'" in err
