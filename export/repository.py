"""Publishing versions into the model repository (layout: docs/architecture.md).

A version is assembled in a staging directory next to its final place and then renamed into
place in one ``os.rename``: readers (the scorer's poller, the encoder) either see a complete
version or none. Two exporters racing for the same number cannot both win: the rename onto an
existing directory fails and the loser takes the next number.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def publish_version(
    repo_root: Path, model_name: str, files: dict[str, Path], manifest: dict, attempts: int = 20
) -> Path:
    """Copies ``files`` (name in the version dir -> source path) + manifest.json as the next version.

    ``manifest`` gets ``name``, ``version`` and ``files`` (sha256 and size of each file) filled in.
    Returns the published version directory.
    """
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(
            f"invalid model name '{model_name}': use letters, digits, '-', '_' and '.'"
        )
    model_dir = repo_root / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        entries = {}
        for name, source in files.items():
            target = staging / name
            shutil.copyfile(source, target)
            entries[Path(name).stem if name != "model.onnx" else "model"] = {
                "path": name,
                "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
            }
        for _ in range(attempts):
            version = str((existing_versions(model_dir) or [0])[-1] + 1)
            body = {**manifest, "name": model_name, "version": version, "files": entries}
            (staging / "manifest.json").write_text(json.dumps(body, indent=2))
            _fsync_tree(staging)
            try:
                os.rename(staging, model_dir / version)
                return model_dir / version
            except OSError:  # somebody published this number first
                continue
        raise RuntimeError(f"could not publish into {model_dir} after {attempts} attempts")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    """Flushes files before the rename so a crash cannot publish empty files."""
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
