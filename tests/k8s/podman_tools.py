"""Helpers for the image test stage: podman calls that leave nothing behind.

Every container, pod, network and volume the stage makes is named with one run prefix and
recorded in ``PodmanResources``; its ``cleanup`` (a fixture finalizer) removes them all, also
when a test fails half way. Images are kept on purpose: they are the build cache that makes a
second run fast (``podman image prune`` or ``make clean-images`` removes them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from chart_tools import REPO_ROOT
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures.scripts import load_script

IMAGES_TOOL = REPO_ROOT / "k8s" / "tools" / "images.py"
SERVING = health_pb2.HealthCheckResponse.SERVING


def images_tool():  # noqa: ANN201 - the k8s/tools/images.py module
    return load_script(IMAGES_TOOL, "xdrec_images_tool")


def podman_usable() -> tuple[bool, str]:
    """Whether the real image stage can run here, and why not (shown in the test output)."""
    if shutil.which("podman") is None:
        return False, "podman is not installed"
    if shutil.which("mmdebstrap") is None:
        return False, "mmdebstrap is not installed (needed for the local base image)"
    env = images_tool().podman_env()
    proc = subprocess.run(
        ["podman", "info", "--format", "{{.Version.Version}}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        return False, f"podman info failed: {proc.stderr.strip()[-300:]}"
    return True, f"podman {proc.stdout.strip()}"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args],
        env=images_tool().podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def inspect(kind: str, name: str) -> dict[str, Any]:
    """`podman <kind> inspect NAME` as a dict."""
    out = json.loads(podman(kind, "inspect", name).stdout)
    return out[0] if isinstance(out, list) else out


@dataclass
class PodmanResources:
    """What one test run made, by name; ``cleanup`` removes it all (pods first)."""

    prefix: str
    containers: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def volume(self, suffix: str) -> str:
        name = self.name(suffix)
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def network(self, suffix: str) -> str:
        name = self.name(suffix)
        podman("network", "create", name)
        self.networks.append(name)
        return name

    def adopt_pod(self, pod: str) -> None:
        """Records a pod `play kube` made, and the anonymous volumes (emptyDirs) of its containers."""
        self.pods.append(pod)
        for cid in inspect("pod", pod).get("Containers", []):
            for mount in inspect("container", cid["Id"]).get("Mounts", []):
                name = mount.get("Name")
                if mount.get("Type") == "volume" and name and name not in self.volumes:
                    self.volumes.append(name)

    def cleanup(self) -> list[str]:
        """Removes everything recorded (pods first); returns what is still there."""
        removals = [
            ("pod", self.pods, ["pod", "rm", "--force", "--time", "0"]),
            ("container", self.containers, ["rm", "--force", "--time", "0"]),
            ("volume", self.volumes, ["volume", "rm", "--force"]),
            ("network", self.networks, ["network", "rm", "--force"]),
        ]
        left: list[str] = []
        for kind, names, remove in removals:
            for name in names:
                podman(*remove, name, check=False)
                if podman(kind, "exists", name, check=False).returncode == 0:
                    left.append(f"{kind} {name}")
        return left


def run_container(
    resources: PodmanResources,
    suffix: str,
    image: str,
    args: Sequence[str],
    *,
    options: Sequence[str] = (),
    detach: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`podman run` with a recorded name; a foreground run must exit 0."""
    name = resources.name(suffix)
    resources.containers.append(name)
    argv = ["run", "--name", name, *(["--detach"] if detach else []), *options, image, *args]
    return podman(*argv, timeout=timeout)


def container_exit(name: str) -> tuple[str, int]:
    state = inspect("container", name)["State"]
    return str(state["Status"]), int(state["ExitCode"])


def volume_path(volume: str) -> Path:
    """Where a local volume's files are on this machine (podman runs as root here)."""
    return Path(inspect("volume", volume)["Mountpoint"])


def health_status(address: str, service: str, timeout: float = 2.0) -> int | str:
    """The health status (SERVING, ...), or the gRPC error code name."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status
        except grpc.RpcError as exc:
            return exc.code().name


def wait_serving(address: str, service: str, budget_s: float, alive=lambda: True) -> float:
    """Polls gRPC health until SERVING; returns the seconds it took. ``alive`` stops it early."""
    start = time.monotonic()
    status: int | str = "UNKNOWN"
    while time.monotonic() - start < budget_s:
        if not alive():
            raise AssertionError(f"{address} {service!r}: the container exited while starting")
        status = health_status(address, service, timeout=1.0)
        if status == SERVING:
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{address} {service!r} not SERVING after {budget_s:.0f} s: {status}")


def run_id() -> str:
    return f"xdrec-it-{os.getpid()}"
