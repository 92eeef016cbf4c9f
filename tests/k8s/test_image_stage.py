"""The image test stage: real images, real containers, the chart as real pods (podman).

What runs, in order (module fixtures, so a failure stops the later steps):

1. ``make images``' code path builds the serving (CPU) and trainer (CPU) images from the
   Dockerfiles as shipped, on the local mmdebstrap base when no registry base can be pulled;
2. the trainer image trains a tiny config (1 seed, 2 epochs, small dims) and exports it into a
   podman volume: ``xdrec train`` then ``xdrec export``, as uid 10001;
3. the serving image serves that volume hardened (read-only root, uid 10001, no capabilities,
   no-new-privileges, tmpfs /tmp, the repository mounted read-only) until gRPC health SERVING;
4. the chart, rendered by the real helm, runs as pods (``podman play kube``) on that volume, and
   Recommends through the ranker pod return a real top-k from the trained model;
5. SIGTERM stops every container within its grace period with exit code 0.

The stage needs podman and mmdebstrap (``.ci/run`` installs them); without them it is skipped and
``test_images.py`` replays the Dockerfile in a virtual environment instead (the summary at the
end of the test output says which path ran). Everything it makes is removed by a finalizer, also
on failure; the images stay as the build cache.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from chart_tools import REPO_ROOT, by_kind, render
from podman_tools import (
    SERVING,
    PodmanResources,
    container_exit,
    health_status,
    images_tool,
    inspect,
    podman,
    podman_usable,
    run_container,
    run_id,
    volume_path,
    wait_serving,
)
from stage_report import record_path, record_step

from services.common.endpoints import free_loopback_port

USABLE, WHY = podman_usable()
pytestmark = [
    pytest.mark.podman,
    pytest.mark.slow,
    # generous: building the images from nothing (base + both images) takes minutes; cached, the
    # whole stage takes about a minute
    pytest.mark.timeout(1200),
    pytest.mark.skipif(not USABLE, reason=f"image stage needs podman: {WHY}"),
]

SERVING_BUDGET_BYTES = 350 * 10**6  # the serving CPU image, as `podman image inspect` reports
MODEL_NAME = "ml100k-transfer"  # the name in the embedded default config (trainer/configs)
# Small enough to train in seconds on 2 cores, real enough to rank: one seed, one strategy.
TINY_TRAINING = [
    "--strategy",
    "pretrain_finetune",
    "--set",
    "train.seeds=[0]",
    "--set",
    "train.epochs=2",
    "--set",
    "train.pretrain_epochs=1",
    "--set",
    "train.eval_every=1",
    "--set",
    "train.num_threads=2",
    "--set",
    "model.embedding_dim=16",
    "--set",
    "model.hidden_dim=32",
    "--set",
    "model.max_source_history=50",
    "--set",
    "model.max_target_history=50",
    "--quiet",
]
HARDENED = [
    "--read-only",
    "--user",
    "10001:10001",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
    "--tmpfs",
    "/tmp:rw,size=64m",
]
HEALTH = {c: f"xdrec.{c}.v1.{c.capitalize()}Service" for c in ("encoder", "scorer", "ranker")}
START_BUDGET_S = 90.0


def assert_hardened(container: str) -> None:
    """What the kubelet would enforce from the chart's securityContext, as podman applied it."""
    info = inspect("container", container)
    user = str(info["Config"]["User"]).split(":")[0]
    assert user == "10001", f"{container}: runs as {info['Config']['User']!r}"
    assert info["HostConfig"]["ReadonlyRootfs"] is True, f"{container}: writable root filesystem"
    assert info["EffectiveCaps"] in (None, []), f"{container}: capabilities {info['EffectiveCaps']}"
    assert "no-new-privileges" in (info["HostConfig"]["SecurityOpt"] or []), container


@pytest.fixture(scope="module")
def resources() -> Iterator[PodmanResources]:
    """Every container, pod, volume and network of this run; removed at the end, pass or fail."""
    record_path("podman", f"real image builds and containers ({WHY})")
    made = PodmanResources(prefix=run_id())
    try:
        yield made
    finally:
        left = made.cleanup()
        assert not left, f"could not remove: {left}"


@pytest.fixture(scope="module")
def images() -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    report = images_tool().build(["serving", "trainer"])
    for key, row in report.items():
        record_step(f"build {key} image", float(row["seconds"]), f"{row['bytes'] / 1e6:.0f} MB")
    record_step("build both images (incl. base)", time.monotonic() - started)
    return report


@dataclass(frozen=True)
class ModelVolume:
    name: str  # the podman volume
    host_path: Path  # where its files are on this machine
    warm_user: str  # a user with target-domain history in the trained run's features


@pytest.fixture(scope="module")
def model_volume(images: dict[str, dict[str, Any]], resources: PodmanResources) -> ModelVolume:
    """The trainer image trains and exports into a fresh volume (mounted at its home, /work).

    A new named volume mounted over an existing directory takes that directory's owner (the
    image's /work belongs to uid 10001), so the non-root trainer can write to it.
    """
    volume = resources.volume("models")
    trainer = images["trainer"]["tag"]
    mount = ["--volume", f"{volume}:/work", *HARDENED]  # writes only to /work and /tmp
    started = time.monotonic()
    run_container(
        resources,
        "train",
        trainer,
        ["train", "--out", "/work/run", *TINY_TRAINING],
        options=mount,
        timeout=240,
    )
    record_step("trainer image: xdrec train (tiny config)", time.monotonic() - started)
    started = time.monotonic()
    run_container(
        resources,
        "export",
        trainer,
        ["export", "--run", "/work/run", "--repo", "/work/models"],
        options=mount,
    )
    record_step("trainer image: xdrec export", time.monotonic() - started)
    root = volume_path(volume)
    assert (root / "models" / MODEL_NAME / "1" / "manifest.json").is_file(), sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*")
    )
    return ModelVolume(volume, root, _warm_user(root / "run" / "features.tsv"))


def _warm_user(features: Path) -> str:
    with features.open() as fh:
        header = fh.readline().rstrip("\n").split("\t")
        user_col, domain_col = header.index("user_id"), header.index("domain")
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if cols[domain_col] == "target":
                return cols[user_col]
    raise AssertionError(f"{features}: no user with target-domain history")


def test_serving_image_is_small_torch_free_and_cpu_only(images: dict[str, dict[str, Any]]) -> None:
    serving = images["serving"]
    assert serving["bytes"] <= SERVING_BUDGET_BYTES, f"serving image {serving['bytes'] / 1e6} MB"
    probe = (
        "import importlib.metadata as m, importlib.util as u; "
        "print(sorted(d.metadata['Name'] for d in m.distributions()), "
        "[x for x in ('torch', 'pip', 'setuptools') if u.find_spec(x)])"
    )
    out = podman(
        "run", "--rm", "--entrypoint", "python", serving["tag"], "-c", probe
    ).stdout.strip()
    installed, present = out.rsplit("] ", 1)
    assert "'onnxruntime'" in installed and "onnxruntime-gpu" not in installed, installed
    assert present == "[]", f"torch, pip or setuptools in the serving image: {present}"


def test_trainer_image_trains_and_exports(model_volume: ModelVolume) -> None:
    version = model_volume.host_path / "models" / MODEL_NAME / "1"
    assert (version / "model.onnx").is_file()
    assert (model_volume.host_path / "run" / "features.tsv").is_file()


def test_hardened_serving_container_serves_the_exported_model(
    images: dict[str, dict[str, Any]], model_volume: ModelVolume, resources: PodmanResources
) -> None:
    port = free_loopback_port()
    started = time.monotonic()
    run_container(
        resources,
        "scorer",
        images["serving"]["tag"],
        ["serve", "scorer", "--model-repo", "/data/models", "--port", "50052"],
        options=[
            *HARDENED,
            "--volume",
            f"{model_volume.name}:/data:ro",
            "--publish",
            f"127.0.0.1:{port}:50052",
        ],
        detach=True,
    )
    name = resources.name("scorer")
    wait_serving(
        f"127.0.0.1:{port}",
        HEALTH["scorer"],
        START_BUDGET_S,
        alive=lambda: container_exit(name)[0] == "running",
    )
    record_step("hardened scorer container: start to SERVING", time.monotonic() - started)
    assert_hardened(name)
    grace = 30
    started = time.monotonic()
    podman("stop", "--time", str(grace), name, timeout=grace + 30)
    stopped_in = time.monotonic() - started
    status, code = container_exit(name)
    record_step("hardened scorer container: SIGTERM to exit", stopped_in)
    assert (status, code) == ("exited", 0), podman("logs", name).stdout[-3000:]
    assert stopped_in < grace, f"took {stopped_in:.1f} s to stop (grace {grace} s)"


# --- the chart as pods ---------------------------------------------------------------------------

# Kinds podman play kube runs; the rest (Service, HPA, PDB, NetworkPolicy, ServiceAccount, PVC)
# it does not implement. The PVC is stood in for by the trained volume (existingClaim).
PLAYABLE_KINDS = {"Deployment", "ConfigMap"}


@dataclass
class PodPlan:
    yaml_text: str
    grpc_ports: dict[str, int]  # deployment -> host port of its grpc containerPort
    grace_s: dict[str, int]  # deployment -> terminationGracePeriodSeconds


def adapt_for_podman(docs: list[dict[str, Any]]) -> PodPlan:
    """The rendered release, changed only where podman's play kube differs from Kubernetes.

    The templates stay as a cluster needs them; each change below says what podman lacks.
    """
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    configmaps = by_kind(docs, "ConfigMap")

    # No Service DNS under podman. On a podman network with DNS, a Deployment's first pod
    # resolves as `<deployment>-pod-0`: point every cluster address at the pod its Service selects
    # (and the containerPort its targetPort names).
    addresses: dict[str, str] = {}
    for svc_name, svc in services.items():
        ns = svc["metadata"].get("namespace", "default")
        names = [svc_name, f"{svc_name}.{ns}", f"{svc_name}.{ns}.svc"]
        names.append(f"{svc_name}.{ns}.svc.cluster.local")
        for dep_name, dep in deployments.items():
            labels = dep["spec"]["template"]["metadata"]["labels"]
            if not all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                continue
            container_ports = [
                p for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])
            ]
            for sport in svc["spec"]["ports"]:
                target = sport.get("targetPort", sport["port"])
                for p in container_ports:
                    if target in (p.get("name"), p["containerPort"]):
                        for name in names:
                            pod_address = f"{dep_name}-pod-0:{p['containerPort']}"
                            addresses[f"{name}:{sport['port']}"] = pod_address
    for cm in configmaps.values():
        for key, value in cm.get("data", {}).items():
            if re.fullmatch(r"[a-z0-9.-]+:\d+", str(value)) and "." in value.split(":")[0]:
                assert value in addresses, f"ConfigMap {key}={value}: no Service for this address"
            cm["data"][key] = addresses.get(str(value), value)

    grpc_ports: dict[str, int] = {}
    grace: dict[str, int] = {}
    for dep_name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        # Init containers never complete under podman (they take the pod's restart policy);
        # with the PVC source the chart renders none, and this stage must not need any.
        assert not pod.get("initContainers"), f"{dep_name}: init containers cannot run in podman"
        # podman runs one pod per Deployment whatever `replicas` says (autoscaled ones render
        # none); one is all this stage needs.
        dep["spec"]["replicas"] = 1
        grace[dep_name] = int(pod.get("terminationGracePeriodSeconds", 30))
        for container in pod["containers"]:
            cm_keys = {
                k
                for ref in container.get("envFrom", [])
                for k in configmaps[ref["configMapRef"]["name"]].get("data", {})
            }
            # podman lets envFrom win over env (Kubernetes: env wins): the chart must not rely on
            # either order, so no variable may come from both.
            both = cm_keys & {e["name"] for e in container.get("env", [])}
            assert not both, f"{dep_name}: {both} set by env and envFrom (podman differs)"
            for p in container.get("ports", []):
                # podman publishes every containerPort on the host; all three pods declare the
                # metrics port 9090, so give each containerPort its own free host port.
                p["hostPort"] = free_loopback_port()
                p["hostIP"] = "127.0.0.1"
                if p.get("name") == "grpc":
                    grpc_ports[dep_name] = p["hostPort"]
    kept = [d for d in docs if d["kind"] in PLAYABLE_KINDS]
    return PodPlan(yaml.safe_dump_all(kept, sort_keys=False), grpc_ports, grace)


def test_chart_runs_as_pods_and_recommends(
    helm: Path,
    images: dict[str, dict[str, Any]],
    model_volume: ModelVolume,
    resources: PodmanResources,
    tmp_path: Path,
) -> None:
    from xdrec.common.v1 import tensor_pb2
    from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

    repository, tag = images["serving"]["tag"].rsplit(":", 1)
    release = resources.prefix
    docs = render(
        helm,
        [REPO_ROOT / "k8s" / "xdrec" / "values-cpu.yaml"],
        release=release,
        set_values={
            "image.repository": repository,
            "image.tag": tag,
            "image.pullPolicy": "Never",  # built here, not in a registry
            "modelRepository.modelName": MODEL_NAME,
            "modelRepository.featuresPath": "run/features.tsv",  # where `xdrec train` put it
            "modelRepository.pvc.create": "false",
            "modelRepository.pvc.existingClaim": model_volume.name,
            # Plaintext here: the chart's default TLS profile takes its certificates from
            # cert-manager, which podman cannot run. That profile runs, with certificates made
            # at test time, in tests/k8s/test_chart_processes.py.
            "tls.enabled": "false",
            "auth.enabled": "false",
        },
    )
    plan = adapt_for_podman(docs)
    manifest = tmp_path / "release.yaml"
    manifest.write_text(plan.yaml_text)
    network = resources.network("net")
    pods = [f"{dep}-pod-0" for dep in plan.grpc_ports]
    started = time.monotonic()
    try:
        podman("play", "kube", "--network", network, str(manifest), timeout=180)
    finally:  # record what exists, also after a partial start, so the finalizer removes it
        for pod in pods:
            if podman("pod", "exists", pod, check=False).returncode == 0:
                resources.adopt_pod(pod)

    def app_container(dep: str) -> str:
        return f"{dep}-pod-0-{dep.rsplit('-', 1)[1]}"

    for dep, port in plan.grpc_ports.items():
        component = dep.rsplit("-", 1)[1]
        try:
            wait_serving(
                f"127.0.0.1:{port}",
                HEALTH[component],
                START_BUDGET_S,
                alive=lambda d=dep: container_exit(app_container(d))[0] == "running",
            )
        except AssertionError as exc:
            logs = podman("logs", app_container(dep), check=False)
            raise AssertionError(f"{exc}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None
    record_step("chart as pods: play kube to all SERVING", time.monotonic() - started)
    for dep in plan.grpc_ports:
        assert_hardened(app_container(dep))  # the chart's securityContext, applied by podman

    ranker = next(p for d, p in plan.grpc_ports.items() if d.endswith("-ranker"))
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{ranker}") as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        replies = [
            stub.Recommend(
                ranker_pb2.RecommendRequest(user_id=model_volume.warm_user, k=5), timeout=10
            )
            for _ in range(5)
        ]
    record_step("chart as pods: 5 Recommends through the ranker pod", time.monotonic() - started)
    for reply in replies:
        assert len(reply.items) == 5, reply
        assert reply.model.name == MODEL_NAME, reply.model
        assert reply.fallback == ranker_pb2.FALLBACK_NONE, reply
        assert reply.user_status == tensor_pb2.USER_STATUS_WARM, reply
        assert len({item.item_id for item in reply.items}) == 5, reply
    assert health_status(f"127.0.0.1:{ranker}", "") == SERVING

    # SIGTERM: each pod's containers drain and exit 0 within terminationGracePeriodSeconds.
    for dep in plan.grpc_ports:
        grace = plan.grace_s[dep]
        started = time.monotonic()
        podman("pod", "stop", "--time", str(grace), f"{dep}-pod-0", timeout=grace + 30)
        stopped_in = time.monotonic() - started
        record_step(f"chart as pods: SIGTERM {dep.rsplit('-', 1)[1]} pod to exit", stopped_in)
        status, code = container_exit(app_container(dep))
        logs = podman("logs", app_container(dep), check=False).stdout[-2000:]
        assert (status, code) == ("exited", 0), f"{dep}: {status} {code}\n{logs}"
        assert stopped_in < grace, f"{dep}: {stopped_in:.1f} s to stop (grace {grace} s)"
    assert inspect("pod", pods[0])["State"] == "Exited"
