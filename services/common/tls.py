"""Transport security: which certificate files a server or a client uses, and their credentials.

Why one place: every service serves TLS the same way, the ranker dials its downstreams the same
way as ``xdrec recommend`` dials the ranker, and a wrong path or a key without its certificate
must be reported before the port is bound, naming the flag to fix. Plaintext stays available
(empty paths) because ``make demo`` and ``xdrec serve all`` run on loopback.

Modes, decided by which files are given:

* no certificate and no key: plaintext;
* ``cert`` + ``key``: TLS, the server proves who it is;
* ``cert`` + ``key`` + ``ca`` + ``require_client_auth``: mutual TLS, the client must present a
  certificate signed by ``ca`` (gRPC Python cannot ask for an optional client certificate: a
  server either requires one or never asks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file, or a ValueError that names the setting and the problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path!r} ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what}: {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class TlsConfig:
    """Certificate files of one endpoint (server or client); empty strings mean "not set"."""

    cert: str = ""
    """PEM certificate chain this endpoint presents."""
    key: str = ""
    """PEM private key of ``cert``."""
    ca: str = ""
    """PEM CA bundle the peer's certificate must chain to (server: client certificates;
    client: the server's certificate; empty on a client = the system roots)."""
    require_client_auth: bool = False
    """Server only: require and verify a client certificate signed by ``ca`` (mutual TLS)."""
    flag_prefix: str = "--tls"
    """How the settings are spelled on the command line, for error messages."""

    @property
    def enabled(self) -> bool:
        """A server serves TLS exactly when it has a certificate."""
        return bool(self.cert or self.key)

    def _key_pair(self) -> tuple[bytes, bytes]:
        p = self.flag_prefix
        if bool(self.cert) != bool(self.key):
            missing = f"{p}-key" if self.cert else f"{p}-cert"
            raise ValueError(f"{p}-cert and {p}-key go together: {missing} is not set")
        key = read_pem(self.key, f"{p}-key")
        cert = read_pem(self.cert, f"{p}-cert")
        return key, cert

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for ``add_secure_port``; None means plaintext."""
        p = self.flag_prefix
        if not self.enabled:
            if self.require_client_auth or self.ca:
                raise ValueError(f"{p}-ca / {p}-client-auth need {p}-cert and {p}-key")
            return None
        if self.require_client_auth and not self.ca:
            raise ValueError(
                f"{p}-client-auth needs {p}-ca (the CA that signs client certificates)"
            )
        ca = read_pem(self.ca, f"{p}-ca") if self.ca else None
        return grpc.ssl_server_credentials(
            [self._key_pair()],
            root_certificates=ca if self.require_client_auth else None,
            require_client_auth=self.require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a client: verifies the server with ``ca``; presents ``cert`` if set."""
        ca = read_pem(self.ca, f"{self.flag_prefix}-ca") if self.ca else None
        key, cert = self._key_pair() if (self.cert or self.key) else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )

    def describe(self) -> str:
        """``plaintext`` / ``tls`` / ``mtls``: for the start-up log line."""
        if not self.enabled:
            return "plaintext"
        return "mtls" if self.require_client_auth else "tls"


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: secure when ``credentials`` are given."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, credentials, options=list(options))


def open_sync_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A blocking channel (CLI clients, probes in tests): secure when ``credentials`` are given."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))
