"""The feedback loop, closed through the real parts: train -> export and publish v1 -> serve the
three services on a real Redis -> record events through the ranker -> ``xdrec features export`` ->
retrain on the original log plus the exported events -> publish v2 -> the running services hot-swap
to v2 -> v2's answers reflect what users did while v1 was serving.

The log (tests/fixtures/taste_log.py) has taste groups; ``RARE`` is a target item only a few
users of another group touched, so v1 ranks it low for group 0's taste. Many group-0 users then
interact with it live. A held-out group-0 user (recorded after the export, so in no training
data) is asked under both versions, pinned, while both are held: v2 must rank ``RARE`` clearly
higher than v1 does. Fixed seeds make the runs repeatable; the tiny config trains in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from xdrec.common.v1 import events_pb2, tensor_pb2
from xdrec.ranker.v1 import ranker_pb2

from cli import main as cli
from export.exporter import ExportOptions, export_run
from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.conftest import tiny_config
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.servers import (
    LoopThread,
    Stack,
    encoder_config,
    ranker_config,
    scorer_config,
    start_host,
)
from tests.fixtures.taste_log import RARE, TasteLog, read_log, write_log
from trainer.experiment import run_experiment

pytestmark = pytest.mark.integration

MODEL = "feedback"
BOOSTED_USERS = 40
"""Group-0 users who interact with ``RARE`` while v1 serves (of 60 in the group)."""
POLL_S = 0.2


def train(log: Path, out: Path) -> Path:
    """The tiny config on a generic-format log; a random split keeps the newest events (the
    recorded ones) in training too, where a time split would hold them all out as test."""
    config = tiny_config(epochs=20, patience=20, eval_every=5, learning_rate=1e-2, num_threads=1)
    config.name = MODEL
    config.data.dataset = "generic"
    config.data.interactions_path = str(log)
    config.data.split = "random"
    run_experiment(config, out, show_progress=False)
    return out


def serve(loop: LoopThread, repo: Path, features: Path, redis: RedisServer) -> Stack:
    """The three services following ``repo`` (two versions held, so both can be pinned)."""
    encoder = start_host(
        loop,
        EncoderApp,
        encoder_config(
            repo,
            features,
            feature_store="redis",
            redis_url=redis.url,
            redis_timeout_s=0.5,
            poll_interval_s=POLL_S,
        ),
    )
    scorer = start_host(loop, ScorerApp, scorer_config(repo, poll_interval_s=POLL_S))
    ranker = start_host(loop, RankerApp, ranker_config(encoder.address, scorer.address))
    return Stack(loop=loop, encoder=encoder, scorer=scorer, ranker=ranker)


def record(stack: Stack, user: str, domain: str, items: list[str], tag: str) -> None:
    ack = stack.ranker_stub.RecordEvents(
        events_pb2.RecordEventsRequest(
            user_id=user,
            events=[
                events_pb2.UserEvent(
                    event_id=f"{tag}-{user}-{item}",
                    domain=domain,
                    item_id=item,
                    kind=events_pb2.EVENT_KIND_CLICK,
                )
                for item in items
            ],
        ),
        timeout=5,
    )
    assert ack.accepted == len(items)


def recommend(stack: Stack, user: str, version: str = "") -> ranker_pb2.RecommendResponse:
    return stack.ranker_stub.Recommend(
        ranker_pb2.RecommendRequest(
            user_id=user, k=100, model=tensor_pb2.ModelRef(name=MODEL, version=version)
        ),
        timeout=5,
    )


def rank_of(response: ranker_pb2.RecommendResponse, item: str) -> int:
    """0-based position of ``item`` in the answer (the whole catalogue is asked for)."""
    ids = [i.item_id for i in response.items]
    assert item in ids, f"{item} missing from the answer of version {response.model.version}"
    return ids.index(item)


def test_recorded_behaviour_reaches_the_next_model_through_a_hot_swap(
    tmp_path: Path, loop: LoopThread, redis_server: RedisServer
) -> None:
    taste = TasteLog()
    original = taste.write(tmp_path / "log.csv")
    repo = tmp_path / "repo"
    run1 = train(original, tmp_path / "run1")
    export_run(ExportOptions(run1, repo, MODEL), log=lambda *_: None)
    url = ["--redis-url", redis_server.url]
    assert cli.main(["features", "load", str(run1 / "features.tsv"), *url]) == 0

    stack = serve(loop, repo, run1 / "features.tsv", redis_server)
    try:
        probe = "g0-probe"  # group 0's taste, unknown to every training run
        for n in range(BOOSTED_USERS):
            record(stack, taste.user(0, n), "target", [RARE], "boost")

        exported = tmp_path / "recorded.csv"
        argv = ["features", "export", "--out", str(exported), "--recorded-only", "--raw-user-ids"]
        assert cli.main([*argv, *url]) == 0
        recorded = read_log(exported)
        assert len(recorded) == BOOSTED_USERS and {r[1] for r in recorded} == {RARE}

        record(stack, probe, "source", taste.source_items(0)[:5], "probe")
        before = recommend(stack, probe)
        assert before.model.version == "1"
        assert before.user_status == tensor_pb2.USER_STATUS_COLD_START
        v1_rank = rank_of(before, RARE)

        combined = tmp_path / "log-v2.csv"
        # Sorted: the export follows Redis's SCAN order, which differs between server runs.
        write_log(combined, read_log(original) + sorted(recorded))
        run2 = train(combined, tmp_path / "run2")
        export_run(ExportOptions(run2, repo, MODEL), log=lambda *_: None)

        deadline = time.monotonic() + 30
        while (latest := recommend(stack, probe)).model.version != "2":
            assert time.monotonic() < deadline, "the services did not swap to version 2"
            time.sleep(POLL_S)
        assert latest.user_status == tensor_pb2.USER_STATUS_COLD_START
        v2_rank = rank_of(latest, RARE)
        still_v1 = recommend(stack, probe, version="1")  # both versions answer side by side
        assert still_v1.model.version == "1" and rank_of(still_v1, RARE) == v1_rank
        assert rank_of(recommend(stack, probe, version="2"), RARE) == v2_rank

        catalogue = len(latest.items)
        print(f"rank of {RARE} for the held-out user: v1 {v1_rank}, v2 {v2_rank} of {catalogue}")
        assert v1_rank >= catalogue // 2, "v1 already ranks the item high: nothing to show"
        assert v2_rank < 5, "v2 does not reflect the recorded behaviour"
    finally:
        stack.close()
