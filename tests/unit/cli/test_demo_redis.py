"""``xdrec demo --feature-store redis``: a missing redis-server stops it before any training, with
the install hint; the private server it starts (``cli.local_redis``) answers and goes away."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import main as cli
from cli.local_redis import LocalRedis
from tests.fixtures.redis_server import require_redis_server


def test_a_missing_redis_server_stops_the_demo_at_once_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    workdir = tmp_path / "demo"
    assert cli.main(["demo", "--feature-store", "redis", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "redis-server is not installed" in err and "apt-get install redis-server" in err
    assert "--redis-url" in err
    assert not (workdir / "run").exists()  # nothing was trained


def test_the_private_redis_server_answers_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative directory, as `make demo-redis` passes (artifacts/demo-redis/redis)."""
    require_redis_server()
    monkeypatch.chdir(tmp_path)
    server = LocalRedis(Path("redis"), aof=True).start()
    try:
        assert server.ping()
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        server.stop()
    assert not server.ping() and server.process is None
