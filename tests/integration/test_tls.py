"""Transport security end to end: the three services on loopback with certificates made now.

The deployment these tests build is the chart's default profile: encoder and scorer require a
client certificate from the test CA and admit only the ranker's; the ranker serves TLS, calls
them over mutual TLS and admits callers with a bearer token. A second ranker requires client
certificates instead of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from xdrec.ranker.v1 import ranker_pb2, ranker_pb2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.common.auth import AuthInterceptor, auth_policy, caller_identity, parse_tokens
from services.common.config import ServerConfig
from services.common.endpoints import ENCODER, RANKER, free_loopback_port
from services.common.server import ServiceHost, transport_security
from services.common.tls import TlsConfig, open_sync_channel
from services.encoder.app import EncoderApp
from services.encoder.main import LAUNCHER as ENCODER_LAUNCHER
from services.ranker.app import RankerApp
from services.ranker.config import RankerConfig
from services.scorer.app import ScorerApp
from tests.fixtures.certs import Authority, KeyPair
from tests.fixtures.model_repo import BuiltRepo
from tests.fixtures.servers import (
    LoopThread,
    encoder_config,
    ranker_config,
    scorer_config,
    start_host,
    wait_for_status,
)

TOKEN = "s3cret-token-for-the-tests-0123456789"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Pki:
    ca: Authority
    encoder: KeyPair
    scorer: KeyPair
    ranker: KeyPair
    client: KeyPair  # an ordinary client of the ranker, signed by the same CA
    rogue_ca: Authority
    rogue: KeyPair  # a certificate from another CA
    token_file: Path

    def credentials(self, pair: KeyPair | None = None, ca: Path | None = None):
        return TlsConfig(
            cert=str(pair.cert) if pair else "",
            key=str(pair.key) if pair else "",
            ca=str(ca or self.ca.cert),
        ).channel_credentials()

    def server_tls(self, pair: KeyPair, *, client_auth: bool) -> dict[str, object]:
        return dict(
            tls_cert=str(pair.cert),
            tls_key=str(pair.key),
            tls_ca=str(self.ca.cert) if client_auth else "",
            tls_client_auth=client_auth,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = Authority.create(root / "ca")
    rogue_ca = Authority.create(root / "rogue", "rogue-ca")
    token_file = root / "tokens"
    token_file.write_text(f"# principal token\nrecommend-client {TOKEN}\n")
    return Pki(
        ca=ca,
        encoder=ca.issue("xdrec-encoder"),
        scorer=ca.issue("xdrec-scorer"),
        ranker=ca.issue("xdrec-ranker"),
        client=ca.issue("some-client"),
        rogue_ca=rogue_ca,
        rogue=rogue_ca.issue("xdrec-ranker"),
        token_file=token_file,
    )


@dataclass
class SecureStack:
    encoder: ServiceHost
    scorer: ServiceHost
    ranker: ServiceHost  # TLS + bearer tokens, and mutual TLS on its --mtls-port
    mtls_ranker: ServiceHost  # TLS + required client certificates


@pytest.fixture(scope="module")
def secure(loop: LoopThread, repo: BuiltRepo, pki: Pki) -> Iterator[SecureStack]:
    only_ranker = dict(tls_allowed_clients="xdrec-ranker")
    encoder = start_host(
        loop,
        EncoderApp,
        encoder_config(
            repo.root,
            repo.features_path,
            **pki.server_tls(pki.encoder, client_auth=True),
            **only_ranker,
        ),
    )
    scorer = start_host(
        loop,
        ScorerApp,
        scorer_config(repo.root, **pki.server_tls(pki.scorer, client_auth=True), **only_ranker),
    )
    downstream = dict(downstream_tls_ca=str(pki.ca.cert))
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            encoder.address,
            scorer.address,
            **{**pki.server_tls(pki.ranker, client_auth=False), "tls_ca": str(pki.ca.cert)},
            mtls_port=free_loopback_port(),
            auth_token_file=str(pki.token_file),
            **downstream,
        ),
    )
    mtls_ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            encoder.address,
            scorer.address,
            **pki.server_tls(pki.ranker, client_auth=True),
            auth_token_file=str(pki.token_file),
            **downstream,
        ),
    )
    for host in (encoder, scorer, ranker, mtls_ranker):
        wait_for_status(
            host.address, "", SERVING, timeout=30, credentials=pki.credentials(pki.ranker)
        )
    yield SecureStack(encoder, scorer, ranker, mtls_ranker)
    for host in (ranker, mtls_ranker, encoder, scorer):
        loop.run(host.stop(grace=0.2))


def recommend(address: str, credentials, metadata=()) -> ranker_pb2.RecommendResponse:
    with open_sync_channel(address, credentials) as channel:
        return ranker_pb2_grpc.RankerServiceStub(channel).Recommend(
            ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=10, metadata=metadata
        )


def encode(address: str, credentials) -> encoder_pb2.EncodeResponse:
    with open_sync_channel(address, credentials) as channel:
        return encoder_pb2_grpc.EncoderServiceStub(channel).Encode(
            encoder_pb2.EncodeRequest(user_id="warm"), timeout=10
        )


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


# --- the ranker: bearer tokens or client certificates ------------------------------------------


def test_the_ranker_answers_a_valid_token_over_tls_via_mtls_downstreams(
    secure: SecureStack, pki: Pki
) -> None:
    reply = recommend(
        secure.ranker.address, pki.credentials(), (("authorization", f"Bearer {TOKEN}"),)
    )
    assert len(reply.items) == 3


def test_the_ranker_refuses_anonymous_and_wrong_tokens(secure: SecureStack, pki: Pki) -> None:
    address, creds = secure.ranker.address, pki.credentials()
    with pytest.raises(grpc.RpcError) as info:
        recommend(address, creds)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in info.value.details()
    wrong = (("authorization", "Bearer " + "x" * len(TOKEN)),)
    assert code_of(lambda: recommend(address, creds, wrong)) == grpc.StatusCode.UNAUTHENTICATED
    basic = (("authorization", f"Basic {TOKEN}"),)
    assert code_of(lambda: recommend(address, creds, basic)) == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open_without_a_token(secure: SecureStack, pki: Pki) -> None:
    with open_sync_channel(secure.ranker.address, pki.credentials()) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=RANKER.health_name), timeout=5
        )
    assert status.status == SERVING


def test_a_plaintext_client_cannot_talk_to_a_tls_server(secure: SecureStack) -> None:
    with grpc.insecure_channel(secure.ranker.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (
            code_of(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=3))
            == grpc.StatusCode.UNAVAILABLE
        )


def test_an_mtls_ranker_admits_a_client_certificate_without_a_token(
    secure: SecureStack, pki: Pki
) -> None:
    reply = recommend(secure.mtls_ranker.address, pki.credentials(pki.client))
    assert len(reply.items) == 3
    # without a certificate the handshake itself fails: gRPC Python servers require or ignore
    no_cert = lambda: recommend(  # noqa: E731
        secure.mtls_ranker.address, pki.credentials(), (("authorization", f"Bearer {TOKEN}"),)
    )
    assert code_of(no_cert) == grpc.StatusCode.UNAVAILABLE


def test_one_ranker_takes_tokens_on_its_port_and_client_certificates_on_its_mtls_port(
    secure: SecureStack, pki: Pki
) -> None:
    mtls = f"127.0.0.1:{secure.ranker.mtls_port}"
    assert secure.ranker.mtls_port and len(recommend(mtls, pki.credentials(pki.client)).items) == 3
    assert code_of(lambda: recommend(mtls, pki.credentials())) == grpc.StatusCode.UNAVAILABLE
    rogue = pki.credentials(pki.rogue)
    assert code_of(lambda: recommend(mtls, rogue)) == grpc.StatusCode.UNAVAILABLE
    # the main port never asks for a certificate: one sent there does not replace the token
    main = lambda: recommend(secure.ranker.address, pki.credentials(pki.client))  # noqa: E731
    assert code_of(main) == grpc.StatusCode.UNAUTHENTICATED


# --- encoder and scorer: only the ranker's certificate -----------------------------------------


def test_encoder_and_scorer_refuse_a_client_without_a_certificate(
    secure: SecureStack, pki: Pki
) -> None:
    assert code_of(lambda: encode(secure.encoder.address, pki.credentials())) == (
        grpc.StatusCode.UNAVAILABLE
    )
    with open_sync_channel(secure.scorer.address, pki.credentials()) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        predict = lambda: stub.Predict(scorer_pb2.PredictRequest(), timeout=5)  # noqa: E731
        assert code_of(predict) == grpc.StatusCode.UNAVAILABLE


def test_encoder_refuses_certificates_of_other_clients_and_other_cas(
    secure: SecureStack, pki: Pki
) -> None:
    # signed by the right CA, but not the ranker: Encode would hand out a user's history
    with pytest.raises(grpc.RpcError) as info:
        encode(secure.encoder.address, pki.credentials(pki.client))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "some-client" in info.value.details()
    # the ranker's name, but from another CA: the handshake fails
    rogue = pki.credentials(pki.rogue)
    assert code_of(lambda: encode(secure.encoder.address, rogue)) == grpc.StatusCode.UNAVAILABLE
    # the ranker's certificate works
    assert encode(secure.encoder.address, pki.credentials(pki.ranker)).user_status


def test_a_ranker_with_a_certificate_from_another_ca_is_not_serving(
    loop: LoopThread, secure: SecureStack, pki: Pki
) -> None:
    ranker = start_host(
        loop,
        RankerApp,
        ranker_config(
            secure.encoder.address,
            secure.scorer.address,
            downstream_tls_ca=str(pki.ca.cert),
            downstream_tls_cert=str(pki.rogue.cert),
            downstream_tls_key=str(pki.rogue.key),
        ),
    )
    try:
        wait_for_status(ranker.address, "", health_pb2.HealthCheckResponse.NOT_SERVING)
        with grpc.insecure_channel(ranker.address) as channel:
            call = lambda: ranker_pb2_grpc.RankerServiceStub(channel).Recommend(  # noqa: E731
                ranker_pb2.RecommendRequest(user_id="warm", k=3), timeout=5
            )
            assert code_of(call) == grpc.StatusCode.UNAVAILABLE
    finally:
        loop.run(ranker.stop(grace=0.1))


# --- who is calling ----------------------------------------------------------------------------


def test_caller_identity_names_the_certificate_or_the_token_principal(
    loop: LoopThread, pki: Pki
) -> None:
    """A bare server with the auth interceptor and one method that echoes caller_identity."""

    async def whoami(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(caller_identity(context)).encode()

    async def start() -> tuple[grpc.aio.Server, int]:
        config = ServerConfig(**pki.server_tls(pki.encoder, client_auth=True))
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(auth_policy(str(pki.token_file), ""))]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)}
                ),
            )
        )
        port = server.add_secure_port("127.0.0.1:0", config.tls.server_credentials())
        await server.start()
        return server, port

    server, port = loop.run(start())
    try:
        with open_sync_channel(f"127.0.0.1:{port}", pki.credentials(pki.client)) as channel:
            call = channel.unary_unary("/test.Who/Am")
            assert call(b"", timeout=5) == b"cert:some-client"
            by_token = call(b"", timeout=5, metadata=(("authorization", f"bearer {TOKEN}"),))
            # a verified certificate wins over a token when both are sent
            assert by_token == b"cert:some-client"
    finally:
        loop.run(server.stop(0))
    assert parse_tokens(f"{TOKEN}\nadmin {TOKEN}x\n", "f") == {
        TOKEN: "token-1",
        TOKEN + "x": "admin",
    }


# --- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert": "c.pem"}, "--tls-key is not set"),
        ({"tls_key": "k.pem"}, "--tls-cert is not set"),
        ({"tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"}, "cannot read"),
        ({"tls_client_auth": True}, "need --tls-cert and --tls-key"),
        ({"tls_allowed_clients": "a"}, "--tls-allowed-clients needs --tls-client-auth"),
        ({"mtls_port": 1}, "--mtls-port needs --tls-cert, --tls-key and --tls-ca"),
        ({"auth_token_file": "/nonexistent/tokens"}, "--auth-token-file: cannot read"),
    ],
)
def test_bad_security_settings_name_the_flag(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        transport_security(ServerConfig(**settings))


def test_client_auth_without_a_ca_and_short_tokens_are_refused(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tls-client-auth needs --tls-ca"):
        transport_security(
            ServerConfig(tls_cert=str(pki.encoder.cert), tls_key=str(pki.encoder.key),
                          tls_client_auth=True)
        )  # fmt: skip
    short = tmp_path / "tokens"
    short.write_text("short\n")
    with pytest.raises(ValueError, match="shorter than 16"):
        transport_security(ServerConfig(auth_token_file=str(short)))
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        transport_security(ServerConfig(tls_cert=str(not_pem), tls_key=str(pki.encoder.key)))
    with pytest.raises(ValueError, match="--downstream-tls-cert/--downstream-tls-key need"):
        _ = RankerConfig(downstream_tls_cert="c").downstream_tls


def test_the_launcher_reports_a_bad_certificate_path_without_a_traceback(tmp_path: Path) -> None:
    args = ["--model-repo", str(tmp_path), "--tls-cert", "/nonexistent/c.pem", "--tls-key", "k"]
    with pytest.raises(SystemExit) as info:
        ENCODER_LAUNCHER.main(args, prog="encoder")
    assert "--tls-key: cannot read" in str(info.value) or "--tls-cert" in str(info.value)


def test_the_plaintext_loopback_default_is_unchanged() -> None:
    config = ServerConfig()
    assert config.host == "127.0.0.1"
    assert not config.tls.enabled and config.tls.describe() == "plaintext"
    assert RankerConfig().downstream_tls is None
    assert replace(config, tls_cert="c", tls_key="k").tls.describe() == "tls"
    assert ENCODER.grpc_port  # the table still names the default ports


def test_the_health_port_answers_in_plaintext_next_to_a_tls_port(
    loop: LoopThread, repo: BuiltRepo, pki: Pki
) -> None:
    for attempt in range(5):
        # A port found free can be taken (e.g. as another connection's source port) before
        # the server binds it: pick again rather than fail on that race.
        config = encoder_config(
            repo.root,
            repo.features_path,
            **pki.server_tls(pki.encoder, client_auth=True),
            health_port=free_loopback_port(),
        )
        try:
            host = start_host(loop, EncoderApp, config)
            break
        except RuntimeError as exc:
            if "Failed to bind" not in str(exc) or attempt == 4:
                raise
    try:
        health = f"127.0.0.1:{host.health_port}"
        wait_for_status(health, ENCODER.health_name, SERVING)
        with grpc.insecure_channel(health) as channel:  # and nothing else is served there
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            encode_call = lambda: stub.Encode(  # noqa: E731
                encoder_pb2.EncodeRequest(user_id="warm"), timeout=3
            )
            assert code_of(encode_call) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        loop.run(host.stop(grace=0.1))


# --- xdrec recommend ---------------------------------------------------------------------------


def test_xdrec_recommend_speaks_tls_with_a_token_or_a_client_certificate(
    secure: SecureStack, pki: Pki, tmp_path: Path
) -> None:
    import io

    import cli.main as cli_main
    from cli.serving.recommend import recommend as recommend_command

    parser = cli_main.build_parser()

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = parser.parse_args(["recommend", "--user", "warm", "-k", "2", *argv])
        return recommend_command(args, out=out, err=err), out.getvalue(), err.getvalue()

    port = secure.ranker.address.rsplit(":", 1)[1]
    # the certificate names xdrec-ranker, not the host dialled: --tls-server-name verifies that
    via_name = ["--ranker", f"127.0.0.1:{port}", "--tls-ca", str(pki.ca.cert)]
    code, out, err = run(*via_name, "--tls-server-name", "xdrec-ranker", "--token-file",
                         str(pki.token_file))  # fmt: skip
    assert code == 0, err
    assert "rank" in out
    code, _, err = run(*via_name, "--tls-server-name", "xdrec-ranker")
    assert code == 1 and "UNAUTHENTICATED" in err
    mtls = ["--ranker", f"localhost:{secure.ranker.mtls_port}", "--tls-ca", str(pki.ca.cert)]
    code, _, err = run(*mtls, "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key))
    assert code == 0, err
    code, _, err = run(*via_name, "--token-file", str(tmp_path / "missing"))
    assert code == 2 and "--token-file: cannot read" in err


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_serve_all_with_tls_then_recommend_with_a_token(repo: BuiltRepo, pki: Pki) -> None:
    """`xdrec serve all --tls-*`: mTLS between the children, the supervisor's health checks and
    `xdrec recommend` over TLS with the token."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    ports = [str(free_loopback_port()) for _ in range(3)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDREC_")}
    env["GRPC_VERBOSITY"] = "ERROR"
    command = [
        sys.executable, "-m", "cli", "serve", "all",
        "--model-repo", str(repo.root), "--features", str(repo.features_path),
        "--encoder-port", ports[0], "--scorer-port", ports[1], "--ranker-port", ports[2],
        "--no-metrics", "--grace-period-s", "1", "--log-level", "WARNING",
        "--start-timeout-s", "60", "--tls-cert", str(pki.ranker.cert),
        "--tls-key", str(pki.ranker.key), "--tls-ca", str(pki.ca.cert),
        "--auth-token-file", str(pki.token_file),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # printed once all three are SERVING
        assert line.startswith("serving:"), line
        recommend_cmd = [
            sys.executable, "-m", "cli", "recommend", "--ranker", f"localhost:{ports[2]}",
            "--tls-ca", str(pki.ca.cert), "--user", "warm", "-k", "3",
        ]  # fmt: skip
        ok = subprocess.run(
            [*recommend_cmd, "--token-file", str(pki.token_file)],
            cwd=root, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert "(WARM)" in ok.stdout
        anonymous = subprocess.run(
            recommend_cmd, cwd=root, env=env, capture_output=True, text=True, timeout=30
        )
        assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
        # the encoder wants a client certificate: a plain TLS client gets nowhere
        assert code_of(lambda: encode(f"127.0.0.1:{ports[0]}", pki.credentials())) == (
            grpc.StatusCode.UNAVAILABLE
        )
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    assert returncode == 0


def test_rotated_tokens_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    import os
    import time

    from services.common.auth import TOKEN_RELOAD_INTERVAL_S, TokenFile

    path = tmp_path / "tokens"
    path.write_text(f"old-client {TOKEN}\n")
    tokens = TokenFile(str(path))
    assert tokens.principal(TOKEN) == "old-client"
    assert tokens.principal(TOKEN[:-1]) is None
    path.write_text(f"new-client {TOKEN}-rotated\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even on coarse clocks
    time.sleep(TOKEN_RELOAD_INTERVAL_S + 0.1)
    assert tokens.principal(TOKEN) is None
    assert tokens.principal(f"{TOKEN}-rotated") == "new-client"
    path.write_text("garbage line with four words\n")  # a bad rewrite keeps the last good set
    os.utime(path, (time.time() + 10, time.time() + 10))
    time.sleep(TOKEN_RELOAD_INTERVAL_S + 0.1)
    assert tokens.principal(f"{TOKEN}-rotated") == "new-client"
