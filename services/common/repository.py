"""Read-only access to the model repository described in docs/architecture.md.

Layout: ``<root>/<model-name>/<version>/{model.onnx, manifest.json, vocab_*.json, catalog.json}``.
Versions are positive integers; the newest is the largest. Directories whose name is not all
digits (``.staging-3-ab12``, ``tmp``) are ignored, because the exporter publishes by renaming a
staging directory and a reader must never see a half-written version.

Why validate here: the scorer and the encoder both refuse a version whose manifest is malformed
or whose files do not match their recorded sha256, and they must refuse it the same way, with a
message that says which file and which field is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
DTYPES = ("BOOL", "INT32", "INT64", "FP16", "FP32", "FP64")
_HASH_CHUNK = 1 << 20


class ManifestError(ValueError):
    """manifest.json is missing or does not follow the format; the message names the field."""


class IntegrityError(ValueError):
    """A file of a version is missing or its size / sha256 differs from the manifest."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, v2 dtype name and shape (-1 = dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class FileEntry:
    """A file of a version with its expected sha256 and (optional) size in bytes."""

    path: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """How the encoder builds inputs for this model (domains and history lengths)."""

    source_domain: str = "source"
    target_domain: str = "target"
    max_source_history: int = 200
    max_target_history: int = 200


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.json. ``raw`` keeps every field, including ones not modelled here."""

    name: str
    version: str
    format_version: int
    model_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    features: FeatureSpec
    files: dict[str, FileEntry]
    created_at: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not need to fit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise ManifestError(f"{where}: missing field '{key}'")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}: field '{key}' has type {type(value).__name__}")
    return value


def _tensor_specs(raw: dict[str, Any], key: str) -> tuple[TensorSpec, ...]:
    specs = []
    entries = _require(raw, key, list, "manifest")
    if not entries:
        raise ManifestError(f"manifest: '{key}' is empty")
    for i, entry in enumerate(entries):
        where = f"manifest.{key}[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object")
        name = _require(entry, "name", str, where)
        dtype = _require(entry, "dtype", str, where)
        if dtype not in DTYPES:
            raise ManifestError(f"{where}: dtype '{dtype}' is not one of {', '.join(DTYPES)}")
        shape = _require(entry, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise ManifestError(f"{where}: shape {shape} must hold integers >= -1")
        specs.append(TensorSpec(name=name, dtype=dtype, shape=tuple(shape)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest: duplicate names in '{key}': {names}")
    return tuple(specs)


def _safe_relative(path: str, where: str) -> str:
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts:
        raise ManifestError(f"{where}: path '{path}' must be relative and inside the version")
    return path


def _files(raw: dict[str, Any]) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    for key, entry in _require(raw, "files", dict, "manifest").items():
        where = f"manifest.files.{key}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object")
        path = _safe_relative(_require(entry, "path", str, where), where)
        digest = _require(entry, "sha256", str, where).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(f"{where}: sha256 must be 64 hex digits")
        # The format example names the size "size" for data files and "bytes" for the model.
        size = entry.get("size", entry.get("bytes"))
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ManifestError(f"{where}: size must be a non-negative integer")
        files[key] = FileEntry(path=path, sha256=digest, size=size)
    return files


def _features(raw: dict[str, Any]) -> FeatureSpec:
    entry = raw.get("features", {})
    if not isinstance(entry, dict):
        raise ManifestError("manifest: field 'features' must be an object")
    defaults = FeatureSpec()
    values: dict[str, Any] = {}
    for key in ("source_domain", "target_domain"):
        value = entry.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not value:
            raise ManifestError(f"manifest.features: '{key}' must be a non-empty string")
        values[key] = value
    for key in ("max_source_history", "max_target_history"):
        value = entry.get(key, getattr(defaults, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ManifestError(f"manifest.features: '{key}' must be a positive integer")
        values[key] = value
    return FeatureSpec(**values)


def parse_manifest(raw: dict[str, Any], *, expected_version: str | None = None) -> Manifest:
    """Validates a decoded manifest.json; raises ManifestError naming the bad field."""
    if not isinstance(raw, dict):
        raise ManifestError("manifest: expected a JSON object")
    format_version = _require(raw, "format_version", int, "manifest")
    if format_version != FORMAT_VERSION:
        raise ManifestError(
            f"manifest: format_version {format_version} is not supported (expected {FORMAT_VERSION})"
        )
    version = str(_require(raw, "version", (str, int), "manifest"))
    if expected_version is not None and version != expected_version:
        raise ManifestError(
            f"manifest: version '{version}' does not match its directory '{expected_version}'"
        )
    model_file = _safe_relative(raw.get("model_file", "model.onnx"), "manifest.model_file")
    return Manifest(
        name=_require(raw, "name", str, "manifest"),
        version=version,
        format_version=format_version,
        model_file=model_file,
        inputs=_tensor_specs(raw, "inputs"),
        outputs=_tensor_specs(raw, "outputs"),
        features=_features(raw),
        files=_files(raw),
        created_at=str(raw.get("created_at", "")),
        raw=raw,
    )


@dataclass(frozen=True)
class ModelVersion:
    """One published version on disk with its validated manifest."""

    name: str
    version: str
    path: Path
    manifest: Manifest

    def file(self, key: str) -> Path:
        """Absolute path of the manifest file entry ``key`` (e.g. "catalog"); KeyError if absent."""
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
        found = [
            p.name
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.isascii() and p.name.isdigit() and int(p.name) > 0
        ]
        return sorted(found, key=int)

    def latest(self, name: str) -> str | None:
        """The newest version of ``name`` (largest integer), or None when there is none."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def open(self, name: str, version: str | None = None) -> ModelVersion:
        """Opens ``name``/``version`` (newest when None) and validates its manifest.

        Raises FileNotFoundError for an unknown model or version and ManifestError for a bad
        manifest. File hashes are checked by ``ModelVersion.verify``, which the caller runs on
        the files it will use.
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
