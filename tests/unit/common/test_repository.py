"""The model repository reader: layout, manifest validation and file integrity."""

from __future__ import annotations

import json

import pytest

from services.common.model_repository import (
    IntegrityError,
    ManifestError,
    ModelRepository,
    parse_manifest,
)
from tests.fixtures.model_repo import BuiltRepo, build_model_repo


def test_lists_models_and_numeric_versions_only(tmp_path) -> None:
    repo = build_model_repo(tmp_path, versions=3)
    (tmp_path / repo.name / "10").mkdir()  # numeric order, not string order
    (tmp_path / "empty-model").mkdir()
    reader = ModelRepository(tmp_path)
    assert reader.models() == [repo.name]
    assert reader.versions(repo.name) == ["1", "2", "3", "10"]
    assert reader.latest(repo.name) == "10"
    assert reader.versions("nope") == []
    assert ModelRepository(tmp_path / "missing").models() == []


def test_open_validates_and_verifies(fresh_repo: BuiltRepo) -> None:
    version = ModelRepository(fresh_repo.root).open(fresh_repo.name)
    assert version.version == "1"
    assert [s.name for s in version.manifest.inputs] == [
        "src_items",
        "src_mask",
        "tgt_items",
        "tgt_mask",
        "candidates",
    ]
    assert version.manifest.features.target_domain == "target"
    version.verify()  # every hash matches
    assert version.read_json("vocab_target")[0] == "<pad>"


def test_unknown_model_or_version_is_file_not_found(fresh_repo: BuiltRepo) -> None:
    reader = ModelRepository(fresh_repo.root)
    with pytest.raises(FileNotFoundError, match="no published version"):
        reader.open("other")
    with pytest.raises(FileNotFoundError, match="version 7 not found"):
        reader.open(fresh_repo.name, "7")


def test_hash_mismatch_names_the_file(fresh_repo: BuiltRepo) -> None:
    path = fresh_repo.version_dir() / "catalog.json"
    data = path.read_bytes()
    path.write_bytes(data.replace(b"Target Title 1 ", b"Target Title X "))  # same size
    version = ModelRepository(fresh_repo.root).open(fresh_repo.name)
    with pytest.raises(IntegrityError, match="sha256 of 'catalog.json'"):
        version.verify()
    version.verify(("vocab_source",))  # other files are still fine


def test_size_mismatch_and_missing_file(fresh_repo: BuiltRepo) -> None:
    vdir = fresh_repo.version_dir()
    with open(vdir / "vocab_source.json", "ab") as handle:
        handle.write(b" ")
    version = ModelRepository(fresh_repo.root).open(fresh_repo.name)
    with pytest.raises(IntegrityError, match="manifest says"):
        version.verify(("vocab_source",))
    (vdir / "model.onnx").unlink()
    with pytest.raises(IntegrityError, match="'model.onnx' .* is missing"):
        version.verify(("model",))


def manifest(fresh_repo: BuiltRepo) -> dict:
    return json.loads((fresh_repo.version_dir() / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("inputs"), "missing field 'inputs'"),
        (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
        (lambda m: m["inputs"][0].update(dtype="STRING"), r"inputs\[0\]: dtype 'STRING'"),
        (lambda m: m["inputs"][1].update(shape=[-1, "L"]), r"inputs\[1\]: shape"),
        (lambda m: m["inputs"].append(dict(m["inputs"][0])), "duplicate names in 'inputs'"),
        (lambda m: m["files"]["model"].update(path="../x.onnx"), "must be relative"),
        (lambda m: m["files"]["model"].update(sha256="abc"), "64 hex digits"),
        (lambda m: m["features"].update(max_source_history=0), "max_source_history"),
        (lambda m: m.update(version="5"), "does not match its directory"),
    ],
)
def test_manifest_errors_name_the_field(fresh_repo: BuiltRepo, mutate, message: str) -> None:
    raw = manifest(fresh_repo)
    mutate(raw)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw, expected_version="1")


def test_manifest_name_must_match_directory(fresh_repo: BuiltRepo) -> None:
    path = fresh_repo.version_dir() / "manifest.json"
    raw = manifest(fresh_repo)
    raw["name"] = "something-else"
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="does not match its directory"):
        ModelRepository(fresh_repo.root).open(fresh_repo.name)


def test_invalid_json_manifest(fresh_repo: BuiltRepo) -> None:
    (fresh_repo.version_dir() / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        ModelRepository(fresh_repo.root).open(fresh_repo.name)
