"""A private ``redis-server`` process on loopback: for ``xdrec demo --feature-store redis``, the
benchmarks and the test fixture (tests/fixtures/redis_server.py builds on it).

Why a private process, not a system service: the demo and the tests must not touch a Redis that
someone else uses; a free port and a private directory keep them apart, and the process goes away
with the command. The binary is Debian's ``redis-server`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.common.endpoints import LOOPBACK, free_loopback_port

BINARY = "redis-server"
INSTALL_HINT = (
    f"{BINARY} is not installed: `sudo apt-get install redis-server` (Debian/Ubuntu; .ci/run "
    "installs it); no system service is needed, the command starts its own server"
)


class RedisMissing(RuntimeError):
    """``redis-server`` is not on PATH (the message says how to install it)."""


def redis_binary() -> str:
    """The binary's path; ``RedisMissing`` with the install hint when it is not installed."""
    path = shutil.which(BINARY)
    if path is None:
        raise RedisMissing(INSTALL_HINT)
    return path


@dataclass
class LocalRedis:
    """One ``redis-server`` on loopback; ``stop``/``start`` keep the port and the data dir."""

    directory: Path
    aof: bool = False
    appendfsync: str = "always"
    """With ``aof``: ``always`` (fsync before every reply) or ``everysec``."""
    password: str = ""
    port: int = field(default_factory=free_loopback_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def binary(self) -> str:
        return redis_binary()

    def command(self) -> list[str]:
        # Absolute: redis-server changes into --dir first, then opens --logfile from there.
        directory = self.directory.resolve()
        args = [self.binary(), "--bind", LOOPBACK, "--port", str(self.port)]
        args += ["--dir", str(directory), "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(directory / "redis.log")]
        if self.aof:
            # Every acknowledged write is fsynced before the reply (``always``): the durability
            # the feature store documents for RecordEvents.
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_file = self.directory / "redis.log"
                log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout} s")

    def ping(self) -> bool:
        """A raw RESP PING (no client library involved)."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis finishes its AOF and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown work at all (what survives was on disk already)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None
