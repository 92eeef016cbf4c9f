"""A keyed hash of user ids for logs and exports, so neither carries the raw id.

Why keyed (HMAC-SHA256) and not a plain hash: user ids are often guessable (emails, sequential
numbers); without the key nobody can test a guess against a log. The same key gives the same
pseudonym, so lines of one user can still be correlated by whoever holds the key. Without a
configured key each process draws a random one (pseudonyms then do not link across processes).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "XDREC_USER_HASH_KEY"


class UserHasher:
    """``hasher(user_id)`` -> ``u_<16 hex digits>``."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the user hash key must not be empty")
        self._key = key

    def __call__(self, user_id: str) -> str:
        digest = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"u_{digest[:16]}"

    def __repr__(self) -> str:  # the key never shows in logs
        return "UserHasher(key=<hidden>)"

    @classmethod
    def configured(cls, key_file: str = "") -> tuple[UserHasher, str]:
        """The hasher of ``key_file``, else of env ``XDREC_USER_HASH_KEY``, else a random key;
        with where the key came from (for a summary line)."""
        if key_file:
            try:
                key = Path(key_file).read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"user hash key file {key_file}: {exc.strerror}") from None
            return cls(key), f"key file {key_file}"
        env = os.environ.get(KEY_ENV, "")
        if env:
            return cls(env.encode("utf-8")), f"env {KEY_ENV}"
        return cls(secrets.token_bytes(32)), "a random key (pseudonyms link within this run only)"
