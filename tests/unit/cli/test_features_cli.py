"""``xdrec features load|export`` against a real ``redis-server``: idempotent bulk load with a
summary, export in the trainer's generic format with keyed-hash user ids by default."""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from cli import main as cli  # noqa: E402
from services.common.endpoints import free_loopback_port  # noqa: E402
from services.encoder.feature_store import FeatureStoreConfig, StoredEvent  # noqa: E402
from services.encoder.redis_store import RedisFeatureStore  # noqa: E402
from services.encoder.user_hash import UserHasher  # noqa: E402
from tests.fixtures.redis_server import start_redis  # noqa: E402

SNAPSHOT = (
    "user_id\tdomain\titem_id\ttimestamp\n"
    "alice\ttarget\tt01\t10\nalice\tsource\ts01\t5\nbob\ttarget\tt02\t7\nbob\ttarget\tt02\t7\n"
)


def test_load_twice_then_export_hashed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        snapshot = tmp_path / "features.tsv"
        snapshot.write_text(SNAPSHOT)
        url = ["--redis-url", server.url]
        assert cli.main(["features", "load", str(snapshot), *url]) == 0
        first = capsys.readouterr().out
        assert "4 rows, 4 new" in first and "events/s" in first and "MiB" in first
        assert cli.main(["features", "load", str(snapshot), *url]) == 0
        assert "4 rows, 0 new (4 already present)" in capsys.readouterr().out

        async def record() -> None:
            store = RedisFeatureStore.from_config(
                FeatureStoreConfig(backend="redis", redis_url=server.url, redis_timeout_s=2.0)
            )
            await store.append("alice", [StoredEvent("ev-1", "target", "t05", 20.0, "purchase")])
            await store.close()

        asyncio.run(record())
        key = tmp_path / "key"
        key.write_text("k")
        out = tmp_path / "log.csv"
        assert (
            cli.main(
                ["features", "export", "--out", str(out), "--user-hash-key-file", str(key), *url]
            )
            == 0
        )
        assert "exported 5 events" in capsys.readouterr().out
        rows = list(csv.DictReader(out.open()))
        hashed = UserHasher(b"k")
        assert {r["user_id"] for r in rows} == {hashed("alice"), hashed("bob")}
        assert "alice" not in out.read_text()
        recorded = [r for r in rows if r["event_id"] == "ev-1"]
        assert recorded == [
            {
                "user_id": hashed("alice"),
                "item_id": "t05",
                "timestamp": "20.0",
                "rating": "1",
                "domain": "target",
                "kind": "purchase",
                "event_id": "ev-1",
            }
        ]
        only = tmp_path / "recorded.csv"
        argv = ["features", "export", "--out", str(only), "--recorded-only", "--raw-user-ids"]
        assert cli.main([*argv, *url]) == 0
        assert [r["user_id"] for r in csv.DictReader(only.open())] == ["alice"]

        from trainer.data import load_generic  # the log is a valid training input

        raw = load_generic(str(out))
        assert len(raw.users) == 5 and set(raw.domains.tolist()) == {"source", "target"}
    finally:
        server.stop()


def test_an_unreachable_redis_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    snapshot = tmp_path / "features.tsv"
    snapshot.write_text(SNAPSHOT)
    url = f"redis://127.0.0.1:{free_loopback_port()}/0"
    argv = ["features", "load", str(snapshot), "--redis-url", url, "--timeout-s", "0.5"]
    assert cli.main(argv) == 1
    assert "xdrec features load: feature store (redis)" in capsys.readouterr().err
