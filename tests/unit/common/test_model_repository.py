"""The shared model-repository package: version policy, manifest round trip, fingerprints,
publishing, the acceptance rule and the version follower (real files, real ONNX Runtime)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.common.model_repository import (
    ModelRepository,
    VersionPolicy,
    VersionRefused,
    parse_manifest,
)
from services.common.model_repository.acceptance import accept, open_accepted
from services.common.model_repository.follower import VersionFollower
from services.common.model_repository.hashing import sha256_file
from services.common.model_repository.manifest import (
    MANIFEST_FILE,
    ExporterInfo,
    FeatureSpec,
    Manifest,
    TensorSpec,
)
from services.common.model_repository.publish import VersionFile, publish_version
from services.encoder.app import EncoderApp
from tests.fixtures.model_repo import (
    BuiltRepo,
    build_graph,
    build_model_repo,
    fixture_manifest,
    make_weights,
    publish,
    write_version,
)
from tests.fixtures.servers import encoder_config

# -- version policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "latest", "specific", "limit"),
    [
        ("latest:3", 3, (), 3),
        ("latest", 1, (), 1),
        (" Latest : 2 ", 2, (), 2),
        ("specific:1,3", 0, ("1", "3"), 2),
        ("specific: 7", 0, ("7",), 1),
    ],
)
def test_policy_parses(text: str, latest: int, specific: tuple, limit: int) -> None:
    policy = VersionPolicy.parse(text)
    assert (policy.latest, policy.specific, policy.limit) == (latest, specific, limit)
    assert VersionPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latest:0", "N must be >= 1"),
        ("latest:two", "N must be an integer"),
        ("specific:", "list positive version numbers"),
        ("specific:1,x", "list positive version numbers"),
        ("specific:0", "list positive version numbers"),
        ("newest:1", "use latest:N or specific:V1,V2"),
    ],
)
def test_policy_errors_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VersionPolicy.parse(text)


def test_policy_candidates_and_pin_alias() -> None:
    available = ["1", "2", "10", "3"]
    assert VersionPolicy.parse("latest:2").candidates(available) == ["10", "3", "2", "1"]
    assert VersionPolicy.parse("specific:1,10").candidates(available) == ["10", "1"]
    assert VersionPolicy.from_flags("latest:2", "3") == VersionPolicy.parse("specific:3")
    assert VersionPolicy.from_flags("latest:2", "") == VersionPolicy.parse("latest:2")


def test_encoder_version_flag_is_an_alias_for_specific(tmp_path: Path) -> None:
    features = tmp_path / "f.tsv"
    app = EncoderApp(encoder_config(tmp_path, features, version="4"))
    assert app.policy == VersionPolicy.parse("specific:4")
    app = EncoderApp(encoder_config(tmp_path, features, version_policy="specific:1,2"))
    assert app.policy.specific == ("1", "2")
    with pytest.raises(ValueError, match="latest:N or specific"):
        EncoderApp(encoder_config(tmp_path, features, version_policy="all"))


# -- manifest ---------------------------------------------------------------------------------


def full_manifest() -> Manifest:
    return Manifest(
        name="m",
        version="3",
        created_at="2026-11-25T01:02:03Z",
        inputs=(TensorSpec("a", "INT64", (-1, -1)), TensorSpec("b", "FP16", (4,))),
        outputs=(TensorSpec("scores", "FP32", (-1, -1)),),
        features=FeatureSpec("books", "movies", 50, 60),
        files={},
        training={"dataset": "ml-100k", "seed": 3, "config": {"a": [1, 2]}},
        metrics={"test": {"warm": {"ndcg@10": 0.25}}},
        exporter=ExporterInfo(
            name="xdrec-export", version="0.1.0", opset=17, variant="int8", tools={"onnx": "1.17"}
        ),
        parity={"max_abs_diff": 1e-6, "tolerance": 1e-4, "cases": 8, "passed": True},
        drift={"reference": "fp32", "rows": 10},
        serving={"batching": {"batching": False}},
        extra={"comment": "kept"},
    )


def test_manifest_round_trip_build_write_parse(tmp_path: Path) -> None:
    manifest = full_manifest()
    path = tmp_path / MANIFEST_FILE
    path.write_text(manifest.to_json())
    parsed = parse_manifest(json.loads(path.read_text()), expected_version="3")
    assert parsed == manifest
    assert parsed.to_dict() == manifest.to_dict()
    assert parsed.variant == "int8"


def test_manifest_writes_every_documented_field() -> None:
    body = fixture_manifest().to_dict()
    documented = {
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
    }
    assert documented <= set(body) and body["format_version"] == 1
    assert set(body["features"]) == {
        "source_domain",
        "target_domain",
        "max_source_history",
        "max_target_history",
    }


def test_published_manifest_parses_back_with_its_files(tmp_path: Path) -> None:
    manifest = full_manifest()
    files = [VersionFile("model", "model.onnx", b"graph"), VersionFile("notes", "n.txt", b"hi")]
    version_dir = publish_version(tmp_path, "m", manifest, files)
    assert version_dir == tmp_path / "m" / "1"
    opened = ModelRepository(tmp_path).open("m", "1")
    assert opened.manifest.files["notes"].sha256 == sha256_file(version_dir / "n.txt")
    assert opened.manifest.files["model"].size == len(b"graph")
    assert opened.manifest == replace(manifest, version="1", files=opened.manifest.files)
    assert publish_version(tmp_path, "m", manifest, files).name == "2"  # next number
    with pytest.raises(FileExistsError):
        publish_version(tmp_path, "m", manifest, files, version="2")
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")] == []


# -- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_covers_manifest_and_every_listed_file(fresh_repo: BuiltRepo) -> None:
    repository = ModelRepository(fresh_repo.root)
    version_dir = fresh_repo.version_dir()
    listed = [e.path for e in repository.open(fresh_repo.name).manifest.files.values()]
    assert sorted(listed) == sorted(
        ["model.onnx", "vocab_source.json", "vocab_target.json", "catalog.json"]
    )
    covered = {entry[0] for entry in repository.fingerprint(fresh_repo.name, "1")}
    assert covered == {MANIFEST_FILE, *listed}
    for name in [MANIFEST_FILE, *listed]:
        before = repository.fingerprint(fresh_repo.name, "1")
        with open(version_dir / name, "ab") as handle:
            handle.write(b" ")
        assert repository.fingerprint(fresh_repo.name, "1") != before, name
    before = repository.fingerprint(fresh_repo.name, "1")
    (version_dir / "README.txt").write_text("not in the manifest")
    assert repository.fingerprint(fresh_repo.name, "1") == before


def test_fingerprint_of_a_file_only_the_manifest_lists(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path, versions=0, extra_dirs=False)
    files = {
        "model": ("model.onnx", build_graph(make_weights(1, 13, 21)).SerializeToString()),
        "extra_table": ("extra.bin", b"\x00" * 8),
    }
    write_version(repo.root, repo.name, "1", files)
    repository = ModelRepository(repo.root)
    before = repository.fingerprint(repo.name, "1")
    assert "extra.bin" in {entry[0] for entry in before}
    (repo.version_dir("1") / "extra.bin").write_bytes(b"\x01" * 9)
    assert repository.fingerprint(repo.name, "1") != before


# -- acceptance -------------------------------------------------------------------------------


def refusal(repo: BuiltRepo, version: str) -> str:
    with pytest.raises(VersionRefused) as info:
        open_accepted(ModelRepository(repo.root), repo.name, version)
    return str(info.value)


def test_acceptance_accepts_a_good_version(fresh_repo: BuiltRepo) -> None:
    version = open_accepted(ModelRepository(fresh_repo.root), fresh_repo.name, "1")
    assert accept(version) >= 0.0


def test_acceptance_refuses_a_bad_hash(fresh_repo: BuiltRepo) -> None:
    path = fresh_repo.version_dir() / "catalog.json"
    path.write_bytes(path.read_bytes().replace(b"Target Title 1 ", b"Target Title X "))
    assert "sha256 of 'catalog.json'" in refusal(fresh_repo, "1")


def test_acceptance_refuses_a_missing_file(fresh_repo: BuiltRepo) -> None:
    (fresh_repo.version_dir() / "vocab_source.json").unlink()
    assert "'vocab_source.json' (vocab_source) is missing" in refusal(fresh_repo, "1")


def test_acceptance_refuses_an_unloadable_graph_even_when_rehashed(fresh_repo: BuiltRepo) -> None:
    publish(fresh_repo, "2", model_bytes=b"not an onnx graph at all")
    ModelRepository(fresh_repo.root).open(fresh_repo.name, "2").verify()  # hashes do match
    assert "'model.onnx' does not load in ONNX Runtime" in refusal(fresh_repo, "2")


def test_acceptance_refuses_a_signature_mismatch(fresh_repo: BuiltRepo) -> None:
    wrong = build_graph(make_weights(2, 13, 21))
    wrong.graph.input[0].name = "source_items"
    for node in wrong.graph.node:
        node.input[:] = ["source_items" if i == "src_items" else i for i in node.input]
    publish(fresh_repo, "2", model_bytes=wrong.SerializeToString())
    assert "graph inputs" in refusal(fresh_repo, "2")
    assert "source_items" in refusal(fresh_repo, "2")


def test_acceptance_refuses_a_dtype_mismatch(fresh_repo: BuiltRepo) -> None:
    publish(
        fresh_repo,
        "2",
        inputs=[
            {"name": "src_items", "dtype": "INT64", "shape": [-1, -1]},
            {"name": "src_mask", "dtype": "FP64", "shape": [-1, -1]},
            {"name": "tgt_items", "dtype": "INT64", "shape": [-1, -1]},
            {"name": "tgt_mask", "dtype": "FP32", "shape": [-1, -1]},
            {"name": "candidates", "dtype": "INT64", "shape": [-1, -1]},
        ],
    )
    assert "'src_mask' is tensor(float) in the graph, FP64 in the manifest" in refusal(
        fresh_repo, "2"
    )


def test_acceptance_refuses_a_catalog_that_disagrees_with_the_vocabulary(
    fresh_repo: BuiltRepo,
) -> None:
    catalog = [dict(entry) for entry in fresh_repo.catalog]
    catalog[2]["index"] = 7
    files = {
        "model": ("model.onnx", build_graph(make_weights(2, 13, 21)).SerializeToString()),
        "vocab_source": ("vocab_source.json", json.dumps(fresh_repo.vocab_source).encode()),
        "vocab_target": ("vocab_target.json", json.dumps(fresh_repo.vocab_target).encode()),
        "catalog": ("catalog.json", json.dumps(catalog).encode()),
    }
    write_version(fresh_repo.root, fresh_repo.name, "2", files)
    assert "catalog[2]: item 't03' has index 7, vocab_target says 3" in refusal(fresh_repo, "2")


def test_acceptance_refuses_a_version_without_the_documented_files(fresh_repo: BuiltRepo) -> None:
    files = {"model": ("model.onnx", build_graph(make_weights(2, 13, 21)).SerializeToString())}
    write_version(fresh_repo.root, fresh_repo.name, "2", files)
    assert "manifest.files has no entry vocab_source, vocab_target, catalog" in refusal(
        fresh_repo, "2"
    )


def test_acceptance_refuses_non_finite_warmup_output(fresh_repo: BuiltRepo) -> None:
    weights = make_weights(2, 13, 21)
    weights["E_src"][0] = np.nan  # index 0 is what the warm-up feeds
    publish(fresh_repo, "2", model_bytes=build_graph(weights).SerializeToString())
    assert "warm-up output 'scores' is not finite" in refusal(fresh_repo, "2")


# -- follower ---------------------------------------------------------------------------------


def test_follower_remembers_refusals_until_any_listed_file_changes(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path, versions=1)
    catalog = repo.version_dir("1") / "catalog.json"
    publish(repo, "2")
    good = (repo.version_dir("2") / "catalog.json").read_bytes()
    (repo.version_dir("2") / "catalog.json").write_bytes(good.replace(b"Title 1 ", b"Title X "))
    loads: list[str] = []
    swaps: list[list[str]] = []

    def load(version) -> str:
        loads.append(version.version)
        return f"state-{version.version}"

    follower = VersionFollower(
        ModelRepository(repo.root),
        repo.name,
        VersionPolicy.parse("latest:1"),
        service="test",
        load=load,
        on_swap=lambda chosen, previous: swaps.append(sorted(chosen)),
    )

    async def scenario() -> None:
        errors = await follower.sync()
        assert list(errors) == ["2"] and "sha256 of 'catalog.json'" in errors["2"]
        assert dict(follower.loaded) == {"1": "state-1"}
        assert await follower.sync() == {}  # remembered: not tried again
        os.utime(catalog)  # another version's file: nothing to retry
        assert await follower.sync() == {}
        (repo.version_dir("2") / "catalog.json").write_bytes(good)  # fixed: retried, accepted
        assert await follower.sync() == {}
        assert dict(follower.loaded) == {"2": "state-2"}
        with pytest.raises(FileNotFoundError):
            await follower.load("9")

    asyncio.run(scenario())
    assert loads == ["1", "2"] and swaps == [["1"], ["2"]]


def test_follower_never_empties_a_serving_set(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path, versions=1, extra_dirs=False)
    follower = VersionFollower(
        ModelRepository(repo.root),
        repo.name,
        VersionPolicy.parse("latest:1"),
        service="test",
        load=lambda version: version.version,
    )

    async def scenario() -> None:
        await follower.sync()
        assert list(follower.loaded) == ["1"]
        os.rename(repo.version_dir("1"), repo.root / repo.name / "moved")
        assert await follower.sync() == {}  # empty listing (volume hiccup): keeps serving
        publish(repo, "2", model_bytes=b"broken")
        errors = await follower.sync()  # listing holds only a refused version: keeps serving
        assert list(errors) == ["2"] and "does not load in ONNX Runtime" in errors["2"]
        assert list(follower.loaded) == ["1"]

    asyncio.run(scenario())
