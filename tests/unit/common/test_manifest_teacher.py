"""The optional ``teacher`` field of manifest.json: built, written, parsed back, validated."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.common.model_repository import ManifestError, TeacherInfo, parse_manifest
from services.common.model_repository.manifest import Manifest, TensorSpec

SHA = "ab" * 32


def manifest(teacher: TeacherInfo | None) -> Manifest:
    return Manifest(
        name="student",
        version="2",
        created_at="2026-11-25T06:00:00Z",
        inputs=(TensorSpec("src_items", "INT64", (-1, -1)),),
        outputs=(TensorSpec("scores", "FP32", (-1, -1)),),
        training={"strategy": "distill", "distillation": {"temperature": 2.0, "alpha": 0.1}},
        teacher=teacher,
    )


def test_teacher_round_trips_through_json() -> None:
    teacher = TeacherInfo("repository", "ml1m-teacher", "3", SHA, "cd" * 32, "f" * 64)
    built = manifest(teacher)
    body = json.loads(built.to_json())
    assert body["teacher"] == {
        "kind": "repository",
        "name": "ml1m-teacher",
        "version": "3",
        "model_sha256": SHA,
        "manifest_sha256": "cd" * 32,
        "data_fingerprint": "f" * 64,
    }
    parsed = parse_manifest(body)
    assert parsed == built and parsed.teacher == teacher
    assert parsed.teacher.label == "ml1m-teacher version 3"


def test_run_teacher_without_version_round_trips() -> None:
    teacher = TeacherInfo("run", "ml1m-transfer", "", SHA)
    parsed = parse_manifest(json.loads(manifest(teacher).to_json()))
    assert parsed.teacher == teacher and "manifest_sha256" not in parsed.to_dict()["teacher"]
    assert parsed.teacher.label == "ml1m-transfer (unpublished run)"


def test_manifest_without_teacher_parses_as_before() -> None:
    body = json.loads(manifest(None).to_json())
    assert "teacher" not in body
    assert parse_manifest(body).teacher is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "friend"}, "manifest.teacher: 'kind' must be one of repository, run"),
        ({"model_sha256": "xyz"}, "manifest.teacher.model_sha256: must be 64 hex digits"),
        ({"manifest_sha256": 5}, "manifest.teacher.manifest_sha256: must be 64 hex digits"),
        ({"version": ""}, "manifest.teacher: 'version' is required for a repository teacher"),
        ({"name": None}, "manifest.teacher: field 'name' has type NoneType"),
    ],
)
def test_bad_teacher_fields_are_named(change: dict, message: str) -> None:
    body = json.loads(manifest(TeacherInfo("repository", "t", "1", SHA)).to_json())
    body["teacher"].update(change)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        parse_manifest(body)


def test_teacher_must_be_an_object() -> None:
    body = json.loads(manifest(None).to_json())
    body["teacher"] = "ml1m-teacher:3"
    with pytest.raises(ManifestError, match="field 'teacher' must be an object"):
        parse_manifest(body)
    assert replace(manifest(None), teacher=None).to_dict() == manifest(None).to_dict()
