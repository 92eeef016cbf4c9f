"""``xdrec serve all``: the three services as child processes of one foreground command.

Why child processes: the services are separate processes in production (one container each);
running them the same way locally keeps the behaviour identical (own event loop, own ONNX Runtime
threads, real network hops). The supervisor starts them, waits until each reports SERVING on its
health service, forwards SIGTERM/SIGINT, and shuts them down in order - the ranker first so no
new request is accepted while its downstreams are going away. If a child dies, the others are
stopped and the command fails.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import add_config_arguments, config_from_args, option
from services.common.endpoints import ENCODER, ENDPOINTS, LOOPBACK, RANKER, SCORER, dial_target
from services.common.logs import configure_logging
from services.common.tls import TlsConfig, open_sync_channel

log = logging.getLogger("xdrec.supervisor")


@dataclass(frozen=True)
class ServeAllConfig:
    """What the three children need; everything else they read from XDREC_* variables."""

    model_repo: str = option("", "model repository root directory (required)")
    model: str = option("", "model name for the encoder (empty = the only model in the repo)")
    features: str = option("", "features.tsv snapshot for the encoder's feature store")
    host: str = option(LOOPBACK, "interface the three services bind to")
    encoder_port: int = option(ENCODER.grpc_port, "encoder gRPC port")
    scorer_port: int = option(SCORER.grpc_port, "scorer gRPC port")
    ranker_port: int = option(RANKER.grpc_port, "ranker gRPC port")

    def ports(self) -> dict[str, int]:
        """gRPC port per service name."""
        return {
            ENCODER.name: self.encoder_port,
            SCORER.name: self.scorer_port,
            RANKER.name: self.ranker_port,
        }

    metrics: bool = option(True, "expose each service's /metrics on its default metrics port")
    start_timeout_s: float = option(120.0, "seconds to wait for all three to report SERVING")
    grace_period_s: float = option(5.0, "seconds each service may drain in-flight requests")
    log_level: str = option(
        "INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    tls_cert: str = option(
        "",
        "PEM certificate for all three (empty = plaintext loopback); also the ranker's client "
        "certificate towards the encoder and scorer",
    )
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_ca: str = option(
        "", "PEM CA bundle: the encoder and scorer then require a client certificate from it"
    )
    auth_token_file: str = option("", "bearer-token file the ranker checks (empty = none)")

    @property
    def tls(self) -> TlsConfig:
        """How the supervisor dials the children: it presents the same certificate."""
        return TlsConfig(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)


@dataclass
class Child:
    """One running service process."""

    name: str
    address: str
    process: subprocess.Popen[bytes]


def child_commands(config: ServeAllConfig) -> dict[str, list[str]]:
    """The command line of each child (``python -m services.<name> ...``)."""
    common = ["--host", config.host, "--grace-period-s", str(config.grace_period_s)]
    common += ["--log-level", config.log_level]
    if not config.metrics:
        common += ["--metrics-port", "0"]
    downstream: list[str] = []
    if config.tls.enabled:
        common += ["--tls-cert", config.tls_cert, "--tls-key", config.tls_key]
        if config.tls_ca:
            downstream = ["--downstream-tls-ca", config.tls_ca]
    mutual = ["--tls-ca", config.tls_ca, "--tls-client-auth"] if downstream else []
    ranker_auth = ["--auth-token-file", config.auth_token_file] if config.auth_token_file else []
    python = [sys.executable, "-m"]
    encoder = ["--model-repo", config.model_repo, "--port", str(config.encoder_port)]
    if config.model:
        encoder += ["--model", config.model]
    if config.features:
        encoder += ["--features", config.features]
    return {
        "encoder": [*python, "services.encoder", *encoder, *common, *mutual],
        "scorer": [
            *python,
            "services.scorer",
            "--model-repo",
            config.model_repo,
            "--port",
            str(config.scorer_port),
            *common,
            *mutual,
        ],
        "ranker": [
            *python,
            "services.ranker",
            "--encoder",
            dial_target(config.host, config.encoder_port),
            "--scorer",
            dial_target(config.host, config.scorer_port),
            "--port",
            str(config.ranker_port),
            *common,
            *downstream,
            *ranker_auth,
        ],
    }


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the supervisor dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def is_serving(
    address: str,
    service: str,
    timeout: float = 1.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> bool:
    """Whether ``service`` at ``address`` answers its health check with SERVING."""
    with open_sync_channel(address, credentials) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _stop(children: list[Child], timeout: float) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in time; killing it", extra={"child": child.name})
            child.process.kill()
            child.process.wait()


def run_all(config: ServeAllConfig) -> int:
    """Starts the three services, waits for SERVING, runs until a signal; returns the exit code."""
    if not config.model_repo:
        raise SystemExit("xdrec serve all: --model-repo (or XDREC_MODEL_REPO) is required")
    try:
        credentials = config.tls.channel_credentials() if config.tls.enabled else None
    except ValueError as exc:
        raise SystemExit(f"xdrec serve all: {exc}") from None
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    ports = config.ports()
    children: list[Child] = []
    exit_code = 0
    try:
        for name, command in child_commands(config).items():
            process = subprocess.Popen(command, process_group=0, preexec_fn=_die_with_parent)
            children.append(Child(name, dial_target(config.host, ports[name]), process))
            log.info("started", extra={"child": name, "pid": process.pid})
        exit_code = _wait_serving(children, config.start_timeout_s, stop, credentials)
        if exit_code == 0 and not stop.is_set():
            print(
                "serving: " + ", ".join(f"{c.name} {c.address}" for c in children),
                flush=True,
            )
            while not stop.wait(0.2):
                dead = [c for c in children if c.process.poll() is not None]
                if dead:
                    log.error(
                        "a service exited; stopping the others",
                        extra={"child": dead[0].name, "returncode": dead[0].process.returncode},
                    )
                    exit_code = 1
                    break
    finally:
        log.info("shutting down", extra={"signal": received[0] if received else None})
        by_name = {c.name: c for c in children}
        timeout = config.grace_period_s + 5.0
        _stop([by_name[n] for n in ("ranker",) if n in by_name], timeout)
        _stop([by_name[n] for n in ("encoder", "scorer") if n in by_name], timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failed = [c for c in children if c.process.returncode not in (0, -signal.SIGTERM)]
    if failed and exit_code == 0:
        exit_code = 1
    return exit_code


def _wait_serving(
    children: list[Child],
    timeout: float,
    stop: threading.Event,
    credentials: grpc.ChannelCredentials | None = None,
) -> int:
    """0 once every child is SERVING; 1 if one exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    pending = {c.name: c for c in children}
    while pending and not stop.is_set():
        for name, child in list(pending.items()):
            if child.process.poll() is not None:
                log.error(
                    "service exited during start-up",
                    extra={"child": name, "returncode": child.process.returncode},
                )
                return 1
            if is_serving(child.address, ENDPOINTS[name].health_name, credentials=credentials):
                log.info("service is SERVING", extra={"child": name, "address": child.address})
                del pending[name]
        if time.monotonic() > deadline:
            log.error("services not SERVING in time", extra={"pending": sorted(pending)})
            return 1
        stop.wait(0.2)
    return 0


def _run_from_args(args: argparse.Namespace) -> int:
    config = config_from_args(ServeAllConfig, args)
    configure_logging("serve-all", config.log_level)
    return run_all(config)


def register(services: argparse._SubParsersAction) -> None:
    """Adds ``serve all``."""
    parser = services.add_parser(
        "all",
        help="start encoder, scorer and ranker as child processes and wait for all to serve",
        description="Start the encoder, the scorer and the ranker as child processes on their "
        "default ports, wait until all three report SERVING, and stop them cleanly on "
        "Ctrl-C / SIGTERM (ranker first).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  xdrec serve all --model-repo models --features artifacts/run/features.tsv\n"
        f"  xdrec recommend --ranker localhost:{RANKER.grpc_port} --user 196 -k 10   # in another terminal",
    )
    add_config_arguments(parser, ServeAllConfig)
    parser.set_defaults(handler=_run_from_args)
