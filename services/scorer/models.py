"""Loaded model versions and the manager that holds them (version policy, polling, hot swap).

Why an immutable snapshot behind one reference: request handlers read ``ModelManager.get`` on
every call while loads and unloads happen rarely. A new version is verified, loaded, checked
against its manifest and warmed up (every batch-size bucket) completely off to the side, in a
worker thread; then the whole ``{name: {version: model}}`` mapping is replaced in one assignment.
Readers never see a half-loaded version and never block. A version that fails is refused (logged,
counted in ``xdrec_model_load_failures_total``) and whatever was serving keeps serving; it is not
retried until its files change. Versions that leave the snapshot are *retired*: their batching
queue drains (requests already queued finish) before the session is dropped, so a hot swap fails
no request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from services.common.errors import FailedPrecondition, NotFound
from services.common.metrics import LOAD_FAILURES, LOADED_VERSIONS
from services.common.repository import MANIFEST_FILE, ModelRepository, ModelVersion
from services.scorer.batching.policy import BatchPolicy
from services.scorer.config import ScorerConfig
from services.scorer.policies import VersionPolicy, batch_policy
from services.scorer.providers import CPU
from services.scorer.session import SessionBundle, create_session, warmup_inputs
from services.scorer.signature import TensorSignature

log = logging.getLogger("xdrec.scorer.models")

READY = "READY"


@dataclass(frozen=True)
class LoadedModel:
    """One warmed-up model version: its files, session and signature."""

    version: ModelVersion
    bundle: SessionBundle
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    io_binding: bool = False
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def version_id(self) -> str:
        return self.version.version

    @property
    def label(self) -> str:
        return self.version.label

    @property
    def inputs(self) -> tuple[TensorSignature, ...]:
        return self.bundle.inputs

    @property
    def outputs(self) -> tuple[TensorSignature, ...]:
        return self.bundle.outputs

    @property
    def providers(self) -> tuple[str, ...]:
        return self.bundle.providers

    @property
    def variant(self) -> str:
        exporter = self.version.manifest.raw.get("exporter", {})
        return str(exporter.get("variant", "fp32")) if isinstance(exporter, dict) else "fp32"

    def run(self, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Runs the session synchronously (call it from a worker thread).

        On a GPU provider with ``io_binding``, inputs are bound from host memory and outputs
        allocated on the device, then copied back once (no per-output staging by ORT).
        """
        session = self.bundle.session
        if not self.io_binding:
            results = session.run(outputs, dict(inputs))
            return dict(zip(outputs, results, strict=True))
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in outputs:
            binding.bind_output(name, "cuda", device_id=self.bundle.device_id)
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))


def load_version(version: ModelVersion, config: ScorerConfig) -> LoadedModel:
    """Verifies files, builds the session and warms up every batch-size bucket; raises on any
    problem (blocking)."""
    started = time.perf_counter()
    version.verify()
    policy = batch_policy(config, version.name, version.manifest.raw)
    bundle = create_session(version, config)
    model = LoadedModel(
        version=version,
        bundle=bundle,
        policy=policy,
        io_binding=config.io_binding and bundle.providers[0] != CPU,
    )
    names = [spec.name for spec in model.outputs]
    for batch in policy.buckets:
        sample = warmup_inputs(model.inputs, config.warmup_length, batch)
        for _ in range(max(config.warmup_runs, 1)):
            results = model.run(sample, names)
        for spec in model.outputs:
            got = results[spec.name]
            if got.ndim != len(spec.shape) or (got.ndim and got.shape[0] != batch):
                raise ValueError(
                    f"{version.label}: warm-up output '{spec.name}' has shape "
                    f"{list(got.shape)} for batch {batch}, the manifest says {list(spec.shape)}"
                )
            if got.dtype.kind == "f" and not np.all(np.isfinite(got)):
                raise ValueError(f"{version.label}: warm-up output '{spec.name}' is not finite")
    log.info(
        "model loaded",
        extra={
            "model": version.name,
            "version": version.version,
            "providers": list(model.providers),
            "variant": model.variant,
            "batching": policy.enabled,
            "max_batch_size": policy.max_batch_size,
            "warmed_batch_sizes": list(policy.buckets),
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return model


Snapshot = Mapping[str, Mapping[str, LoadedModel]]


RetireHook = Callable[[LoadedModel], Awaitable[None]]


@dataclass(frozen=True)
class _Refusal:
    fingerprint: tuple
    message: str


class ModelManager:
    """Holds the served versions of every model; loads, swaps and retires them.

    ``sync(name)`` brings one model in line with the version policy and the repository;
    ``poll`` runs it for every model every ``poll_interval_s``; ``load`` / ``unload`` are the
    explicit operations behind RepositoryModelLoad / RepositoryModelUnload.
    """

    def __init__(self, repository: ModelRepository, config: ScorerConfig) -> None:
        self.repository = repository
        self.config = config
        self.policy = VersionPolicy.parse(config.version_policy)
        self._snapshot: Snapshot = MappingProxyType({})
        self._write_lock = asyncio.Lock()
        self._refused: dict[tuple[str, str], _Refusal] = {}
        self._unloaded: set[str] = set()
        self._retiring: set[asyncio.Task] = set()
        self.retire_hooks: list[RetireHook] = []

    # -- reading (every request) ------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The requested version (newest loaded when empty); NOT_FOUND names what is missing."""
        snapshot = self._snapshot
        versions = snapshot.get(name)
        if not versions:
            known = ", ".join(snapshot) or "none"
            raise NotFound(f"model '{name}' is not loaded (loaded models: {known})")
        if not version:
            return versions[max(versions, key=int)]
        model = versions.get(version)
        if model is None:
            raise NotFound(
                f"model '{name}' version {version} is not loaded "
                f"(loaded versions: {', '.join(sorted(versions, key=int))})"
            )
        return model

    def models(self) -> list[LoadedModel]:
        """Every loaded version, by name then version."""
        snapshot = self._snapshot
        return [
            snapshot[name][version]
            for name in sorted(snapshot)
            for version in sorted(snapshot[name], key=int)
        ]

    def versions(self, name: str) -> list[str]:
        """Loaded versions of ``name``, oldest first (empty when the model is not loaded)."""
        return sorted(self._snapshot.get(name, {}), key=int)

    # -- writing (start-up, polling, explicit load / unload) --------------------------------

    def model_names(self) -> list[str]:
        """Models to serve: the configured list, or every model in the repository."""
        configured = [n.strip() for n in self.config.models.split(",") if n.strip()]
        return configured or self.repository.models()

    async def load_all(self) -> None:
        """Start-up: every model per the version policy; a model without any good version fails
        the start-up (a broken newest version is skipped in favour of older ones, so a bad
        publish cannot crash-loop a restarting scorer)."""
        names = self.model_names()
        if not names:
            raise FileNotFoundError(f"no models found in repository {self.repository.root}")
        for name in names:
            if not self.repository.versions(name):
                raise FileNotFoundError(f"model '{name}' has no version in {self.repository.root}")
            errors = await self.sync(name, retry_refused=True)
            if not self.versions(name):
                raise FailedPrecondition(
                    "; ".join(errors.values()) or f"model '{name}': no version matches the policy"
                )

    async def poll_once(self) -> None:
        """One repository scan: new versions loaded, removed ones retired, new models added."""
        for name in self.model_names():
            if name in self._unloaded:
                continue
            try:
                await self.sync(name)
            except Exception as exc:  # a scan must never kill the poller
                log.error("repository scan failed: %s", exc, extra={"model": name})

    async def poll(self, interval: float) -> None:
        """Scans the repository every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await self.poll_once()

    def _fingerprint(self, name: str, version: str) -> tuple:
        """Changes when a version's files change (a refused version is then tried again)."""
        path = self.repository.root / name / version
        stats = []
        for child in (MANIFEST_FILE, "model.onnx"):
            try:
                st = (path / child).stat()
                stats.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stats.append(None)
        return tuple(stats)

    def _variant_ok(self, name: str, version: str) -> bool:
        if not self.config.variant:
            return True
        try:
            raw = self.repository.open(name, version).manifest.raw
        except Exception:
            return True  # let the load report what is wrong with it
        exporter = raw.get("exporter", {})
        variant = exporter.get("variant", "fp32") if isinstance(exporter, dict) else "fp32"
        return variant == self.config.variant

    async def _load_version(self, name: str, version: str) -> LoadedModel:
        try:
            opened = self.repository.open(name, version)
            return await asyncio.to_thread(load_version, opened, self.config)
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except Exception as exc:
            LOAD_FAILURES.labels("scorer", name).inc()
            log.error("model version refused: %s", exc, extra={"model": name, "version": version})
            raise FailedPrecondition(f"model '{name}' version {version} refused: {exc}") from exc

    async def sync(self, name: str, *, retry_refused: bool = False) -> dict[str, str]:
        """Serves the policy's versions of ``name``: loads and warms new ones, swaps, retires
        the rest. Returns the refusals of this pass ({version: message})."""
        async with self._write_lock:
            available = self.repository.versions(name)
            loaded = dict(self._snapshot.get(name, {}))
            if not available:
                if loaded:  # an empty listing (volume hiccup) never unloads a serving model
                    log.warning(
                        "no versions found on disk; keeping the loaded ones", extra={"model": name}
                    )
                return {}
            chosen: dict[str, LoadedModel] = {}
            errors: dict[str, str] = {}
            for version in self.policy.candidates(available):
                if len(chosen) >= self.policy.limit:
                    break
                if version in loaded:
                    chosen[version] = loaded[version]
                    continue
                if not self._variant_ok(name, version):
                    continue
                fingerprint = self._fingerprint(name, version)
                refusal = self._refused.get((name, version))
                if refusal and refusal.fingerprint == fingerprint and not retry_refused:
                    continue
                try:
                    chosen[version] = await self._load_version(name, version)
                except (FailedPrecondition, NotFound) as exc:
                    self._refused[(name, version)] = _Refusal(fingerprint, exc.message)
                    errors[version] = exc.message
                    continue
                self._refused.pop((name, version), None)
            if chosen.keys() == loaded.keys():
                return errors
            self._swap(name, chosen, loaded)
            return errors

    def _swap(
        self, name: str, chosen: Mapping[str, LoadedModel], previous: Mapping[str, LoadedModel]
    ) -> None:
        """One assignment publishes the new set; versions that left it are retired."""
        current = dict(self._snapshot)
        if chosen:
            current[name] = MappingProxyType(dict(chosen))
        else:
            current.pop(name, None)
        self._snapshot = MappingProxyType(current)
        for version, model in chosen.items():
            if version not in previous:
                LOADED_VERSIONS.labels("scorer", name, version).set(1)
                log.info(
                    "model version serving",
                    extra={"model": name, "version": version, "providers": list(model.providers)},
                )
        for version, model in previous.items():
            if chosen.get(version) is not model:
                self._retire(model)

    def _retire(self, model: LoadedModel) -> None:
        async def retire() -> None:
            for hook in self.retire_hooks:
                try:
                    await hook(model)
                except Exception as exc:
                    log.error("retiring %s failed: %s", model.label, exc)
            if model.version_id not in self._snapshot.get(model.name, {}):
                LOADED_VERSIONS.remove("scorer", model.name, model.version_id)
            log.info(
                "model version retired", extra={"model": model.name, "version": model.version_id}
            )

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def drained(self) -> None:
        """Waits until every retired version has drained (tests, shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Explicit load (RepositoryModelLoad): ``version`` (or, when None, the policy's
        versions of ``name``) loaded, warmed and swapped in.

        Raises FailedPrecondition when the requested version - or, without one, the newest
        version the policy selects - is broken; the loaded versions keep serving.
        """
        self._unloaded.discard(name)
        if version is None:
            errors = await self.sync(name, retry_refused=True)
            newest = next(iter(self.policy.candidates(self.repository.versions(name))), None)
            if newest is None:
                raise NotFound(f"model '{name}' has no published version in {self.repository.root}")
            if newest in errors:
                raise FailedPrecondition(errors[newest])
            return self.get(name)
        async with self._write_lock:
            loaded = dict(self._snapshot.get(name, {}))
            if version in loaded:
                return loaded[version]
            try:
                model = await self._load_version(name, version)
            except FailedPrecondition as exc:
                self._refused[(name, version)] = _Refusal(
                    self._fingerprint(name, version), exc.message
                )
                raise
            chosen = {**loaded, version: model}
            if not self.policy.specific:
                keep = sorted(chosen, key=int)[-self.policy.limit :]
                chosen = {v: chosen[v] for v in keep}
            self._swap(name, chosen, loaded)
            return model

    async def unload(self, name: str) -> None:
        """Stops serving every version of ``name`` (drained); polling leaves it unloaded until
        the next explicit load. NOT_FOUND when it is not loaded."""
        async with self._write_lock:
            if name not in self._snapshot:
                raise NotFound(f"model '{name}' is not loaded")
            self._unloaded.add(name)
            self._swap(name, {}, dict(self._snapshot[name]))
