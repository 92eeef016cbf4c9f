"""Where the three services listen and how they are found: one table, one dial rule.

Why one place: the default gRPC and metrics ports, the health service names and the rule that a
wildcard bind address is dialled on loopback are needed by the services themselves, by the
``xdrec serve all`` supervisor, by the ranker's downstream clients, by tests and benchmarks.
Each spelled separately, they drift. Health names are derived from the generated descriptors, so
a renamed proto service cannot leave a stale string behind.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from xdrec.encoder.v1 import encoder_pb2
from xdrec.kserve.v2 import grpc_service_pb2 as v2_pb2
from xdrec.ranker.v1 import ranker_pb2
from xdrec.scorer.v1 import scorer_pb2

ALL_INTERFACES = "0.0.0.0"
"""Every IPv4 interface: what a container must bind (the chart sets it); services default to
``LOOPBACK`` so a service started by hand is not reachable from the network."""

LOOPBACK = "127.0.0.1"
"""Default bind address of a service, and where a local client dials a wildcard-bound one."""

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})
"""Bind addresses that mean "every interface": one cannot connect to them, only listen on them."""


def service_name(module: object, service: str) -> str:
    """The fully qualified gRPC name of ``service`` in a generated ``*_pb2`` module."""
    return module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Endpoint:
    """One service's network identity: defaults every deployment starts from."""

    name: str
    """Short name: the ``xdrec serve <name>`` subcommand, ``python -m services.<name>``, logs."""
    grpc_port: int
    """Default gRPC port."""
    metrics_port: int
    """Default Prometheus /metrics port (distinct per service so all three run on one host)."""
    health_names: tuple[str, ...]
    """Fully qualified gRPC services it hosts: its health status names; the first is its own."""

    @property
    def health_name(self) -> str:
        """The health name that says whether this service is SERVING."""
        return self.health_names[0]

    def address(self, bind_host: str = LOOPBACK, port: int | None = None) -> str:
        """``host:port`` a local client dials when the service binds ``bind_host``."""
        return dial_target(bind_host, self.grpc_port if port is None else port)


def dial_address(bind_host: str) -> str:
    """The host to connect to for a server bound to ``bind_host`` (wildcards -> loopback)."""
    return LOOPBACK if bind_host in WILDCARD_HOSTS else bind_host


def dial_target(bind_host: str, port: int) -> str:
    """``host:port`` to connect to for a server bound to ``bind_host:port``."""
    return f"{dial_address(bind_host)}:{port}"


ENCODER = Endpoint(
    name="encoder",
    grpc_port=50051,
    metrics_port=9091,
    health_names=(service_name(encoder_pb2, "EncoderService"),),
)
SCORER = Endpoint(
    name="scorer",
    grpc_port=50052,
    metrics_port=9092,
    health_names=(
        service_name(scorer_pb2, "ScorerService"),
        service_name(v2_pb2, "GRPCInferenceService"),
    ),
)
RANKER = Endpoint(
    name="ranker",
    grpc_port=50053,
    metrics_port=9093,
    health_names=(service_name(ranker_pb2, "RankerService"),),
)

FEATURE_STORE_HEALTH = "xdrec.encoder.v1.FeatureStore"
"""Health name of the encoder's feature store, at the encoder (and mirrored by the ranker):
SERVING while the store answers, NOT_SERVING while Encode answers without stored histories
(``features_unavailable``) and RecordEvents is UNAVAILABLE. Not a readiness probe target: the
services stay SERVING because they still answer (docs: README "Live features on Redis")."""

ENDPOINTS: dict[str, Endpoint] = {e.name: e for e in (ENCODER, SCORER, RANKER)}
"""The three services in start order (the ranker depends on the other two)."""


def free_loopback_ports(count: int = 1) -> list[int]:
    """``count`` distinct ports the OS reports free on loopback right now.

    Why the sockets stay open until all are picked: closing each before asking for the next lets
    the OS hand the same port out twice. The ports are free only at this instant; a process that
    binds them later can still lose a race, which callers on a shared machine accept or retry.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_loopback_port() -> int:
    """One port free on loopback right now (see ``free_loopback_ports``)."""
    return free_loopback_ports(1)[0]
