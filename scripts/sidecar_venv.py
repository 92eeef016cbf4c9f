"""Side virtual environments for tools whose pins clash with the project's own ``.venv``.

* ``triton`` -> ``.venv-triton``: ``tritonclient[grpc]`` (pins an older protobuf than
  grpcio-tools 1.85 needs), used by the v2 conformance test ``tests/interop``.
* ``peer``   -> ``.venv-peer``: MLServer, the off-the-shelf v2 model server the serving benchmark
  compares against (``bench/serving_benchmark.py``).

Idempotent and fast when present: a stamp file inside the environment records the exact
requirement list; when it matches, nothing runs. A file lock makes concurrent callers (two pytest
workers, make -j) wait for one install instead of racing.

    python scripts/sidecar_venv.py triton      # prints the environment's python path
    python scripts/sidecar_venv.py peer
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Versions checked to install together from PyPI on Python 3.11 (2026-11).
ENVS: dict[str, tuple[str, list[str]]] = {
    "triton": (
        ".venv-triton",
        [
            "tritonclient[grpc]==2.73.0",
            "numpy==2.4.6",
            "protobuf==6.33.6",
            "grpcio==1.85.3",
        ],
    ),
    "peer": (
        ".venv-peer",
        [
            "mlserver==1.7.1",
            "onnxruntime==1.31.1",  # the CPU build of the version the scorer runs
            "numpy==2.4.6",
            # uvloop 0.22+ raises in asyncio.get_event_loop(), which MLServer 1.7.1's parallel
            # inference workers call at start-up (they exit and the server shuts down).
            "uvloop==0.21.0",
        ],
    ),
}
STAMP = ".xdrec-sidecar.json"
INSTALL_TIMEOUT_S = 1200


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


def _fingerprint(requirements: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(requirements)).encode()).hexdigest()


def is_ready(env: Path, requirements: list[str]) -> bool:
    stamp = env / STAMP
    if not stamp.is_file() or not _python_of(env).exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == _fingerprint(requirements)
    except (OSError, ValueError):
        return False


def ensure_venv(
    env: Path, requirements: list[str], *, python: str | None = None, log=print
) -> Path:
    """Creates ``env`` with exactly ``requirements`` unless it already has them; returns its python."""
    env = Path(env)
    if is_ready(env, requirements):
        return _python_of(env)
    env.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env.parent / f"{env.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing it right now
        try:
            if is_ready(env, requirements):
                return _python_of(env)
            started = time.monotonic()
            log(f"[sidecar] creating {env} with {' '.join(requirements)}")
            if env.exists():
                shutil.rmtree(env)
            base = python or sys.executable
            subprocess.run([base, "-m", "venv", str(env)], check=True, timeout=120)
            pip = [
                str(_python_of(env)),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
            ]
            subprocess.run(
                [*pip, *requirements],
                check=True,
                timeout=INSTALL_TIMEOUT_S,
                env={**os.environ, "PIP_NO_INPUT": "1"},
            )
            (env / STAMP).write_text(
                json.dumps(
                    {"fingerprint": _fingerprint(requirements), "requirements": requirements}
                )
            )
            log(f"[sidecar] {env} ready in {time.monotonic() - started:.0f}s")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _python_of(env)


def ensure(name: str, *, root: Path = ROOT, log=print) -> Path:
    """The python of the named side environment (``triton`` or ``peer``), created when missing."""
    directory, requirements = ENVS[name]
    return ensure_venv(root / directory, requirements, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ENVS))
    args = parser.parse_args(argv)
    python = ensure(args.name, log=lambda line: print(line, file=sys.stderr))
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
