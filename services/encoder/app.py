"""Wires the encoder together: model version, vocabularies, feature store, gRPC servicer."""

from __future__ import annotations

import asyncio
import logging

import grpc
from xdrec.encoder.v1 import encoder_pb2, encoder_pb2_grpc

from services.common.repository import (
    IntegrityError,
    ManifestError,
    ModelRepository,
    ModelVersion,
)
from services.common.server import Readiness
from services.encoder.config import EncoderConfig
from services.encoder.encoding import EncodeQuery, Encoder, EncoderLimits
from services.encoder.feature_store import FeatureStore, InMemoryFeatureStore
from services.encoder.servicer import EncoderServicer, EncoderState
from services.encoder.vocab import ModelVocabulary

log = logging.getLogger("xdrec.encoder")

ENCODER_SERVICE = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name


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


def load_vocabulary(repository: ModelRepository, name: str, pinned: str) -> ModelVocabulary:
    """The pinned version's vocabulary, or the newest version whose files are all intact.

    Every file is verified (the model too), the same rule the scorer applies, so that after a
    broken publish both fall back to the same older version instead of disagreeing.
    """
    candidates = [pinned] if pinned else list(reversed(repository.versions(name)))
    if not candidates:
        raise FileNotFoundError(f"model '{name}' has no version in {repository.root}")
    errors = []
    for number in candidates:
        try:
            version: ModelVersion = repository.open(name, number)
            version.verify()
            return ModelVocabulary.load(version)
        except (ManifestError, IntegrityError) as exc:
            log.error("model version refused: %s", exc, extra={"model": name, "version": number})
            errors.append(str(exc))
    raise IntegrityError("; ".join(errors))


def load_state(config: EncoderConfig, store: FeatureStore) -> EncoderState:
    """Opens the model version, verifies and loads its vocabularies (blocking)."""
    repository = ModelRepository(config.model_repo)
    name = resolve_model(repository, config.model)
    vocab = load_vocabulary(repository, name, config.version)
    limits = EncoderLimits(
        max_candidates=config.max_candidates,
        max_recent_events=config.max_recent_events,
        max_user_id_length=config.max_user_id_length,
    )
    encoder = Encoder(vocab, store, limits)
    encoder.encode(EncodeQuery(user_id="warm-up"))  # exercises every code path once
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


def load_store(path: str) -> FeatureStore:
    """The feature store from a snapshot, or an empty one (every user UNKNOWN) without one."""
    if not path:
        log.warning("no --features snapshot given: every user starts without stored history")
        return InMemoryFeatureStore()
    return InMemoryFeatureStore.from_tsv(path)


class EncoderApp:
    """The encoder as a ``ServiceApp``: loads vocabularies and features, then reports SERVING."""

    name = "encoder"
    health_names = (ENCODER_SERVICE,)

    def __init__(self, config: EncoderConfig, store: FeatureStore | None = None) -> None:
        if not config.model_repo:
            raise ValueError("the encoder needs --model-repo (or XDREC_MODEL_REPO)")
        self.config = config
        self._store = store
        self.servicer: EncoderServicer | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        self.servicer = EncoderServicer(readiness)
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        assert self.servicer is not None, "register() runs before start()"
        store = self._store or await asyncio.to_thread(load_store, self.config.features)
        self.servicer.state = await asyncio.to_thread(load_state, self.config, store)
        await readiness.set(True)

    async def stop(self) -> None:
        return None
