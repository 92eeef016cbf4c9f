"""Certificates renewed in place are used without a restart (cert-manager renews Secrets in place).

Certificates are made now with ``openssl`` (tests/fixtures/certs.py) and replaced on disk the way
the kubelet updates a mounted Secret (a new file renamed over the old one):

* a server's renewed certificate (same CA) is what the next new connection sees, checked on the
  raw TLS handshake; a half-way renewal (new certificate, old key) is not used;
* a rotation to a new CA end to end: encoder and scorer get certificates from the new CA and the
  ranker's downstream CA file names it; the ranker rebuilds its channels and keeps answering
  personally (not by fallback) over new handshakes; nothing restarts.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc

from services.common.tls import CERT_RELOAD_INTERVAL_S, TlsConfig
from services.encoder.app import EncoderApp
from services.ranker.app import RankerApp
from services.scorer.app import ScorerApp
from tests.fixtures.certs import Authority, KeyPair
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.servers import (
    LoopThread,
    encoder_config,
    health_status,
    ranker_config,
    scorer_config,
    start_host,
)

WAIT_S = CERT_RELOAD_INTERVAL_S + 0.3
"""Long enough for the next check to see a change."""


def install(source: Path, target: Path) -> None:
    """Replaces ``target`` atomically, as the kubelet swaps a Secret's files."""
    temporary = target.with_suffix(target.suffix + ".new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def mounted(pair: KeyPair, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    install(pair.cert, cert)
    install(pair.key, key)
    return cert, key


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to ``port`` is shown (no verification)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def reloads(role: str, result: str = "ok") -> float:
    value = REGISTRY.get_sample_value(
        "xdrec_tls_certificate_reloads_total", {"role": role, "result": result}
    )
    return value or 0.0


def test_a_renewed_server_certificate_is_served_to_new_connections(
    loop: LoopThread, repo: BuiltRepo, tmp_path: Path
) -> None:
    ca = Authority.create(tmp_path / "ca")
    first, renewed = ca.issue("xdrec-scorer"), ca.issue("xdrec-scorer-renewed")
    cert, key = mounted(first, tmp_path / "mount")
    scorer = start_host(
        loop, ScorerApp, scorer_config(repo.root, tls_cert=str(cert), tls_key=str(key))
    )
    trust = TlsConfig(ca=str(ca.cert)).channel_credentials()
    try:
        assert served_certificate(scorer.port) == der_of(first.cert)
        before = reloads("server")

        install(renewed.cert, cert)  # half-way: the new certificate with the old key
        time.sleep(WAIT_S)
        assert served_certificate(scorer.port) == der_of(first.cert)  # the old pair still serves
        assert reloads("server", "kept_previous") >= 1

        install(renewed.key, key)  # the renewal completes
        time.sleep(WAIT_S)
        assert served_certificate(scorer.port) == der_of(renewed.cert)
        assert reloads("server") == before + 1
        assert health_status(scorer.address, credentials=trust) == 1  # SERVING, over TLS
    finally:
        loop.run(scorer.stop(grace=0.1))


def test_a_rotation_to_a_new_ca_needs_no_restart(
    loop: LoopThread, repo: BuiltRepo, tmp_path: Path
) -> None:
    old_ca, new_ca = (
        Authority.create(tmp_path / "old"),
        Authority.create(tmp_path / "new", "new-ca"),
    )
    client_ca = tmp_path / "client-ca.crt"  # who may call encoder and scorer: unchanged
    install(old_ca.cert, client_ca)
    downstream_ca = tmp_path / "downstream-ca.crt"  # what the ranker trusts: rotated
    install(old_ca.cert, downstream_ca)
    ranker_pair = old_ca.issue("xdrec-ranker")
    mounts = {}
    for name in ("encoder", "scorer"):
        mounts[name] = mounted(old_ca.issue(f"xdrec-{name}"), tmp_path / name)

    def server_tls(name: str) -> dict[str, object]:
        return dict(
            tls_cert=str(mounts[name][0]),
            tls_key=str(mounts[name][1]),
            tls_ca=str(client_ca),
            tls_client_auth=True,
            tls_allowed_clients="xdrec-ranker",
        )

    encoder = start_host(
        loop, EncoderApp, encoder_config(repo.root, repo.features_path, **server_tls("encoder"))
    )
    scorer = start_host(loop, ScorerApp, scorer_config(repo.root, **server_tls("scorer")))
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            encoder.address,
            scorer.address,
            downstream_tls_ca=str(downstream_ca),
            downstream_tls_cert=str(ranker_pair.cert),
            downstream_tls_key=str(ranker_pair.key),
        ),
    )
    app = ranker.app
    try:
        with grpc.insecure_channel(ranker.address) as channel:
            stub = ranker_pb2_grpc.RankerServiceStub(channel)

            def recommend() -> ranker_pb2.RecommendResponse:
                return stub.Recommend(ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=5)

            assert recommend().fallback == ranker_pb2.FALLBACK_NONE
            old_channels = (app.encoder.channel, app.scorer.channel)
            client_reloads = reloads("client")

            for name in ("encoder", "scorer"):  # the servers move to the new CA...
                pair = new_ca.issue(f"xdrec-{name}-2", extra_sans=(f"DNS:xdrec-{name}",))
                install(pair.cert, mounts[name][0])
                install(pair.key, mounts[name][1])
            install(new_ca.cert, downstream_ca)  # ...and the ranker trusts it
            time.sleep(WAIT_S + 0.5)

            assert (app.encoder.channel, app.scorer.channel) != old_channels
            assert not any(c in old_channels for c in (app.encoder.channel, app.scorer.channel))
            assert reloads("client") == client_reloads + 1
            for _ in range(3):  # over new handshakes: the new CA on both sides
                assert recommend().fallback == ranker_pb2.FALLBACK_NONE
            assert ranker.readiness.ready

        # a new connection to the scorer is shown the new CA's certificate
        new_trust = TlsConfig(
            cert=str(ranker_pair.cert), key=str(ranker_pair.key), ca=str(new_ca.cert)
        ).channel_credentials()
        assert health_status(scorer.address, credentials=new_trust) == 1
        old_trust = TlsConfig(
            cert=str(ranker_pair.cert), key=str(ranker_pair.key), ca=str(old_ca.cert)
        ).channel_credentials()
        with pytest.raises(grpc.RpcError) as info:
            health_status(scorer.address, credentials=old_trust)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for host in (ranker, encoder, scorer):
            loop.run(host.stop(grace=0.1))
