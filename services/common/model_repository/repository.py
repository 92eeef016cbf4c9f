"""Read-only access to the model repository described in docs/architecture.md.

Layout: ``<root>/<model-name>/<version>/{model.onnx, manifest.json, vocab_*.json, catalog.json}``.
Versions are positive integers; the newest is the largest. Directories whose name is not all
digits (``.staging-3-ab12``, ``tmp``) are ignored, because versions are published by renaming a
staging directory and a reader must never see a half-written version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.model_repository.errors import IntegrityError, ManifestError
from services.common.model_repository.hashing import sha256_file
from services.common.model_repository.manifest import MANIFEST_FILE, Manifest, parse_manifest

Fingerprint = tuple[tuple[str, int, int] | tuple[str, None, None], ...]


@dataclass(frozen=True)
class ModelVersion:
    """One published version on disk with its validated manifest."""

    name: str
    version: str
    path: Path
    manifest: Manifest

    def file(self, key: str) -> Path:
        """Absolute path of the manifest file entry ``key`` (e.g. "catalog")."""
        entry = self.manifest.files.get(key)
        if entry is None:
            raise IntegrityError(f"{self.label}: manifest.files has no entry '{key}'")
        return self.path / entry.path

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def label(self) -> str:
        return f"model '{self.name}' version {self.version}"

    @property
    def variant(self) -> str:
        return self.manifest.variant

    def verify(self, keys: tuple[str, ...] | None = None) -> None:
        """Checks size and sha256 of the listed files (default: all); raises IntegrityError."""
        for key, entry in self.manifest.files.items():
            if keys is not None and key not in keys:
                continue
            path = self.path / entry.path
            if not path.is_file():
                raise IntegrityError(f"{self.label}: file '{entry.path}' ({key}) is missing")
            if entry.size is not None and path.stat().st_size != entry.size:
                raise IntegrityError(
                    f"{self.label}: file '{entry.path}' has {path.stat().st_size} bytes, "
                    f"manifest says {entry.size}"
                )
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{self.label}: sha256 of '{entry.path}' is {actual}, manifest says {entry.sha256}"
                )
        if keys is None and not self.model_path.is_file():
            raise IntegrityError(
                f"{self.label}: model file '{self.manifest.model_file}' is missing"
            )

    def read_json(self, key: str) -> Any:
        """Reads the JSON file of manifest entry ``key`` after checking its hash."""
        self.verify((key,))
        return json.loads(self.file(key).read_text(encoding="utf-8"))


def version_fingerprint(path: Path) -> Fingerprint:
    """(name, mtime_ns, size) of manifest.json and of every file its ``files`` lists.

    Why every file: a refused version is retried only when this changes, so a fix to any file
    (a re-copied catalog as much as a new model.onnx) must be noticed. Works on a manifest that
    does not parse (then only manifest.json and the model file are covered).
    """
    names = [MANIFEST_FILE]
    try:
        raw = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        files = raw.get("files", {}) if isinstance(raw, dict) else {}
        model_file = raw.get("model_file") if isinstance(raw, dict) else None
        names += sorted(
            {
                str(entry["path"])
                for entry in (files.values() if isinstance(files, dict) else ())
                if isinstance(entry, dict) and "path" in entry
            }
            | ({model_file} if isinstance(model_file, str) else set())
        )
    except (OSError, ValueError):
        pass
    stats: list[tuple[str, int, int] | tuple[str, None, None]] = []
    for name in names:
        try:
            st = (path / name).stat()
            stats.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((name, None, None))
    return tuple(stats)


class ModelRepository:
    """Lists models and versions under a root directory and opens validated versions."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        """Model names (directories holding at least one numeric version), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self.versions(p.name)
        )

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name``, oldest first; non-numeric directories are ignored."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if p.is_dir() and is_version_name(p.name)]
        return sorted(found, key=int)

    def latest(self, name: str) -> str | None:
        """The newest version of ``name`` (largest integer), or None when there is none."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def fingerprint(self, name: str, version: str) -> Fingerprint:
        """``version_fingerprint`` of ``name``/``version``."""
        return version_fingerprint(self.root / name / version)

    def open(self, name: str, version: str | None = None) -> ModelVersion:
        """Opens ``name``/``version`` (newest when None) and validates its manifest.

        Raises FileNotFoundError for an unknown model or version and ManifestError for a bad
        manifest. File hashes are checked by ``ModelVersion.verify`` (the acceptance rule runs
        it on every file).
        """
        if not version:
            version = self.latest(name)
            if version is None:
                raise FileNotFoundError(f"model '{name}' has no published version in {self.root}")
        path = self.root / name / version
        if not (version.isdigit() and path.is_dir()):
            raise FileNotFoundError(f"model '{name}' version {version} not found in {self.root}")
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ManifestError(f"model '{name}' version {version}: {MANIFEST_FILE} is missing")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(
                f"model '{name}' version {version}: {MANIFEST_FILE} is not valid JSON ({exc})"
            ) from None
        try:
            manifest = parse_manifest(raw, expected_version=version)
        except ManifestError as exc:
            raise ManifestError(f"model '{name}' version {version}: {exc}") from None
        if manifest.name != name:
            raise ManifestError(
                f"model '{name}' version {version}: manifest name '{manifest.name}' does not "
                "match its directory"
            )
        return ModelVersion(name=name, version=version, path=path, manifest=manifest)


def is_version_name(name: str) -> bool:
    """A published version directory: a positive integer in ASCII digits."""
    return name.isascii() and name.isdigit() and int(name) > 0
