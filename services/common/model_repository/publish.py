"""Publishing versions into the model repository (layout: docs/architecture.md).

A version is assembled in a staging directory next to its final place and then renamed into
place in one ``os.rename``: readers (the services' followers) either see a complete version or
none. Two publishers racing for the same number cannot both win: the rename onto an existing
directory fails and the loser takes the next number.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from services.common.model_repository.hashing import sha256_file
from services.common.model_repository.manifest import MANIFEST_FILE, FileEntry, Manifest
from services.common.model_repository.repository import is_version_name

DEFAULT_ATTEMPTS = 20  # numbers tried when other publishers keep winning the race


@dataclass(frozen=True)
class VersionFile:
    """One file of a version: its ``files`` key, its name in the version directory, its content
    (a path to copy or the bytes themselves)."""

    key: str
    name: str
    source: Path | bytes


def existing_versions(model_dir: Path) -> list[int]:
    """Published version numbers under ``model_dir``, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name)
    )


def _check_model_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid model name '{name}': use letters, digits, '-', '_' and '.'")


def publish_version(
    repo_root: Path,
    model_name: str,
    manifest: Manifest,
    files: Sequence[VersionFile],
    *,
    version: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Path:
    """Writes ``files`` + manifest.json as a new version and returns its directory.

    The manifest's ``name``, ``version`` and ``files`` (sha256 and size of each file, measured on
    the staged copy) are filled in here. ``version`` None takes the next free number; a given
    ``version`` must not exist yet (FileExistsError).
    """
    _check_model_name(model_name)
    if version is not None and not is_version_name(version):
        raise ValueError(f"invalid version '{version}': use a positive integer")
    model_dir = Path(repo_root) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{version or 'next'}-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        entries = {}
        for item in files:
            target = staging / item.name
            if isinstance(item.source, bytes):
                target.write_bytes(item.source)
            else:
                shutil.copyfile(item.source, target)
            entries[item.key] = FileEntry(
                path=item.name, sha256=sha256_file(target), size=target.stat().st_size
            )
        for _ in range(attempts if version is None else 1):
            number = version or str((existing_versions(model_dir) or [0])[-1] + 1)
            body = replace(manifest, name=model_name, version=number, files=entries)
            (staging / MANIFEST_FILE).write_text(body.to_json(), encoding="utf-8")
            _fsync_tree(staging)
            try:
                os.rename(staging, model_dir / number)
                return model_dir / number
            except OSError:  # somebody published this number first
                if version is not None:
                    raise FileExistsError(f"{model_dir / number} already exists") from None
        raise RuntimeError(f"could not publish into {model_dir} after {attempts} attempts")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flushes files before the rename so a crash cannot publish empty files."""
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
