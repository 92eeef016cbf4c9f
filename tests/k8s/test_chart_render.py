"""The Helm chart renders valid, intended Kubernetes objects and its schema refuses bad values.

Uses the real helm binary (k8s/tools/fetch_tools.py) and kubernetes-validate's offline schemas;
no cluster is involved.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from chart_tools import (
    CHART_DIR,
    K8S_VERSION,
    PROBE_KINDS,
    by_kind,
    render,
    run_helm,
    template_args,
)

from services.common.endpoints import ENCODER, ENDPOINTS, SCORER

PROFILES: dict[str, list[Path]] = {
    "default": [],
    "cpu": [CHART_DIR / "values-cpu.yaml"],
    "gpu": [CHART_DIR / "values-gpu.yaml"],
}
# The chart's probes and ports must match what the services expose.
HEALTH = {name: endpoint.health_name for name, endpoint in ENDPOINTS.items()}
# Everything optional switched on, so those templates are validated too.
EVERYTHING_ON = {
    "metrics.serviceMonitor.enabled": "true",
    "modelRepository.source": "image",
    "modelRepository.image.repository": "registry.example/xdrec-models",
    "modelRepository.image.tag": "ml100k-3",
    "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name": "monitoring",
    "networkPolicy.rankerFrom[0].podSelector.matchLabels.role": "frontend",
    "ranker.service.type": "LoadBalancer",
    "ranker.service.loadBalancerSourceRanges[0]": "10.0.0.0/8",
    "encoder.autoscaling.enabled": "true",
    "scorer.podDisruptionBudget.minAvailable": "1",
    "scorer.gpu.runtimeClassName": "nvidia",
    "encoder.config.log-level": "DEBUG",
    "image.digest": "sha256:" + "a" * 64,
}


def component_of(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_spec(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]


def env_of(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    """The container's effective environment: envFrom ConfigMaps, then env values."""
    cms = by_kind(docs, "ConfigMap")
    (container,) = pod_spec(by_kind(docs, "Deployment")[f"t-{component}"])["containers"]
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(cms[src["configMapRef"]["name"]]["data"])
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    return env


@pytest.fixture(scope="module")
def rendered(helm: Path) -> dict[str, list[dict[str, Any]]]:
    out = {name: render(helm, files) for name, files in PROFILES.items()}
    out["everything"] = render(helm, PROFILES["gpu"], set_values=EVERYTHING_ON)
    return out


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm_lint_strict(helm: Path, profile: str) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    for f in PROFILES[profile]:
        args += ["-f", str(f)]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("profile", [*PROFILES, "everything"])
def test_every_object_is_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], profile: str
) -> None:
    docs = rendered[profile]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "NetworkPolicy"} <= kinds
    assert "PodDisruptionBudget" in kinds
    for doc in docs:
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "cert-manager.io/")):
            continue  # CRDs: not in the Kubernetes schemas; test_service_monitor/test_tls_*
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_kubernetes_validate_cli_accepts_default_render(helm: Path, tmp_path: Path) -> None:
    """The exact command from DESIGN.md section 6, on the whole default manifest file."""
    proc = run_helm(helm, *template_args())
    assert proc.returncode == 0, proc.stderr
    manifest = tmp_path / "xdrec.yaml"
    manifest.write_text(proc.stdout)
    cli = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(cli), "-k", K8S_VERSION, "--strict", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


BAD_VALUES = [
    ({"encoder.replicaCount": "-1"}, "/encoder/replicaCount"),
    ({"scorer.replicaCount": "two"}, "/scorer/replicaCount"),
    ({"profile": "tpu"}, "/profile"),
    ({"ranker.port": "70000"}, "/ranker/port"),
    ({"scorer.port": "0"}, "/scorer/port"),
    ({"metrics.port": "http"}, "/metrics/port"),
    ({"image.repository": ""}, "/image/repository"),
    ({"image.repository": "null"}, "repository"),
    ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
    ({"replicas": "3"}, "replicas"),
    ({"encoder.replicas": "3"}, "replicas"),
    ({"encoder.config.port": "1"}, "port"),
    ({"modelRepository.source": "s3"}, "/modelRepository/source"),
    ({"modelRepository.source": "image"}, "/modelRepository/image"),
    ({"modelRepository.pvc.create": "false"}, "existingClaim"),
    ({"ranker.service.type": "Ingress"}, "/ranker/service/type"),
    ({"scorer.gpu.count": "0"}, "/scorer/gpu/count"),
    ({"scorer.providers": "ROCm"}, "/scorer/providers"),
    ({"encoder.autoscaling.enabled": "yes"}, "/encoder/autoscaling/enabled"),
    ({"networkPolicy.enabled": "1"}, "/networkPolicy/enabled"),
    ({"tls.enabled": "yes"}, "/tls/enabled"),
    ({"tls.source": "vault"}, "/tls/source"),
    ({"tls.healthPort": "0"}, "/tls/healthPort"),
    ({"tls.certManager.issuerRef.kind": "Vault"}, "/tls/certManager/issuerRef/kind"),
    ({"tls.existingSecrets.encoder": "Bad_Name"}, "/tls/existingSecrets/encoder"),
    ({"auth.enabled": "1"}, "/auth/enabled"),
    ({"ranker.config.health-port": "1"}, "health-port"),
    ({"encoder.config.host": "::"}, "host"),
    ({"scorer.maxInFlight": "-1"}, "/scorer/maxInFlight"),
    ({"ranker.latencyTargetMs": "-5"}, "/ranker/latencyTargetMs"),
    ({"scorer.modelControl.mode": "open"}, "/scorer/modelControl/mode"),
    ({"ranker.config.max-in-flight": "8"}, "max-in-flight"),
]


@pytest.mark.parametrize(
    ("values", "names"), BAD_VALUES, ids=[next(iter(v)) for v, _ in BAD_VALUES]
)
def test_schema_rejects_bad_values(helm: Path, values: dict[str, str], names: str) -> None:
    proc = run_helm(helm, *template_args(set_values=values))
    assert proc.returncode != 0, f"{values} was accepted"
    assert "schema" in proc.stderr, proc.stderr
    assert names in proc.stderr, proc.stderr


@pytest.mark.parametrize("profile", [*PROFILES, "everything"])
def test_probes_are_native_grpc_health_checks(
    rendered: dict[str, list[dict[str, Any]]], profile: str
) -> None:
    for name, dep in by_kind(rendered[profile], "Deployment").items():
        component = component_of(dep)
        (container,) = pod_spec(dep)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # TLS is on in every profile: the kubelet probes the plaintext health-only port
        assert ports["health"] == 8086 and env_of(rendered[profile], component)[
            "XDREC_HEALTH_PORT"
        ] == str(ports["health"])
        for kind in PROBE_KINDS:
            probe = container[kind]
            assert probe["grpc"] == {"port": ports["health"], "service": HEALTH[component]}, (
                name,
                kind,
            )
            assert not {"httpGet", "exec", "tcpSocket"} & probe.keys()
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "model load budget"


@pytest.mark.parametrize("profile", [*PROFILES, "everything"])
def test_pods_are_locked_down(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    for name, dep in by_kind(rendered[profile], "Deployment").items():
        spec = pod_spec(dep)
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        (main,) = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "writable /tmp must be an emptyDir"
        assert main["resources"]["requests"]["cpu"] and main["resources"]["limits"]["memory"]
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_containers_run_the_cli_as_documented(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default"]
    deps = by_kind(docs, "Deployment")
    for component, port in [(name, e.grpc_port) for name, e in ENDPOINTS.items()]:
        (c,) = pod_spec(deps[f"t-{component}"])["containers"]
        assert c["command"] == ["xdrec"]
        assert c["args"][:2] == ["serve", component]
        env = env_of(docs, component)
        assert env["XDREC_PORT"] == str(port)
        assert env["XDREC_METRICS_PORT"] == "9090"
        assert env["XDREC_HOST"] == "0.0.0.0", "a pod must listen on its pod IP"
        mtls = {"grpc-mtls": 50054} if component == "ranker" else {}
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": port,
            "metrics": 9090,
            "health": 8086,
            **mtls,
        }
    encoder, scorer, ranker = (env_of(docs, c) for c in ("encoder", "scorer", "ranker"))
    assert encoder["XDREC_MODEL_REPO"] == scorer["XDREC_MODEL_REPO"] == "/data/models"
    assert encoder["XDREC_FEATURES"] == "/data/features.tsv"
    assert encoder["XDREC_MODEL"] == "ml100k-transfer"
    assert scorer["XDREC_PROVIDERS"] == "CPU"
    assert ranker["XDREC_ENCODER"] == f"t-encoder:{ENCODER.grpc_port}"
    assert ranker["XDREC_SCORER"] == f"t-scorer:{SCORER.grpc_port}"
    assert not any(k.startswith("XDREC_MODEL") for k in ranker)


def test_model_repository_volume(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, source in [("default", "pvc"), ("everything", "image")]:
        docs = rendered[profile]
        for name, dep in by_kind(docs, "Deployment").items():
            spec = pod_spec(dep)
            (main,) = spec["containers"]
            mounts = {m["name"]: m for m in main["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            if component_of(dep) == "ranker":
                assert "model-repository" not in mounts and "initContainers" not in spec
                continue
            mount = mounts["model-repository"]
            assert mount["mountPath"] == "/data" and mount["readOnly"] is True, name
            if source == "pvc":
                claim = volumes["model-repository"]["persistentVolumeClaim"]
                assert claim == {"claimName": "t-models", "readOnly": True}
                assert "initContainers" not in spec
            else:
                assert "emptyDir" in volumes["model-repository"]
                (init,) = spec["initContainers"]
                assert init["image"] == "registry.example/xdrec-models:ml100k-3"
                assert init["command"] == ["cp", "-R", "/models/.", "/data/"]
                assert init["volumeMounts"][0]["mountPath"] == "/data"
                assert "readOnly" not in init["volumeMounts"][0]
                assert dep["spec"]["template"]["metadata"]["annotations"][
                    "xdrec.io/model-image"
                ].endswith(":ml100k-3")
    pvcs = by_kind(rendered["default"], "PersistentVolumeClaim")
    assert pvcs["t-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvcs["t-models"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not by_kind(rendered["everything"], "PersistentVolumeClaim")


def test_services_headless_where_clients_balance_per_request(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["default"]
    services = by_kind(docs, "Service")
    deps = by_kind(docs, "Deployment")
    assert services["t-encoder"]["spec"]["clusterIP"] == "None"
    assert services["t-scorer"]["spec"]["clusterIP"] == "None"
    assert services["t-ranker"]["spec"].get("clusterIP") != "None"
    assert services["t-ranker"]["spec"]["type"] == "ClusterIP"
    for name, svc in services.items():
        selector = svc["spec"]["selector"]
        matches = [
            d
            for d in deps.values()
            if all(
                d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()
            )
        ]
        assert len(matches) == 1, f"Service {name} must select exactly one Deployment"
        (c,) = pod_spec(matches[0])["containers"]
        port_names = {p["name"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, (name, port)
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "grpc"


def test_network_policies(rendered: dict[str, list[dict[str, Any]]]) -> None:
    ranker_labels = {
        "app.kubernetes.io/name": "xdrec",
        "app.kubernetes.io/instance": "t",
        "app.kubernetes.io/component": "ranker",
    }
    policies = by_kind(rendered["default"], "NetworkPolicy")
    assert set(policies) == {"t-encoder", "t-scorer", "t-ranker"}
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name[2:]
        (rule,) = spec["ingress"]  # no metrics rule unless metricsFrom is set
        if name == "t-ranker":
            assert rule["ports"] == [
                {"port": "grpc", "protocol": "TCP"},
                {"port": "grpc-mtls", "protocol": "TCP"},
            ]
            assert "from" not in rule, "the ranker is the public entry point"
        else:
            assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
            assert rule["from"] == [{"podSelector": {"matchLabels": ranker_labels}}], name

    policies = by_kind(rendered["everything"], "NetworkPolicy")
    ranker_rules = policies["t-ranker"]["spec"]["ingress"]
    assert ranker_rules[0]["from"] == [{"podSelector": {"matchLabels": {"role": "frontend"}}}]
    for policy in policies.values():
        metrics_rule = policy["spec"]["ingress"][1]
        assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"name": "monitoring"}


def test_gpu_profile_puts_only_the_scorer_on_gpus(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["gpu"]
    deps = by_kind(docs, "Deployment")
    scorer = pod_spec(deps["t-scorer"])
    (c,) = scorer["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in scorer[
        "tolerations"
    ]
    assert scorer["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert env_of(docs, "scorer")["XDREC_PROVIDERS"] == "CUDA,CPU"
    assert c["image"].endswith(":0.1.0-gpu")
    for other in ("t-encoder", "t-ranker"):
        spec = pod_spec(deps[other])
        assert "nvidia.com/gpu" not in str(spec), other
    for profile in ("default", "cpu"):
        assert "nvidia.com/gpu" not in str(rendered[profile]), profile
    assert pod_spec(by_kind(rendered["everything"], "Deployment")["t-scorer"])[
        "runtimeClassName"
    ] == ("nvidia")


def test_autoscaling_and_disruption_budgets(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["cpu"]
    deps = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"t-encoder", "t-scorer", "t-ranker"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in deps[name]["spec"], "the HPA owns the replica count"
        assert hpa["spec"]["minReplicas"] >= 2
    assert not by_kind(rendered["default"], "HorizontalPodAutoscaler")
    assert by_kind(rendered["default"], "Deployment")["t-encoder"]["spec"]["replicas"] == 2
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        labels = deps[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1
    assert (
        by_kind(rendered["everything"], "PodDisruptionBudget")["t-scorer"]["spec"]["minAvailable"]
        == 1
    )


def test_service_monitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert not by_kind(rendered["default"], "ServiceMonitor"), "off by default"
    docs = rendered["everything"]
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for name, svc in by_kind(docs, "Service").items():
        assert selector.items() <= svc["metadata"]["labels"].items(), name
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}, name


def test_config_change_rolls_the_pods(helm: Path) -> None:
    def checksum(docs: list[dict[str, Any]]) -> str:
        dep = by_kind(docs, "Deployment")["t-encoder"]
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = render(helm)
    changed = render(helm, set_values={"encoder.config.log-level": "DEBUG"})
    assert checksum(base) != checksum(changed)
    assert env_of(changed, "encoder")["XDREC_LOG_LEVEL"] == "DEBUG"
    token = render(helm, set_values={"modelRepository.rolloutToken": "v7"})
    annotations = by_kind(token, "Deployment")["t-scorer"]["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["xdrec.io/model-rollout-token"] == "v7"


def test_tls_is_on_by_default_and_mutual_between_the_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["default"]
    deps = by_kind(docs, "Deployment")
    certificates = by_kind(docs, "Certificate")
    assert set(certificates) == {"t-ca", "t-encoder", "t-scorer", "t-ranker"}
    issuers = by_kind(docs, "Issuer")
    assert issuers["t-ca"]["spec"] == {"ca": {"secretName": "t-ca"}}
    assert issuers["t-selfsigned"]["spec"] == {"selfSigned": {}}
    assert certificates["t-ca"]["spec"]["isCA"] is True
    for component in ENDPOINTS:
        name = f"t-{component}"
        cert = certificates[name]["spec"]
        assert cert["secretName"] == f"{name}-tls"
        assert cert["issuerRef"] == {"name": "t-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert name in cert["dnsNames"] and f"{name}.xdrec.svc" in cert["dnsNames"]
        assert {"server auth", "client auth"} <= set(cert["usages"])
        spec = pod_spec(deps[name])
        (c,) = spec["containers"]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert mounts["tls"]["mountPath"] == "/etc/xdrec/tls" and mounts["tls"]["readOnly"]
        assert volumes["tls"]["secret"]["secretName"] == f"{name}-tls"
        env = env_of(docs, component)
        assert env["XDREC_TLS_CERT"] == "/etc/xdrec/tls/tls.crt"
        assert env["XDREC_TLS_KEY"] == "/etc/xdrec/tls/tls.key"
    for component in ("encoder", "scorer"):  # only the ranker's certificate gets in
        env = env_of(docs, component)
        assert env["XDREC_TLS_CLIENT_AUTH"] == "true"
        assert env["XDREC_TLS_CA"] == "/etc/xdrec/tls/ca.crt"
        assert env["XDREC_TLS_ALLOWED_CLIENTS"] == "t-ranker"
        assert "XDREC_AUTH_TOKEN_FILE" not in env
    ranker = env_of(docs, "ranker")
    assert ranker["XDREC_DOWNSTREAM_TLS_CA"] == "/etc/xdrec/tls/ca.crt"
    assert "XDREC_TLS_CLIENT_AUTH" not in ranker  # main port: TLS + bearer token
    assert ranker["XDREC_MTLS_PORT"] == "50054"  # second port: client certificates
    ranker_ports = {p["name"]: p for p in by_kind(docs, "Service")["t-ranker"]["spec"]["ports"]}
    assert ranker_ports["grpc-mtls"]["port"] == 50054
    assert ranker["XDREC_AUTH_TOKEN_FILE"] == "/etc/xdrec/auth/tokens"
    (token_secret,) = by_kind(docs, "Secret").values()
    assert token_secret["metadata"]["name"] == "t-ranker-tokens"
    assert token_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(token_secret["data"]) == {"tokens"}
    ranker_spec = pod_spec(deps["t-ranker"])
    volumes = {v["name"]: v for v in ranker_spec["volumes"]}
    assert volumes["auth-tokens"]["secret"]["secretName"] == "t-ranker-tokens"


def test_load_shedding_and_admin_identities(
    helm: Path, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered["default"]
    assert env_of(docs, "encoder")["XDREC_MAX_IN_FLIGHT"] == "256"
    assert env_of(docs, "scorer")["XDREC_MAX_IN_FLIGHT"] == "128"
    assert env_of(docs, "scorer")["XDREC_MODEL_CONTROL"] == "none"
    assert "XDREC_ADMIN_IDENTITIES" not in env_of(docs, "scorer")
    ranker = env_of(docs, "ranker")
    assert (ranker["XDREC_MAX_IN_FLIGHT"], ranker["XDREC_QUEUE_BUDGET_MS"]) == ("64", "20")
    assert (ranker["XDREC_LATENCY_TARGET_MS"], ranker["XDREC_MIN_IN_FLIGHT"]) == ("0", "4")
    admins = render(
        helm,
        set_values={
            "scorer.modelControl.mode": "explicit",
            "scorer.modelControl.adminIdentities[0]": "ops-admin",
            "scorer.modelControl.adminIdentities[1]": "release-bot",
            "scorer.maxInFlight": "32",
            "ranker.latencyTargetMs": "250",
        },
    )
    scorer = env_of(admins, "scorer")
    assert scorer["XDREC_MODEL_CONTROL"] == "explicit"
    assert scorer["XDREC_ADMIN_IDENTITIES"] == "ops-admin,release-bot"
    assert scorer["XDREC_TLS_CLIENT_AUTH"] == "true"  # admins prove who they are by certificate
    assert scorer["XDREC_MAX_IN_FLIGHT"] == "32"
    assert env_of(admins, "ranker")["XDREC_LATENCY_TARGET_MS"] == "250"
    for values, message in (
        ({"scorer.modelControl.mode": "explicit"}, "needs scorer.modelControl.adminIdentities"),
        (
            {
                "scorer.modelControl.mode": "explicit",
                "scorer.modelControl.adminIdentities[0]": "ops-admin",
                "tls.enabled": "false",
                "auth.enabled": "false",
            },
            "need tls.enabled",
        ),
    ):
        proc = run_helm(helm, *template_args(set_values=values))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_tls_options(helm: Path) -> None:
    existing = render(
        helm,
        set_values={
            "tls.source": "existingSecrets",
            "tls.existingSecrets.ranker": "my-ranker-cert",
            "auth.existingSecret": "my-tokens",
            "tls.rankerMtlsPort": "0",
        },
    )
    assert not by_kind(existing, "Certificate") and not by_kind(existing, "Secret")
    deps = by_kind(existing, "Deployment")
    secrets = {
        name: {v["name"]: v for v in pod_spec(dep)["volumes"]}["tls"]["secret"]["secretName"]
        for name, dep in deps.items()
    }
    assert secrets == {
        "t-encoder": "t-encoder-tls",
        "t-scorer": "t-scorer-tls",
        "t-ranker": "my-ranker-cert",
    }
    ranker_volumes = {v["name"]: v for v in pod_spec(deps["t-ranker"])["volumes"]}
    assert ranker_volumes["auth-tokens"]["secret"]["secretName"] == "my-tokens"
    assert "XDREC_MTLS_PORT" not in env_of(existing, "ranker")
    ranker_ports = {p["name"] for p in pod_spec(deps["t-ranker"])["containers"][0]["ports"]}
    assert "grpc-mtls" not in ranker_ports

    own_issuer = render(
        helm,
        set_values={
            "tls.certManager.issuerRef.name": "corp-ca",
            "tls.certManager.issuerRef.kind": "ClusterIssuer",
            "tls.certManager.rankerDnsNames[0]": "recs.example.com",
        },
    )
    assert not by_kind(own_issuer, "Issuer")
    certificates = by_kind(own_issuer, "Certificate")
    assert set(certificates) == {"t-encoder", "t-scorer", "t-ranker"}
    assert certificates["t-ranker"]["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    assert "recs.example.com" in certificates["t-ranker"]["spec"]["dnsNames"]

    plaintext = render(helm, set_values={"tls.enabled": "false", "auth.enabled": "false"})
    assert not by_kind(plaintext, "Certificate") and not by_kind(plaintext, "Secret")
    for name, dep in by_kind(plaintext, "Deployment").items():
        (c,) = pod_spec(dep)["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert "health" not in ports
        assert c["startupProbe"]["grpc"]["port"] == ports["grpc"], name
        env = env_of(plaintext, component_of(dep))
        prefixes = ("XDREC_TLS", "XDREC_AUTH", "XDREC_HEALTH", "XDREC_MTLS")
        assert not any(k.startswith(prefixes) for k in env)
        assert "grpc-mtls" not in ports


REDIS_INTERNAL = {
    "featureStore.backend": "redis",
    "featureStore.redis.internal.enabled": "true",
    "featureStore.redis.existingSecret": "redis-auth",
}


def test_redis_feature_store_profile(helm: Path) -> None:
    docs = render(helm, set_values=REDIS_INTERNAL)
    env = env_of(docs, "encoder")
    assert env["XDREC_FEATURE_STORE"] == "redis"
    assert env["XDREC_REDIS_URL"] == "redis://t-redis:6379/0"
    (encoder,) = pod_spec(by_kind(docs, "Deployment")["t-encoder"])["containers"]
    password = next(v for v in encoder["env"] if v["name"] == "XDREC_REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    assert not any("password" in str(arg).lower() for arg in encoder["args"])

    (redis,) = by_kind(docs, "StatefulSet").values()
    pod = pod_spec(redis)
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    script = container["args"][0]
    assert "appendonly yes" in script and "appendfsync always" in script
    assert "$REDIS_PASSWORD" in script and "--requirepass" not in script  # not in argv
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert by_kind(docs, "Service")["t-redis"]["spec"]["ports"][0]["port"] == 6379

    policy = by_kind(docs, "NetworkPolicy")["t-redis"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "xdrec",
                    "app.kubernetes.io/instance": "t",
                    "app.kubernetes.io/component": "encoder",
                }
            }
        }
    ]
    # memory stays the default and renders no Redis at all
    default = render(helm)
    assert env_of(default, "encoder")["XDREC_FEATURE_STORE"] == "memory"
    assert "StatefulSet" not in {d["kind"] for d in default}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"featureStore.backend": "redis"}, "/featureStore/redis/url"),
        ({"featureStore.backend": "cassandra"}, "/featureStore/backend"),
        (
            {"featureStore.backend": "redis", "featureStore.redis.url": "redis://u:pw@h:6379/0"},
            "/featureStore/redis/url",
        ),
        ({"featureStore.redis.internal.appendfsync": "no"}, "appendfsync"),
    ],
)
def test_redis_values_are_schema_checked(helm: Path, values: dict[str, str], message: str) -> None:
    result = run_helm(helm, *template_args(set_values=values))
    assert result.returncode != 0
    assert message in result.stderr
