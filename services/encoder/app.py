"""Wires the encoder together: model versions, vocabularies, feature store, gRPC servicer.

The encoder follows the model repository with the scorer's follower
(services/common/model_repository/follower.py): the same version policy (``--version-policy
latest:N`` or ``specific:V1,V2``; ``--version V`` is an alias for ``specific:V``), the same
acceptance rule (files, graph, signature, warm-up) and the same refusal memory, so the encoder
and the scorer hold the same versions and the ranker can pin one both have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import grpc
from xdrec.encoder.v1 import encoder_pb2_grpc

from services.common.endpoints import ENCODER, FEATURE_STORE_HEALTH
from services.common.model_repository import (
    IntegrityError,
    ModelRepository,
    ModelVersion,
    VersionPolicy,
)
from services.common.model_repository.follower import VersionFollower
from services.common.server import Readiness
from services.common.shedding import InFlightLimit
from services.encoder.config import EncoderConfig
from services.encoder.encoding import EncodeQuery, Encoder
from services.encoder.feature_store import (
    FeatureStore,
    FeatureStoreConfig,
    FeatureStoreUnavailable,
)
from services.encoder.filters import build_candidate_filters
from services.encoder.recording import EventLimits, EventRecorder
from services.encoder.servicer import EncoderServicer, EncoderState
from services.encoder.store_factory import build_feature_store, feature_store_backend
from services.encoder.store_metrics import STORE_UP
from services.encoder.user_hash import UserHasher
from services.encoder.vocab import ModelVocabulary

log = logging.getLogger("xdrec.encoder")

ENCODER_SERVICE = ENCODER.health_name


def resolve_model(repository: ModelRepository, name: str) -> str:
    """The configured model name, or the only model in the repository."""
    if name:
        return name
    models = repository.models()
    if len(models) != 1:
        found = ", ".join(models) or "none"
        raise ValueError(
            f"--model is required when the repository does not hold exactly one model "
            f"(found: {found})"
        )
    return models[0]


def build_state(config: EncoderConfig, store: FeatureStore, vocab: ModelVocabulary) -> EncoderState:
    """An ``EncoderState`` for one verified vocabulary, exercised once (blocking)."""
    encoder = Encoder.from_config(vocab, store, config)
    encoder.encode_histories(EncodeQuery(user_id="warm-up"), {})  # every code path but the store
    log.info(
        "vocabulary loaded",
        extra={
            "model": vocab.name,
            "version": vocab.version,
            "source_items": len(vocab.source_index),
            "target_items": len(vocab.target_index),
            "catalog_items": len(vocab.catalog),
        },
    )
    return EncoderState.build(encoder)


def load_state(config: EncoderConfig, store: FeatureStore, version: ModelVersion) -> EncoderState:
    """The follower's load callback: the accepted version's vocabulary as a ready state
    (blocking)."""
    return build_state(config, store, ModelVocabulary.load(version))


PASSWORD_ENV = "XDREC_REDIS_PASSWORD"


def redis_password(config: EncoderConfig) -> str:
    """The Redis password from ``--redis-password-file`` (a mounted Secret) or the environment;
    never a flag, so it never shows in ``ps`` or the process's argv."""
    if config.redis_password_file:
        try:
            return Path(config.redis_password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"--redis-password-file {config.redis_password_file}: {exc.strerror}"
            ) from None
    return os.environ.get(PASSWORD_ENV, "")


def store_config(config: EncoderConfig) -> FeatureStoreConfig:
    """The feature store settings of an encoder config."""
    return FeatureStoreConfig(
        backend=config.feature_store,  # type: ignore[arg-type]
        snapshot=config.features,
        max_history=config.max_history,
        event_id_ttl_s=config.event_id_ttl_s,
        redis_url=config.redis_url,
        redis_password=redis_password(config) if config.feature_store == "redis" else "",
        redis_prefix=config.redis_prefix,
        redis_timeout_s=config.redis_timeout_s,
        redis_write_timeout_s=config.redis_write_timeout_s,
        redis_max_connections=config.redis_max_connections,
    )


def load_store(config: EncoderConfig) -> FeatureStore:
    """The configured feature store (blocking: a snapshot is read here)."""
    return build_feature_store(store_config(config))


class EncoderApp:
    """The encoder as a ``ServiceApp``: loads vocabularies and features, then reports SERVING."""

    name = "encoder"
    health_names = (ENCODER_SERVICE,)

    def __init__(self, config: EncoderConfig, store: FeatureStore | None = None) -> None:
        if not config.model_repo:
            raise ValueError("the encoder needs --model-repo (or XDREC_MODEL_REPO)")
        self.policy = VersionPolicy.from_flags(config.version_policy, config.version)  # typos
        build_candidate_filters(config.candidate_filters)
        feature_store_backend(config.feature_store)
        self.config = config
        self._store = store
        self.shedder = InFlightLimit(self.name, config.max_in_flight)
        self.servicer: EncoderServicer | None = None
        self.follower: VersionFollower[EncoderState] | None = None
        self._poller: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        self.servicer = EncoderServicer(
            readiness, max_batch_requests=self.config.max_batch_requests
        )
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        """Loads the policy's versions; fails when none is acceptable (the scorer's rule)."""
        assert self.servicer is not None, "register() runs before start()"
        store = self._store or await asyncio.to_thread(load_store, self.config)
        self._store = store
        hasher, _ = UserHasher.configured(self.config.user_hash_key_file)
        self.servicer.recorder = EventRecorder(store, EventLimits.from_config(self.config), hasher)
        with contextlib.suppress(FeatureStoreUnavailable):  # dials the pool's first connection;
            await store.ping()  # a store that is down degrades answers, it does not stop start
        self._watcher = asyncio.get_running_loop().create_task(self._watch_store(store, readiness))
        repository = ModelRepository(self.config.model_repo)
        name = resolve_model(repository, self.config.model)
        self.follower = VersionFollower(
            repository,
            name,
            self.policy,
            service=self.name,
            load=partial(load_state, self.config, store),
            on_swap=self._swapped,
            variant=self.config.variant,
        )
        errors = await self.follower.sync(retry_refused=True)
        if not self.follower.loaded:
            raise IntegrityError(
                "; ".join(errors.values())
                or f"model '{name}': no version in {repository.root} matches {self.policy}"
            )
        if self.config.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        await readiness.set(True)

    def _swapped(
        self, chosen: Mapping[str, EncoderState], previous: Mapping[str, EncoderState]
    ) -> None:
        assert self.servicer is not None
        self.servicer.swap(chosen)

    async def refresh(self) -> None:
        """One repository scan: loads new versions, drops old ones, swaps atomically."""
        assert self.follower is not None
        await self.follower.sync()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # a scan must never kill the poller
                log.error("repository scan failed: %s", exc)

    async def _watch_store(self, store: FeatureStore, readiness: Readiness) -> None:
        """Pings the store every ``store_check_interval_s``: the ``xdrec_feature_store_up``
        gauge, the health name ``FEATURE_STORE_HEALTH`` and one log line per change say when
        answers are degraded.

        Why the encoder's own health stays SERVING while the store is down: Encode still answers
        (without stored histories, ``features_unavailable``; the ranker flags the answer
        ``FALLBACK_FEATURES_UNAVAILABLE``). A shared store going down would otherwise take every
        encoder replica out of rotation at once and turn degraded answers into errors."""
        backend = self.config.feature_store
        up: bool | None = None
        while True:
            try:
                await store.ping()
                now_up, reason = True, ""
            except FeatureStoreUnavailable as exc:
                now_up, reason = False, str(exc)
            STORE_UP.labels(backend).set(1 if now_up else 0)
            await readiness.set_component(FEATURE_STORE_HEALTH, now_up)
            if now_up != up:
                if now_up:
                    log.info("feature store answers", extra={"backend": backend})
                else:
                    log.error(
                        "feature store unavailable: Recommend degrades to popularity "
                        "(FALLBACK_FEATURES_UNAVAILABLE), RecordEvents answers UNAVAILABLE",
                        extra={"backend": backend, "reason": reason},
                    )
                up = now_up
            await asyncio.sleep(self.config.store_check_interval_s)

    async def stop(self) -> None:
        for task in (self._poller, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._store is not None:
            await self._store.close()
