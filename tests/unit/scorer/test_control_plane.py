"""The guarded repository control plane: v2 RepositoryModelLoad / Unload on a real scorer.

Off by default (UNIMPLEMENTED, covered by the bad-input table); with ``--model-control
explicit`` an admin bearer token is required, names must be plain directory names inside the
repository root, an unload shows in health and metrics, and no message reveals a path or pid.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY
from xdrec.kserve.v2 import grpc_service_pb2 as v2
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc
from xdrec.scorer.v1 import scorer_pb2, scorer_pb2_grpc

from services.scorer.app import ScorerApp
from tests.fixtures.model_repo import BuiltRepo, build_model_repo
from tests.fixtures.scorer_requests import predict
from tests.fixtures.servers import (
    ADMIN_METADATA,
    LoopThread,
    explicit_control,
    health_status,
    scorer_config,
    start_host,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def call_error(method, request, metadata=ADMIN_METADATA) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=20, metadata=metadata)
    return info.value


def assert_no_leak(details: str, root: Path) -> None:
    assert str(root) not in details and str(root.resolve()) not in details, details
    assert "/tmp" not in details and str(os.getpid()) not in details, details


def unloaded_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("xdrec_model_unloaded", {"service": "scorer", "model": name})


def test_control_needs_the_admin_token_and_a_plain_name(loop: LoopThread, tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    outside = build_model_repo(tmp_path / "outside", versions=1)
    (repo.root / "linked").symlink_to(outside.root / outside.name, target_is_directory=True)
    scorer = start_host(
        loop,
        ScorerApp,
        scorer_config(repo.root, models=repo.name, poll_interval_s=0, **explicit_control(tmp_path)),
    )
    try:
        with grpc.insecure_channel(scorer.address) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            unload = v2.RepositoryModelUnloadRequest(model_name=repo.name)
            error = call_error(stub.RepositoryModelUnload, unload, metadata=())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in error.details()
            for wrong in ("Bearer not-the-token-at-all", "Basic abc", "Bearer "):
                error = call_error(
                    stub.RepositoryModelUnload, unload, metadata=(("authorization", wrong),)
                )
                assert error.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                ), wrong
            assert health_status(scorer.address) == SERVING  # nothing was unloaded
            for name in (
                "/" + str(outside.root / outside.name).lstrip("/"),
                f"../outside/{outside.name}",
                "..",
                "a/b",
                "a\\b",
                ".hidden",
                "linked",  # a symlink that resolves outside the root
                "x" * 129,
                "model\x00",
            ):
                for method, request in (
                    (stub.RepositoryModelLoad, v2.RepositoryModelLoadRequest(model_name=name)),
                    (stub.RepositoryModelUnload, v2.RepositoryModelUnloadRequest(model_name=name)),
                ):
                    error = call_error(method, request)
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error)
                    assert error.details().startswith("model_name:"), error.details()
                    assert_no_leak(error.details(), repo.root)
                    assert name not in error.details() or name == "..", error.details()
            error = call_error(
                stub.RepositoryModelLoad, v2.RepositoryModelLoadRequest(model_name="ghost")
            )
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
            assert "ghost" in error.details()
            assert_no_leak(error.details(), repo.root)
            listed = scorer_pb2_grpc.ScorerServiceStub(channel).ListModels(
                scorer_pb2.ListModelsRequest(), timeout=5
            )
            assert [m.model.name for m in listed.models] == [repo.name]
    finally:
        loop.run(scorer.stop(grace=0.1))


def test_an_api_unload_shows_in_health_and_metrics(loop: LoopThread, tmp_path: Path) -> None:
    repo: BuiltRepo = build_model_repo(tmp_path / "repo", versions=1)
    scorer = start_host(
        loop,
        ScorerApp,
        scorer_config(repo.root, poll_interval_s=0.05, **explicit_control(tmp_path)),
    )
    try:
        with grpc.insecure_channel(scorer.address) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            predict_stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            assert predict_stub.Predict(predict(), timeout=10).outputs
            stub.RepositoryModelUnload(
                v2.RepositoryModelUnloadRequest(model_name=repo.name),
                timeout=10,
                metadata=ADMIN_METADATA,
            )
            assert health_status(scorer.address) == NOT_SERVING
            assert health_status(scorer.address, "xdrec.scorer.v1.ScorerService") == NOT_SERVING
            assert unloaded_gauge(repo.name) == 1.0
            assert REGISTRY.get_sample_value("xdrec_ready", {"service": "scorer"}) == 0.0
            error = call_error(predict_stub.Predict, predict(), metadata=())
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert repo.name in error.details() and "RepositoryModelLoad" in error.details()
            loop.run(asyncio.sleep(0.3))  # polls do not bring it back
            assert health_status(scorer.address) == NOT_SERVING
            stub.RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name=repo.name),
                timeout=20,
                metadata=ADMIN_METADATA,
            )
            assert health_status(scorer.address) == SERVING
            assert unloaded_gauge(repo.name) == 0.0
            assert predict_stub.Predict(predict(), timeout=10).outputs
    finally:
        loop.run(scorer.stop(grace=0.1))


def test_explicit_control_needs_a_usable_token_file(tmp_path: Path) -> None:
    repo = build_model_repo(tmp_path / "repo", versions=1)
    with pytest.raises(ValueError, match="--admin-token-file"):
        ScorerApp(scorer_config(repo.root, model_control="explicit"))
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ValueError, match="at least 16"):
        ScorerApp(scorer_config(repo.root, model_control="explicit", admin_token_file=str(short)))
    with pytest.raises(ValueError, match="cannot read") as info:
        ScorerApp(
            scorer_config(
                repo.root, model_control="explicit", admin_token_file=str(tmp_path / "none")
            )
        )
    assert str(tmp_path) not in str(info.value)
