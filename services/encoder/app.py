"""Wires the encoder together: model versions, vocabularies, feature store, gRPC servicer.

The encoder follows the model repository like the scorer: it holds the vocabularies of the
newest N good versions (``--version-policy latest:N``; ``--version V`` pins one), polls every
``--poll-interval-s`` and swaps the set atomically, so during a roll-out the ranker can pin a
version that both the encoder and the scorer hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from xdrec.encoder.v1 import encoder_pb2_grpc

from services.common.endpoints import ENCODER
from services.common.metrics import LOAD_FAILURES, LOADED_VERSIONS
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


def build_state(config: EncoderConfig, store: FeatureStore, vocab: ModelVocabulary) -> EncoderState:
    """An ``EncoderState`` for one verified vocabulary, exercised once (blocking)."""
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


def load_state(config: EncoderConfig, store: FeatureStore) -> EncoderState:
    """The pinned or newest good version's state (blocking)."""
    repository = ModelRepository(config.model_repo)
    name = resolve_model(repository, config.model)
    return build_state(config, store, load_vocabulary(repository, name, config.version))


class VersionTracker:
    """Which versions the encoder holds: the policy's newest good ones, refusals remembered until
    a version's files change (the scorer's rule, so both skip the same broken versions)."""

    def __init__(self, config: EncoderConfig, store: FeatureStore) -> None:
        self.config = config
        self.store = store
        self.repository = ModelRepository(config.model_repo)
        self.name = resolve_model(self.repository, config.model)
        self.limit = 1 if config.version else _latest(config.version_policy)
        self._refused: dict[str, tuple] = {}

    def _fingerprint(self, version: str) -> tuple:
        path = self.repository.root / self.name / version
        out = []
        for child in ("manifest.json", "model.onnx", "vocab_source.json", "vocab_target.json"):
            try:
                st = (path / child).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def sync(self, current: dict[str, EncoderState]) -> dict[str, EncoderState]:
        """The new set of states (blocking; reuses the loaded ones)."""
        available = self.repository.versions(self.name)
        if not available:
            return current
        candidates = [self.config.version] if self.config.version else available[::-1]
        chosen: dict[str, EncoderState] = {}
        errors = []
        for number in candidates:
            if len(chosen) >= self.limit:
                break
            if number in current:
                chosen[number] = current[number]
                continue
            fingerprint = self._fingerprint(number)
            if self._refused.get(number) == fingerprint:
                continue
            try:
                version: ModelVersion = self.repository.open(self.name, number)
                if self.config.variant and _variant(version) != self.config.variant:
                    continue
                version.verify()
                chosen[number] = build_state(self.config, self.store, ModelVocabulary.load(version))
            except (ManifestError, IntegrityError, FileNotFoundError, ValueError) as exc:
                self._refused[number] = fingerprint
                LOAD_FAILURES.labels("encoder", self.name).inc()
                log.error(
                    "model version refused: %s", exc, extra={"model": self.name, "version": number}
                )
                errors.append(str(exc))
        if not chosen and not current:
            raise IntegrityError("; ".join(errors) or f"model '{self.name}': no loadable version")
        return chosen or current


def _variant(version: ModelVersion) -> str:
    exporter = version.manifest.raw.get("exporter", {})
    return str(exporter.get("variant", "fp32")) if isinstance(exporter, dict) else "fp32"


def _latest(policy: str) -> int:
    kind, _, count = policy.partition(":")
    if kind.strip().lower() != "latest":
        raise ValueError(f"--version-policy '{policy}': the encoder takes latest:N (or --version)")
    value = int(count) if count.strip() else 1
    if value < 1:
        raise ValueError(f"--version-policy '{policy}': N must be >= 1")
    return value


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
        _latest(config.version_policy)  # fail fast on a typo
        self.config = config
        self._store = store
        self.servicer: EncoderServicer | None = None
        self.tracker: VersionTracker | None = None
        self._poller: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server, readiness: Readiness) -> None:
        self.servicer = EncoderServicer(readiness)
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(self.servicer, server)

    async def start(self, readiness: Readiness) -> None:
        assert self.servicer is not None, "register() runs before start()"
        store = self._store or await asyncio.to_thread(load_store, self.config.features)
        self.tracker = VersionTracker(self.config, store)
        await self.refresh()
        if self.config.poll_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        await readiness.set(True)

    async def refresh(self) -> None:
        """One repository scan: loads new versions, drops old ones, swaps atomically."""
        assert self.servicer is not None and self.tracker is not None
        current = dict(self.servicer.states)
        chosen = await asyncio.to_thread(self.tracker.sync, current)
        if chosen.keys() == current.keys():
            return
        self.servicer.swap(chosen)
        name = self.tracker.name
        for version in chosen.keys() - current.keys():
            LOADED_VERSIONS.labels("encoder", name, version).set(1)
        for version in current.keys() - chosen.keys():
            LOADED_VERSIONS.remove("encoder", name, version)
        log.info("encoder versions", extra={"model": name, "versions": sorted(chosen, key=int)})

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # a scan must never kill the poller
                log.error("repository scan failed: %s", exc)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
