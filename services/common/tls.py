"""Transport security: which certificate files a server or a client uses, and their credentials.

Why one place: every service serves TLS the same way, the ranker dials its downstreams the same
way as ``xdrec recommend`` dials the ranker, and a wrong path or a key without its certificate
must be reported before the port is bound, naming the flag to fix. Plaintext stays available
(empty paths) because ``make demo`` and ``xdrec serve all`` run on loopback.

Certificates are reloaded without a restart: a server's credentials are gRPC's dynamic ones
(``ReloadingServerCertificate``: every new connection's handshake asks whether the files
changed, at most once per ``CERT_RELOAD_INTERVAL_S``), and a client watches its files
(``FileWatch``) so its owner can rebuild its channels. A half-written or mismatched pair is
not used: the previous certificate keeps serving and the next check tries again.

Modes, decided by which files are given:

* no certificate and no key: plaintext;
* ``cert`` + ``key``: TLS, the server proves who it is;
* ``cert`` + ``key`` + ``ca`` + ``require_client_auth``: mutual TLS, the client must present a
  certificate signed by ``ca`` (gRPC Python cannot ask for an optional client certificate: a
  server either requires one or never asks).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import Counter

log = logging.getLogger("xdrec.tls")

CERT_RELOAD_INTERVAL_S = 1.0
"""How often certificate files are checked for a change (cert-manager renews Secrets in place;
the kubelet swaps the mounted files atomically)."""

CERT_RELOADS = Counter(
    "xdrec_tls_certificate_reloads",
    "certificate files re-read after they changed on disk, by role (server: served to callers; "
    "client: presented to / trusted for the ranker's downstreams) and result (ok, kept_previous)",
    ["role", "result"],
)


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

    @property
    def files(self) -> tuple[str, ...]:
        """The files this endpoint reads (watched for changes)."""
        return tuple(path for path in (self.cert, self.key, self.ca) if path)

    def server_certificate(self) -> grpc.ServerCertificateConfiguration:
        """The key pair (checked to belong together) and, with client auth, the client CA."""
        p = self.flag_prefix
        key, cert = self._key_pair()
        check_key_pair(self.cert, self.key, p)
        ca = read_pem(self.ca, f"{p}-ca") if self.require_client_auth else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for ``add_secure_port`` that follow the files; None means plaintext."""
        p = self.flag_prefix
        if not self.enabled:
            if self.require_client_auth or self.ca:
                raise ValueError(f"{p}-ca / {p}-client-auth need {p}-cert and {p}-key")
            return None
        if self.require_client_auth and not self.ca:
            raise ValueError(
                f"{p}-client-auth needs {p}-ca (the CA that signs client certificates)"
            )
        reloading = ReloadingServerCertificate(self)
        return grpc.dynamic_ssl_server_credentials(
            reloading.initial,
            reloading,
            require_client_authentication=self.require_client_auth,
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


def check_key_pair(cert: str, key: str, flag_prefix: str = "--tls") -> None:
    """ValueError unless ``key`` is the private key of ``cert`` (a renewal caught half-way
    writes one before the other: serving that pair would fail every handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"{flag_prefix}-cert / {flag_prefix}-key: not a matching certificate and key ({exc})"
        ) from None


class FileWatch:
    """Says when any of some files changed (size, inode or modification time), at most once
    per ``interval_s``: cheap enough to ask on every new connection."""

    def __init__(self, paths: Sequence[str], interval_s: float = CERT_RELOAD_INTERVAL_S) -> None:
        self.paths = tuple(paths)
        self.interval_s = interval_s
        self._seen = self.signature()
        self._checked = time.monotonic()

    def signature(self) -> tuple[tuple[int, int, int] | None, ...]:
        result: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                result.append(None)
            else:
                result.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(result)

    def changed(self) -> bool:
        """True once per change (after ``accept``); False until the interval has passed."""
        now = time.monotonic()
        if now - self._checked < self.interval_s:
            return False
        self._checked = now
        return self.signature() != self._seen

    def accept(self) -> None:
        """The current files were loaded: later checks compare against them."""
        self._seen = self.signature()


class ReloadingServerCertificate:
    """gRPC's certificate fetcher for a server: a new configuration when the files changed.

    gRPC calls it before every new connection's handshake (from its own threads): it must be
    cheap and never raise. Connections already open keep the certificate they started with.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self.watch = FileWatch(tls.files)
        self.initial = tls.server_certificate()  # errors here fail start-up, naming the flag
        self.reloads = 0
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                if not self.watch.changed():
                    return None
                signature = self.watch.signature()
                try:
                    configuration = self.tls.server_certificate()
                except ValueError as exc:  # half-written: keep serving the previous one
                    CERT_RELOADS.labels("server", "kept_previous").inc()
                    log.warning("keeping the previous server certificate: %s", exc)
                    return None
                if self.watch.signature() != signature:  # changed while read: next time
                    return None
                self.watch.accept()
                self.reloads += 1
            CERT_RELOADS.labels("server", "ok").inc()
            log.info("server certificate reloaded", extra={"files": ", ".join(self.tls.files)})
            return configuration
        except Exception:  # never let an exception into gRPC's handshake
            log.exception("certificate reload check failed")
            return None


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
