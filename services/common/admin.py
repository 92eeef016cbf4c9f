"""Who may call control-plane RPCs (e.g. the scorer's RepositoryModelLoad / Unload).

Why one function: every control RPC asks ``AdminGuard.require`` and nothing else, so each kind
of admin identity is decided here once. Two kinds are accepted:

* a bearer token: ``authorization: Bearer <token>`` metadata compared in constant time with the
  token read from a file (``--admin-token-file``, a mounted Secret);
* a client certificate: the transport verified it (mutual TLS, ``--tls-client-auth`` or the
  ``--mtls-port``) and one of its names (DNS/URI SANs or CN) is in ``--admin-identities``. This
  is how an operator's tool with a cert-manager certificate administers the scorer without a
  shared secret.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from services.common.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("xdrec.admin")

AUTHORIZATION_KEY = "authorization"
BEARER = "bearer "


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace stripped); ValueError when unusable.

    The message names the flag, never the path's contents."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"--admin-token-file: cannot read the token file ({exc.__class__.__name__})"
        ) from None
    if len(token) < 16:
        raise ValueError("--admin-token-file: the token must have at least 16 characters")
    return token


def parse_identities(text: str) -> frozenset[str]:
    """``--admin-identities``: comma-separated certificate names -> a set (blanks dropped)."""
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The bearer token of ``authorization`` metadata, or None when there is none."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
    return None


class AdminGuard:
    """Decides whether a call comes from an administrator (token or certificate identity)."""

    def __init__(self, token: str | None = None, identities: Iterable[str] = ()) -> None:
        self._token = token.encode("utf-8") if token else None
        self.identities = frozenset(identities)
        if self._token is None and not self.identities:
            raise ValueError("an admin guard needs an admin token or admin identities")

    def _accepted(self) -> str:
        ways = []
        if self._token is not None:
            ways.append("'authorization: Bearer <token>' metadata with the admin token")
        if self.identities:
            ways.append("a client certificate named in --admin-identities")
        return " or ".join(ways)

    def require(
        self,
        metadata: Iterable[tuple[str, Any]] | None,
        operation: str,
        certificate_names: Sequence[str] = (),
    ) -> str:
        """Returns who the admin is (``cert:<name>`` / ``token``); raises otherwise.

        UNAUTHENTICATED without credentials, PERMISSION_DENIED with wrong ones (a token that
        does not match, or a verified certificate whose names are not admin identities).
        ``certificate_names`` are the names of the peer's *verified* certificate
        (``services.common.auth.certificate_names``), empty without one.
        """
        admitted = self.identities.intersection(certificate_names)
        if admitted:
            who = f"cert:{sorted(admitted)[0]}"
            log.info("admin call", extra={"operation": operation, "admin": who})
            return who
        given = bearer_token(metadata)
        if given and self._token is not None:
            if hmac.compare_digest(given.encode("utf-8"), self._token):
                log.info("admin call", extra={"operation": operation, "admin": "token"})
                return "token"
            raise PermissionDenied(f"{operation}: the admin token is not valid")
        if certificate_names:
            raise PermissionDenied(
                f"{operation}: client certificate {certificate_names[0]!r} is not an admin "
                f"identity; send {self._accepted()}"
            )
        raise Unauthenticated(f"{operation} needs an admin identity: send {self._accepted()}")
