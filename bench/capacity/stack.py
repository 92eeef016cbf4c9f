"""The processes under test: the bare health server (the ceiling), the three services with the
in-memory or the Redis feature store, and a private ``redis-server``; their resident memory.

Why processes, started the way production starts them (``python -m services.<name>``, config by
``XDREC_*`` env, flags passed through): the benchmark measures what a deployment would run,
including each service's own event loop and interpreter. Optional CPU pinning (``taskset``) puts
the services on one half of the CPUs and leaves the generator the other half.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fault_drill
from bench.serving.peers import Server, health_serving, spawn, wait_ready
from services.common.endpoints import free_loopback_ports

ROOT = Path(__file__).resolve().parents[2]
BARE_SERVER = Path(__file__).resolve().parent / "bare_server.py"


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident set size (``VmRSS``) or its peak (``VmHWM``) of one process in MiB (Linux
    /proc); None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def memory_of(pids: dict[str, int]) -> dict[str, dict[str, float | None]]:
    """Now and peak resident memory (MiB) of each named process."""
    return {
        name: {"rss_mb": rss_mb(pid), "peak_rss_mb": rss_mb(pid, "VmHWM")}
        for name, pid in pids.items()
    }


def pinned(cmd: list[str], cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd] if cpus else cmd


@contextlib.contextmanager
def bare_server(log_dir: Path, cpus: set[int] | None = None) -> Iterator[Server]:
    """The ceiling's server, SERVING, stopped on exit."""
    (port,) = free_loopback_ports(1)
    log = log_dir / "bare_server.log"
    cmd = pinned([sys.executable, str(BARE_SERVER), "--port", str(port)], cpus)
    server = Server("bare", spawn(cmd, log, cwd=ROOT), f"127.0.0.1:{port}", log, [])
    try:
        wait_ready(server, lambda: health_serving(server.address, ""), 60.0)
        yield server
    finally:
        server.stop()


@dataclass
class RedisBackend:
    """A private redis-server loaded once with the snapshot; every Redis target shares it."""

    url: str
    pid: int

    def memory(self) -> dict[str, Any]:
        """``INFO memory`` figures and the server's RSS (what the store costs)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            info = client.info("memory")
            keys = client.dbsize()
        finally:
            client.close()
        return {
            "used_memory_mb": round(info["used_memory"] / 2**20, 1),
            "used_memory_rss_mb": round(info["used_memory_rss"] / 2**20, 1),
            "keys": keys,
            "process_rss_mb": rss_mb(self.pid),
            "process_peak_rss_mb": rss_mb(self.pid, "VmHWM"),
        }


@contextlib.contextmanager
def redis_backend(
    directory: Path, features: Path, cpus: set[int] | None = None
) -> Iterator[RedisBackend]:
    """redis-server (no persistence: the benchmark reads) with ``features`` bulk-loaded by the
    project's own loader (``xdrec features load``)."""
    if shutil.which("redis-server") is None:
        raise SystemExit(
            "redis-server is not installed (apt-get install redis-server); "
            "run with --stores memory to measure the in-memory store only"
        )
    from tests.fixtures.redis_server import RedisServer

    server = RedisServer(directory=directory).start()
    assert server.process is not None
    if cpus:  # the same CPUs as the services: Redis is part of what is measured
        os.sched_setaffinity(server.process.pid, cpus)
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "features",
                "load",
                str(features),
                "--redis-url",
                server.url,
            ],
            check=True,
            cwd=ROOT,
            timeout=1800,
            stdout=subprocess.DEVNULL,
        )
        yield RedisBackend(server.url, server.process.pid)
    finally:
        server.stop()


@contextlib.contextmanager
def services(
    model_repo: Path,
    features: Path,
    log_dir: Path,
    *,
    store: str,
    redis_url: str = "",
    ranker_args: Sequence[str] = (),
    scorer_args: Sequence[str] = (),
    encoder_args: Sequence[str] = (),
    cpus: set[int] | None = None,
) -> Iterator[dict[str, fault_drill.ServiceProcess]]:
    """Encoder (``store``: memory | redis) and scorer, then the ranker; ``*_args`` are flags
    passed to each service's command line;
    all SERVING; stopped on exit. Access logs off, log level WARNING (as the fault drill)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(("encoder", "scorer", "ranker"), free_loopback_ports(3), strict=True))
    encoder_env = {"XDREC_MODEL_REPO": str(model_repo), "XDREC_FEATURES": str(features)}
    if store == "redis":
        encoder_env |= {"XDREC_FEATURE_STORE": "redis", "XDREC_REDIS_URL": redis_url}
    procs = {
        "encoder": fault_drill.ServiceProcess(
            "encoder", ports["encoder"], encoder_env, log_dir, cpus, args=tuple(encoder_args)
        ),
        "scorer": fault_drill.ServiceProcess(
            "scorer",
            ports["scorer"],
            {"XDREC_MODEL_REPO": str(model_repo), "XDREC_PROVIDERS": "cpu"},
            log_dir,
            cpus,
            args=tuple(scorer_args),
        ),
        "ranker": fault_drill.ServiceProcess(
            "ranker",
            ports["ranker"],
            {
                "XDREC_ENCODER": f"127.0.0.1:{ports['encoder']}",
                "XDREC_SCORER": f"127.0.0.1:{ports['scorer']}",
            },
            log_dir,
            cpus,
            args=tuple(ranker_args),
        ),
    }
    try:
        for proc in procs.values():
            proc.start()
        for proc in procs.values():
            proc.wait_serving(timeout_s=120.0)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def service_pids(procs: dict[str, fault_drill.ServiceProcess]) -> dict[str, int]:
    return {name: p.proc.pid for name, p in procs.items() if p.proc is not None}


def cpu_split(enabled: bool) -> tuple[set[int] | None, set[int] | None]:
    """(services' CPUs, generator's CPUs) with ``--pin``; (None, None) = everything shared."""
    if not enabled:
        return None, None
    services_cpus, generator_cpus = fault_drill.cpu_split()
    if services_cpus == generator_cpus:
        print("note: --pin needs 2+ CPUs and taskset; running unpinned", file=sys.stderr)
        return None, None
    return services_cpus, generator_cpus


def pin_self(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
