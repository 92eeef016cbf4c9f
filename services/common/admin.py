"""Who may call control-plane RPCs (e.g. the scorer's RepositoryModelLoad / Unload).

Why one function: every control RPC asks ``AdminGuard.require`` and nothing else, so a new kind
of admin identity (a client certificate once the services speak mTLS) is added here once.
Today the identity is a bearer token: ``authorization: Bearer <token>`` metadata compared in
constant time with the token read from a file (``--admin-token-file``, a mounted Secret).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.common.errors import PermissionDenied, Unauthenticated

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


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The bearer token of ``authorization`` metadata, or None when there is none."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
    return None


class AdminGuard:
    """Decides whether a call comes from an administrator."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    def require(self, metadata: Iterable[tuple[str, Any]] | None, operation: str) -> None:
        """UNAUTHENTICATED without credentials, PERMISSION_DENIED with wrong ones."""
        given = bearer_token(metadata)
        if not given:
            raise Unauthenticated(
                f"{operation} needs an admin identity: send 'authorization: Bearer <token>' "
                "metadata with the scorer's admin token"
            )
        if not hmac.compare_digest(given.encode("utf-8"), self._token):
            raise PermissionDenied(f"{operation}: the admin token is not valid")
