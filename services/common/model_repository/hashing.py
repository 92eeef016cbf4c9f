"""The one sha256 of the project's model files (the exporter writes it, the services check it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20  # large models are hashed in 1 MiB chunks, never read whole


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a large model does not sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory (test fixtures, small JSON files)."""
    return hashlib.sha256(data).hexdigest()
