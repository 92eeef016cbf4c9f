"""Chart and code cannot drift apart: the rendered pods, run as local processes, serve.

For each rendered Deployment the container's command, args and environment (ConfigMaps
included) are started as a local process (see chart_tools.LocalPlan for the mapping of Service
DNS names, ports and volumes). Then what the kubelet would check is checked: every declared
containerPort answers (gRPC health / HTTP /metrics), every gRPC probe's Check with the declared
service name returns SERVING, the health names are real services (reflection), a Recommend
through the ranker works, and SIGTERM stops each process within terminationGracePeriodSeconds.

The model repository comes from tests/fixtures/model_repo.py (``build_model_repo(root)``), the
builder the service tests use. The chart's default profile serves TLS (mutual between the
ranker and encoder/scorer) with a bearer token on the ranker: the test makes a CA and one
certificate Secret per component (tests/fixtures/certs.py), mounts each as that pod's
`/etc/xdrec/tls`, writes the token file the chart's Secret would hold, and talks TLS to the
gRPC ports, as the ranker's clients do; the probes use the plaintext health-only port.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from chart_tools import (
    REPO_ROOT,
    LocalContainer,
    LocalPlan,
    by_kind,
    process_env,
    render,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.tls import TlsConfig, open_sync_channel
from tests.fixtures.certs import Authority
from tests.fixtures.model_repo import build_model_repo
from tests.fixtures.redis_server import start_redis

STARTUP_CAP_S = 120.0  # the chart allows minutes for real models; test models load in seconds
SERVING = health_pb2.HealthCheckResponse.SERVING
# The Redis feature store profile (the URL is set per test).
REDIS_VALUES = {"featureStore.backend": "redis"}


@dataclass(frozen=True)
class ModelData:
    """A prepared volume: <root>/models/<name>/<version>/..., <root>/features.tsv."""

    root: Path
    model_name: str
    warm_user: str


def build_model_data(root: Path) -> ModelData:
    """Runs the shared fixture builder and lays its output out as the chart expects."""
    models = root / "models"
    models.mkdir(parents=True)
    built = build_model_repo(models)
    name = built.name
    features = root / "features.tsv"
    features.write_bytes(built.features_path.read_bytes())

    # A warm user: one with target-domain rows in the feature snapshot.
    warm = None
    with features.open() as fh:
        header = fh.readline().rstrip("\n").split("\t")
        user_col, domain_col = header.index("user_id"), header.index("domain")
        for line in fh:
            cols = line.rstrip("\n").split("\t")
            if len(cols) > domain_col and cols[domain_col] == "target":
                warm = cols[user_col]
                break
    assert warm, "the features file has no user with target-domain history"
    return ModelData(root=root, model_name=name, warm_user=warm)


TLS_MOUNT = "/etc/xdrec/tls"
AUTH_MOUNT = "/etc/xdrec/auth"
TOKEN = "test-token-0123456789abcdef"


@dataclass(frozen=True)
class ReleaseSecrets:
    """What the release's Secrets would hold: per-pod certificate dirs and the token dir."""

    pod_paths: dict[str, dict[str, Path]]
    auth_dir: Path
    client: TlsConfig  # how a client of the release dials its gRPC ports (the ranker's cert)


def make_release_secrets(root: Path, release: str = "t") -> ReleaseSecrets:
    """A CA and one kubernetes.io/tls-shaped dir (tls.crt, tls.key, ca.crt) per component."""
    ca = Authority.create(root / "ca")
    pod_paths = {}
    for component in ("encoder", "scorer", "ranker"):
        name = f"{release}-{component}"
        pair = ca.issue(name)
        secret = root / name
        secret.mkdir()
        (secret / "tls.crt").write_bytes(pair.cert.read_bytes())
        (secret / "tls.key").write_bytes(pair.key.read_bytes())
        (secret / "ca.crt").write_bytes(ca.cert.read_bytes())
        pod_paths[name] = {TLS_MOUNT: secret}
    auth_dir = root / "auth"
    auth_dir.mkdir()
    (auth_dir / "tokens").write_text(f"clients {TOKEN}\n")
    ranker = pod_paths[f"{release}-ranker"][TLS_MOUNT]
    client = TlsConfig(
        cert=str(ranker / "tls.crt"), key=str(ranker / "tls.key"), ca=str(ranker / "ca.crt")
    )
    return ReleaseSecrets(pod_paths=pod_paths, auth_dir=auth_dir, client=client)


def grpc_channel(port: int, tls: TlsConfig | None) -> grpc.Channel:
    """A channel to a local gRPC port: TLS with ``tls`` (client certificate included) or not."""
    return open_sync_channel(
        f"127.0.0.1:{port}", None if tls is None else tls.channel_credentials()
    )


def health_check(
    port: int, service: str, timeout: float = 2.0, tls: TlsConfig | None = None
) -> int | str:
    """The health status (SERVING, NOT_SERVING, ...), or the gRPC error code name."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc_channel(port, tls) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status
        except grpc.RpcError as exc:
            return exc.code().name  # NOT_FOUND: the server does not know this health name


def reflected_services(port: int, tls: TlsConfig | None) -> set[str]:
    with grpc_channel(port, tls) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names: set[str] = set()
        for response in responses:
            names |= {s.name for s in response.list_services_response.service}
            break
        return names


@dataclass
class Running:
    container: LocalContainer
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def run_release(plan: LocalPlan, workdir: Path) -> Iterator[list[Running]]:
    """Starts every container of the plan (after its init containers); stops them all after."""
    running: list[Running] = []
    try:
        for container in plan.containers():
            for init in container.init:
                proc = subprocess.run(init.argv, capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, f"init container {init.name}: {proc.stderr}"
            cwd = workdir / f"cwd-{container.deployment}"
            cwd.mkdir(parents=True, exist_ok=True)
            log = workdir / f"{container.deployment}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    container.argv,
                    env=process_env(container.env),
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            running.append(Running(container, proc, log))
        yield running
    finally:
        for r in running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in running:
            try:
                r.proc.wait(timeout=r.container.termination_grace_s)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(timeout=10)


def wait_started(running: list[Running]) -> None:
    """Polls each startup probe like the kubelet, within its failure budget (capped)."""
    for r in running:
        (startup,) = [p for p in r.container.probes if p.kind == "startupProbe"]
        deadline = time.monotonic() + min(
            startup.period_s * startup.failure_threshold, STARTUP_CAP_S
        )
        while True:
            if r.proc.poll() is not None:
                pytest.fail(
                    f"{r.container.deployment} exited with {r.proc.returncode} during start-up:\n"
                    f"argv={r.container.argv}\n{r.log_tail()}"
                )
            status = health_check(startup.port, startup.service, timeout=1.0)
            if status == SERVING:
                break
            if status == "NOT_FOUND":  # up, but the probe's service name is not registered
                pytest.fail(
                    f"{r.container.deployment}: the startup probe's health service "
                    f"{startup.service!r} is unknown to the server (NOT_FOUND)\n{r.log_tail()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{r.container.deployment}: startup probe {startup.service!r} never SERVING\n"
                    f"{r.log_tail()}"
                )
            time.sleep(0.25)


def help_flags(component: str) -> set[str]:
    """The XDREC_* variables `xdrec serve <component>` reads (one per --flag)."""
    xdrec = Path(sys.executable).parent / "xdrec"
    proc = subprocess.run(
        [str(xdrec), "serve", component, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=process_env({}),
    )
    assert proc.returncode == 0, proc.stderr
    flags = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", proc.stdout)) - {"help"}
    return {"XDREC_" + f.upper().replace("-", "_") for f in flags}


@pytest.mark.integration
def test_every_chart_variable_is_a_cli_flag(helm: Path) -> None:
    """An XDREC_* variable without a matching flag would be silently ignored by the CLI."""
    chart = REPO_ROOT / "k8s" / "xdrec"
    variants = [
        render(helm),
        render(helm, [chart / "values-cpu.yaml"]),
        render(helm, [chart / "values-gpu.yaml"]),
        render(helm, set_values=REDIS_VALUES | {"featureStore.redis.url": "redis://r:6379/0"}),
    ]
    known = {c: help_flags(c) for c in ("encoder", "scorer", "ranker")}
    for docs in variants:
        for name, cm in by_kind(docs, "ConfigMap").items():
            component = cm["metadata"]["labels"]["app.kubernetes.io/component"]
            unknown = set(cm["data"]) - known[component]
            assert not unknown, f"ConfigMap {name}: no `xdrec serve {component}` flag for {unknown}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("source", "profile", "tls"),
    [
        ("pvc", None, True),
        ("image", None, True),
        ("pvc", "gpu", True),
        ("pvc", None, False),
        ("pvc", "redis", True),
    ],
    ids=[
        "pvc",
        "image-init-container",
        "gpu-profile-falls-back-to-cpu",
        "plaintext",
        "redis-feature-store",
    ],
)
def test_rendered_pods_serve_as_local_processes(
    helm: Path,
    tmp_path: Path,
    source: str,
    profile: str | None,
    tls: bool,
    request: pytest.FixtureRequest,
) -> None:
    data = build_model_data(tmp_path / "model-data")
    values = {"modelRepository.modelName": data.model_name, "modelRepository.source": source}
    if not tls:
        values |= {"tls.enabled": "false", "auth.enabled": "false"}
    redis = None
    if profile == "redis":  # an existing Redis by URL: a real local redis-server
        redis = start_redis(tmp_path / "redis")
        request.addfinalizer(redis.stop)
        values |= REDIS_VALUES | {"featureStore.redis.url": redis.url}
        profile = None
    if source == "image":
        values |= {
            "modelRepository.image.repository": "registry.example/models",
            "modelRepository.image.tag": "test",
            "modelRepository.image.path": "/models",
        }
    files = [REPO_ROOT / "k8s" / "xdrec" / f"values-{profile}.yaml"] if profile else []
    docs = render(helm, files, set_values=values)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    volume = tmp_path / "volume"
    volume.mkdir()
    if source == "pvc":
        paths = {"/data": data.root, "/tmp": scratch}
    else:  # the init container copies the model image's /models into the emptyDir at /data
        paths = {"/data": volume, "/models": data.root, "/tmp": scratch}
    secrets = make_release_secrets(tmp_path / "secrets")
    paths[AUTH_MOUNT] = secrets.auth_dir
    plan = LocalPlan(docs, paths, secrets.pod_paths)
    containers = plan.containers()
    client_tls = secrets.client if tls else None
    assert plan.unresolved == [], f"cluster addresses with no Service: {plan.unresolved}"
    mapped = set(paths) | {TLS_MOUNT}
    assert plan.volume_mounts() <= mapped, "every volume mount must be mapped"
    assert (TLS_MOUNT in plan.volume_mounts()) == tls
    assert {c.deployment for c in containers} == {"t-encoder", "t-scorer", "t-ranker"}

    with run_release(plan, tmp_path / "run") as running:
        wait_started(running)
        for r in running:
            c = r.container
            # every gRPC probe returns SERVING for its declared service name
            for probe in c.probes:
                status = health_check(probe.port, probe.service)
                assert status == SERVING, f"{c.deployment} {probe.kind} {probe.service!r}: {status}"
            # every declared containerPort answers
            for port_name, local in c.ports.items():
                if port_name == "grpc":
                    status = health_check(local, "", tls=client_tls)
                    assert status == SERVING, f"{c.deployment} overall health"
                    services = reflected_services(local, client_tls)
                    assert {p.service for p in c.probes} <= services, (c.deployment, services)
                    if tls:  # the gRPC port refuses plaintext
                        assert health_check(local, "") == "UNAVAILABLE", c.deployment
                elif port_name == "grpc-mtls":  # the ranker's client-certificate port
                    status = health_check(local, "", tls=client_tls)
                    assert status == SERVING, f"{c.deployment} mTLS port"
                    assert health_check(local, "", tls=TlsConfig(ca=secrets.client.ca)) == (
                        "UNAVAILABLE"
                    ), "the mTLS port must refuse a client without a certificate"
                elif port_name == "health":  # plaintext, grpc.health.v1 only: for the probes
                    assert health_check(local, "") == SERVING, f"{c.deployment} health port"
                elif port_name == "metrics":
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{local}/metrics", timeout=5
                    ) as rsp:
                        assert rsp.status == 200
                        assert b"# TYPE" in rsp.read()
                else:
                    pytest.fail(f"{c.deployment}: no check for containerPort {port_name!r}")

        # end to end through the public entry point, as a client of the ranker Service would
        from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

        (ranker,) = [r for r in running if r.container.deployment == "t-ranker"]
        # a public client: TLS verified with the CA, no client certificate, the bearer token
        public = TlsConfig(ca=secrets.client.ca) if tls else None
        token = (("authorization", f"Bearer {TOKEN}"),) if tls else ()
        recommend = ranker_pb2.RecommendRequest(user_id=data.warm_user, k=5)
        with grpc_channel(ranker.container.ports["grpc"], public) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)
            reply = stub.Recommend(recommend, timeout=10, metadata=token)
            if tls:  # auth is on by default: anonymous calls are refused
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Recommend(recommend, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(reply.items) > 0, reply
        assert reply.model.name == data.model_name
        if tls:  # a client with a certificate from the release's CA needs no token
            with grpc_channel(ranker.container.ports["grpc-mtls"], secrets.client) as channel:
                stub = ranker_pb2_grpc.RankerServiceStub(channel)
                assert stub.Recommend(recommend, timeout=10).items

        if tls:  # the encoder hands out histories only to the ranker's certificate
            from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc

            (encoder,) = [r for r in running if r.container.deployment == "t-encoder"]
            with grpc_channel(encoder.container.ports["grpc"], public) as channel:
                with pytest.raises(grpc.RpcError) as no_cert:
                    encoder_pb2_grpc.EncoderServiceStub(channel).Encode(
                        encoder_pb2.EncodeRequest(user_id=data.warm_user), timeout=5
                    )
                assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE

        if redis is not None:  # the encoder writes to and reads from the configured Redis
            from xdrec.common.v1 import events_pb2

            with grpc_channel(ranker.container.ports["grpc"], public) as channel:
                stub = ranker_pb2_grpc.RankerServiceStub(channel)
                event = events_pb2.UserEvent(
                    event_id="e1", domain="target", item_id="x", kind=events_pb2.EVENT_KIND_CLICK
                )
                ack = stub.RecordEvents(
                    events_pb2.RecordEventsRequest(user_id="chart-user", events=[event]),
                    timeout=10,
                    metadata=token,
                )
            assert ack.accepted == 1
            assert redis.ping()

        # SIGTERM: each process drains and exits within terminationGracePeriodSeconds
        for r in running:
            r.proc.send_signal(signal.SIGTERM)
        for r in running:
            try:
                r.proc.wait(timeout=r.container.termination_grace_s)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{r.container.deployment} ignored SIGTERM\n{r.log_tail()}")
