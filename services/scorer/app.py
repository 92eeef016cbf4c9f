"""Wires the scorer together: model manager, inference backend and the two gRPC APIs."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from xdrec.kserve.v2 import grpc_service_pb2_grpc as v2_grpc
from xdrec.scorer.v1 import scorer_pb2_grpc

from services.common.endpoints import SCORER
from services.common.memory import return_freed_memory
from services.common.model_repository import ModelRepository, VersionPolicy
from services.common.server import Readiness
from services.common.shedding import InFlightLimit
from services.scorer.backend import InferenceBackend
from services.scorer.batching.backend import BatchingBackend
from services.scorer.config import ScorerConfig
from services.scorer.control import RepositoryControl
from services.scorer.manager import ModelManager
from services.scorer.policies import parse_model_config
from services.scorer.providers import parse_providers
from services.scorer.runner import Runner
from services.scorer.servicer import ScorerServicer
from services.scorer.v2 import InferenceServicer

log = logging.getLogger("xdrec.scorer")

SCORER_SERVICE, INFERENCE_SERVICE = SCORER.health_names
ENVELOPE_BYTES = 64 * 1024
"""Room for a request's non-tensor fields (model name, tensor names, shapes) on top of
``--max-request-bytes`` in the transport's receive limit."""


class ScorerApp:
    """The scorer as a ``ServiceApp``: loads and warms every model, then reports SERVING."""

    name = "scorer"
    health_names = (SCORER_SERVICE, INFERENCE_SERVICE)

    def __init__(self, config: ScorerConfig, backend: InferenceBackend | None = None) -> None:
        if not config.model_repo:
            raise ValueError("the scorer needs --model-repo (or XDREC_MODEL_REPO)")
        # fail fast on a typo, before binding the port
        parse_providers(config.providers)
        VersionPolicy.parse(config.version_policy)
        parse_model_config(config.model_config)
        if 0 < config.max_batch_bytes < config.max_request_bytes:
            raise ValueError("--max-batch-bytes must be 0 or >= --max-request-bytes")
        if config.admin_identities and not (config.tls_client_auth or config.mtls_port):
            raise ValueError(
                "--admin-identities needs client certificates: --tls-client-auth or --mtls-port"
            )
        self.control = RepositoryControl(
            config.model_control, config.admin_token_file, config.admin_identities
        )
        return_freed_memory(config.malloc_threshold_kb)
        # The transport refuses bodies beyond the request limit (plus room for names, shapes and
        # framing) before buffering and parsing them: a refused request costs no memory.
        self.max_receive_bytes = config.max_request_bytes + ENVELOPE_BYTES
        self.config = config
        self.shedder = InFlightLimit(self.name, config.max_in_flight)
        self.manager = ModelManager(ModelRepository(config.model_repo), config)
        self.backend = backend or BatchingBackend(
            config.inference_threads, lambda model: model.policy
        )
        retire = getattr(self.backend, "retire", None)
        if retire is not None:
            self.manager.retire_hooks.append(retire)
        self._poller: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        runner = Runner(self.manager, self.backend, readiness, self.config)
        scorer_pb2_grpc.add_ScorerServiceServicer_to_server(
            ScorerServicer(runner, self.manager), server
        )
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(runner, self.manager, readiness, self.control), server
        )

    async def start(self, readiness: Readiness) -> None:
        await self.manager.load_all()
        for model in self.manager.models():
            log.info(
                "serving model",
                extra={
                    "model": model.name,
                    "version": model.version_id,
                    "execution_provider": model.providers[0],
                    "providers": list(model.providers),
                    "variant": model.variant,
                    "batching": model.policy.enabled,
                },
            )
        if self.config.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self.manager.poll(self.config.poll_interval_s), name="repository poller"
            )
        await readiness.set(True)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.backend.close()
