"""Admin identity by client certificate: the scorer's control plane over real mutual TLS.

The scorer runs as the chart runs it (client certificates required, the ranker's admitted)
with ``--model-control explicit``, an admin token and ``--admin-identities ops-admin``: an
operator's certificate named ``ops-admin`` unloads and loads without the token, the ranker's
certificate (admitted for Predict) is not an admin without the token, a certificate from another
CA with the admin's name never gets past the handshake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc

from services.common.server import ServiceHost
from services.common.tls import TlsConfig, open_sync_channel
from services.scorer.app import ScorerApp
from tests.fixtures.certs import Authority, KeyPair
from tests.fixtures.model_repo import BuiltRepo, build_model_repo
from tests.fixtures.servers import (
    ADMIN_METADATA,
    LoopThread,
    explicit_control,
    scorer_config,
    start_host,
)


class Certs:
    def __init__(self, root: Path) -> None:
        self.ca = Authority.create(root / "ca")
        self.scorer = self.ca.issue("xdrec-scorer")
        self.ranker = self.ca.issue("xdrec-ranker")
        self.admin = self.ca.issue("ops-admin")
        self.stranger = self.ca.issue("someone-else")
        self.rogue = Authority.create(root / "rogue", "rogue-ca").issue("ops-admin")

    def client(self, pair: KeyPair) -> grpc.ChannelCredentials:
        return TlsConfig(
            cert=str(pair.cert), key=str(pair.key), ca=str(self.ca.cert)
        ).channel_credentials()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("admin-pki"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> BuiltRepo:
    return build_model_repo(tmp_path_factory.mktemp("admin-repo") / "repo", versions=1)


@pytest.fixture(scope="module")
def scorer(
    loop: LoopThread, certs: Certs, model: BuiltRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceHost]:
    host = start_host(
        loop,
        ScorerApp,
        scorer_config(
            model.root,
            models=model.name,
            poll_interval_s=0,
            tls_cert=str(certs.scorer.cert),
            tls_key=str(certs.scorer.key),
            tls_ca=str(certs.ca.cert),
            tls_client_auth=True,
            tls_allowed_clients="xdrec-ranker",
            admin_identities="ops-admin",
            **explicit_control(tmp_path_factory.mktemp("admin-token")),
        ),
    )
    yield host
    loop.run(host.stop(grace=0.2))


def unload(address: str, credentials: grpc.ChannelCredentials, name: str, metadata=()) -> None:
    with open_sync_channel(address, credentials) as channel:
        v2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
            v2.RepositoryModelUnloadRequest(model_name=name), timeout=20, metadata=metadata
        )


def load(address: str, credentials: grpc.ChannelCredentials, name: str, metadata=()) -> None:
    with open_sync_channel(address, credentials) as channel:
        v2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            v2.RepositoryModelLoadRequest(model_name=name), timeout=20, metadata=metadata
        )


def error_of(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_an_admin_certificate_controls_the_repository_without_the_token(
    scorer: ServiceHost, certs: Certs, model: BuiltRepo
) -> None:
    admin = certs.client(certs.admin)
    unload(scorer.address, admin, model.name)
    load(scorer.address, admin, model.name)


def test_the_ranker_certificate_is_not_an_admin_without_the_token(
    scorer: ServiceHost, certs: Certs, model: BuiltRepo
) -> None:
    ranker = certs.client(certs.ranker)
    error = error_of(lambda: unload(scorer.address, ranker, model.name))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'xdrec-ranker' is not an admin identity" in error.details()
    assert "--admin-identities" in error.details()
    # the same caller with the admin token is an admin: both kinds of identity work
    load(scorer.address, ranker, model.name, metadata=ADMIN_METADATA)


def test_other_certificates_never_reach_the_control_plane(
    scorer: ServiceHost, certs: Certs, model: BuiltRepo
) -> None:
    stranger = certs.client(certs.stranger)  # right CA, not on the allow list
    error = error_of(lambda: unload(scorer.address, stranger, model.name, ADMIN_METADATA))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--tls-allowed-clients" in error.details()
    rogue = certs.client(certs.rogue)  # the admin's name, signed by another CA
    error = error_of(lambda: unload(scorer.address, rogue, model.name))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails


def test_admin_identities_need_client_certificates(tmp_path: Path, model: BuiltRepo) -> None:
    with pytest.raises(ValueError, match="--admin-identities needs client certificates"):
        ScorerApp(scorer_config(model.root, model_control="explicit", admin_identities="ops-admin"))


def test_identities_alone_enable_explicit_control(certs: Certs, model: BuiltRepo) -> None:
    app = ScorerApp(
        scorer_config(
            model.root,
            model_control="explicit",
            admin_identities="ops-admin",
            tls_cert=str(certs.scorer.cert),
            tls_key=str(certs.scorer.key),
            tls_ca=str(certs.ca.cert),
            tls_client_auth=True,
        )
    )
    assert app.control.enabled
    with pytest.raises(ValueError, match="--admin-token-file .* or --admin-identities"):
        ScorerApp(scorer_config(model.root, model_control="explicit"))
