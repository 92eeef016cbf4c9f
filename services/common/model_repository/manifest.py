"""manifest.json (format_version 1, docs/architecture.md "Model repository") as typed dataclasses.

One module both reads and writes the format: the exporter and the test fixtures build a
``Manifest`` and serialise it with ``to_dict``; the services parse it with ``parse_manifest``.
A field added on one side therefore cannot be forgotten on the other, and
``parse_manifest(m.to_dict()) == m`` holds for every manifest built here.

Sections the services do not interpret (``training``, ``metrics``, ``parity``, ``drift``,
``serving``) are kept as given (JSON objects); unknown top-level fields survive a round trip in
``extra``. ``teacher`` (optional, :class:`TeacherInfo`) names the model a distilled student
learned from; manifests without it parse as before (``teacher`` is None).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from services.common.model_repository.errors import ManifestError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MODEL_KEY = "model"  # the files entry of the ONNX graph
DEFAULT_VARIANT = "fp32"
DTYPES = ("BOOL", "INT32", "INT64", "FP16", "FP32", "FP64")

_KNOWN_FIELDS = frozenset(
    {
        "format_version",
        "name",
        "version",
        "created_at",
        "model_file",
        "inputs",
        "outputs",
        "features",
        "files",
        "training",
        "metrics",
        "exporter",
        "parity",
        "drift",
        "serving",
        "teacher",
    }
)
TEACHER_KINDS = ("repository", "run")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, v2 dtype name and shape (-1 = dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileEntry:
    """A file of a version with its expected sha256 and (optional) size in bytes."""

    path: str
    sha256: str
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.size is not None:
            entry["bytes"] = self.size  # the documented key; readers also accept "size"
        return entry


@dataclass(frozen=True)
class FeatureSpec:
    """How the encoder builds inputs for this model (domains and history lengths)."""

    source_domain: str = "source"
    target_domain: str = "target"
    max_source_history: int = 200
    max_target_history: int = 200

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_domain": self.source_domain,
            "target_domain": self.target_domain,
            "max_source_history": self.max_source_history,
            "max_target_history": self.max_target_history,
        }


@dataclass(frozen=True)
class ExporterInfo:
    """Who wrote the version: exporter name/version, ONNX opset, variant and tool versions.

    ``tools`` holds the library versions (``torch``, ``onnx``, ``onnxruntime``), written flat into
    the ``exporter`` object as the format documents.
    """

    name: str = "xdrec-export"
    version: str = ""
    opset: int | None = None
    variant: str = DEFAULT_VARIANT
    tools: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.opset is not None:
            entry["opset"] = self.opset
        entry.update(self.tools)
        entry["variant"] = self.variant
        return entry


@dataclass(frozen=True)
class TeacherInfo:
    """The model a distilled student was trained to imitate (``trainer/distillation``).

    ``kind`` says where the teacher was read from: ``repository`` (a published version: ``name``
    and ``version`` are its place in a model repository, ``model_sha256`` the sha256 of its
    ONNX graph and ``manifest_sha256`` that of its manifest.json, so the exact teacher can be
    found and checked again) or ``run`` (an unpublished training run: ``name`` is its experiment
    name, ``version`` is empty and ``model_sha256`` is the sha256 of its model.pt).
    ``data_fingerprint`` is the teacher's training data fingerprint (the student's must equal it).
    """

    kind: str
    name: str
    version: str
    model_sha256: str
    manifest_sha256: str | None = None
    data_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "model_sha256": self.model_sha256,
        }
        if self.manifest_sha256 is not None:
            entry["manifest_sha256"] = self.manifest_sha256
        if self.data_fingerprint is not None:
            entry["data_fingerprint"] = self.data_fingerprint
        return entry

    @property
    def label(self) -> str:
        """``name`` version ``version`` (or ``name`` (unpublished run)): for logs and reports."""
        if self.version:
            return f"{self.name} version {self.version}"
        return f"{self.name} (unpublished run)"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A manifest.json. ``name``, ``version`` and ``files`` are filled in by ``publish_version``;
    ``raw`` keeps the decoded JSON a parsed manifest came from (not compared)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    name: str = ""
    version: str = ""
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    model_file: str = MODEL_FILE
    features: FeatureSpec = field(default_factory=FeatureSpec)
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    exporter: ExporterInfo = field(default_factory=ExporterInfo)
    parity: Mapping[str, Any] = field(default_factory=dict)
    drift: Mapping[str, Any] | None = None
    serving: Mapping[str, Any] | None = None
    teacher: TeacherInfo | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def variant(self) -> str:
        """The exporter variant (fp32, fp16, int8): what ``--variant`` filters on."""
        return self.exporter.variant

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of manifest.json, fields in the documented order."""
        body: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "model_file": self.model_file,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "features": self.features.to_dict(),
            "files": {key: entry.to_dict() for key, entry in self.files.items()},
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "exporter": self.exporter.to_dict(),
            "parity": dict(self.parity),
        }
        if self.drift is not None:
            body["drift"] = dict(self.drift)
        if self.serving is not None:
            body["serving"] = dict(self.serving)
        if self.teacher is not None:
            body["teacher"] = self.teacher.to_dict()
        body.update(self.extra)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def utc_timestamp() -> str:
    """``created_at`` for a version published now (second precision, UTC, ``Z`` suffix)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise ManifestError(f"{where}: missing field '{key}'")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}: field '{key}' has type {type(value).__name__}")
    return value


def _object(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ManifestError(f"manifest: field '{key}' must be an object")
    return value


def _tensor_specs(raw: Mapping[str, Any], key: str) -> tuple[TensorSpec, ...]:
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


def _files(raw: Mapping[str, Any]) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    for key, entry in _require(raw, "files", dict, "manifest").items():
        where = f"manifest.files.{key}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object")
        path = _safe_relative(_require(entry, "path", str, where), where)
        digest = _require(entry, "sha256", str, where).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(f"{where}: sha256 must be 64 hex digits")
        size = entry.get("size", entry.get("bytes"))
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ManifestError(f"{where}: size must be a non-negative integer")
        files[key] = FileEntry(path=path, sha256=digest, size=size)
    return files


def _features(raw: Mapping[str, Any]) -> FeatureSpec:
    entry = _object(raw, "features")
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


def _exporter(raw: Mapping[str, Any]) -> ExporterInfo:
    """Lenient: older and hand-written manifests carry only some of these fields."""
    entry = _object(raw, "exporter")
    opset = entry.get("opset")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool)):
        raise ManifestError("manifest.exporter: 'opset' must be an integer")
    variant = entry.get("variant", DEFAULT_VARIANT)
    if not isinstance(variant, str) or not variant:
        raise ManifestError("manifest.exporter: 'variant' must be a non-empty string")
    defaults = ExporterInfo()
    tools = {
        k: str(v) for k, v in entry.items() if k not in ("name", "version", "opset", "variant")
    }
    return ExporterInfo(
        name=str(entry.get("name", defaults.name)),
        version=str(entry.get("version", "")),
        opset=opset,
        variant=variant,
        tools=tools,
    )


def _optional_object(raw: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    return _object(raw, key) if key in raw else None


def _sha256(value: Any, where: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 64
        or any(c not in "0123456789abcdef" for c in value.lower())
    ):
        raise ManifestError(f"{where}: must be 64 hex digits (a sha256)")
    return value.lower()


def _teacher(raw: Mapping[str, Any]) -> TeacherInfo | None:
    """The optional ``teacher`` object; absent in every manifest that is not a distilled student."""
    if "teacher" not in raw:
        return None
    entry = _object(raw, "teacher")
    where = "manifest.teacher"
    kind = _require(entry, "kind", str, where)
    if kind not in TEACHER_KINDS:
        raise ManifestError(f"{where}: 'kind' must be one of {', '.join(TEACHER_KINDS)}")
    name = _require(entry, "name", str, where)
    if not name:
        raise ManifestError(f"{where}: 'name' must be a non-empty string")
    version = str(_require(entry, "version", (str, int), where))
    if kind == "repository" and not version:
        raise ManifestError(f"{where}: 'version' is required for a repository teacher")
    manifest_sha = entry.get("manifest_sha256")
    fingerprint = entry.get("data_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ManifestError(f"{where}: 'data_fingerprint' must be a string")
    return TeacherInfo(
        kind=kind,
        name=name,
        version=version,
        model_sha256=_sha256(entry.get("model_sha256"), f"{where}.model_sha256"),
        manifest_sha256=(
            None if manifest_sha is None else _sha256(manifest_sha, f"{where}.manifest_sha256")
        ),
        data_fingerprint=fingerprint,
    )


def parse_manifest(raw: Any, *, expected_version: str | None = None) -> Manifest:
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
    model_file = _safe_relative(raw.get("model_file", MODEL_FILE), "manifest.model_file")
    return Manifest(
        name=_require(raw, "name", str, "manifest"),
        version=version,
        format_version=format_version,
        created_at=str(raw.get("created_at", "")),
        model_file=model_file,
        inputs=_tensor_specs(raw, "inputs"),
        outputs=_tensor_specs(raw, "outputs"),
        features=_features(raw),
        files=_files(raw),
        training=_object(raw, "training"),
        metrics=_object(raw, "metrics"),
        exporter=_exporter(raw),
        parity=_object(raw, "parity"),
        drift=_optional_object(raw, "drift"),
        serving=_optional_object(raw, "serving"),
        teacher=_teacher(raw),
        extra={k: v for k, v in raw.items() if k not in _KNOWN_FIELDS},
        raw=raw,
    )
