"""Loaded model versions and the manager that holds them.

Why an immutable snapshot behind one reference: request handlers read ``ModelManager.get`` on
every call while loads and unloads happen rarely. A load builds and warms the new version
completely off to the side, then replaces the whole ``{name: {version: model}}`` mapping in one
assignment (under a lock that only writers take). Readers never see a half-loaded version and
never block, which is what hot-swapping and repository polling will build on; a version that
fails to load or warm up is refused and whatever was serving keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from services.common.errors import FailedPrecondition, NotFound
from services.common.repository import ModelRepository, ModelVersion
from services.scorer.config import ScorerConfig
from services.scorer.session import SessionBundle, create_session, warmup_inputs
from services.scorer.signature import TensorSignature

log = logging.getLogger("xdrec.scorer.models")

READY = "READY"


@dataclass(frozen=True)
class LoadedModel:
    """One warmed-up model version: its files, session and signature."""

    version: ModelVersion
    bundle: SessionBundle
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

    def run(self, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Runs the session synchronously (call it from a worker thread)."""
        results = self.bundle.session.run(outputs, dict(inputs))
        return dict(zip(outputs, results, strict=True))


def load_version(version: ModelVersion, config: ScorerConfig) -> LoadedModel:
    """Verifies files, builds the session and warms it up; raises on any problem (blocking)."""
    started = time.perf_counter()
    version.verify()
    model = LoadedModel(version=version, bundle=create_session(version, config))
    sample = warmup_inputs(model.inputs, config.warmup_length)
    names = [spec.name for spec in model.outputs]
    for _ in range(max(config.warmup_runs, 1)):
        results = model.run(sample, names)
    for spec in model.outputs:
        if results[spec.name].ndim != len(spec.shape):
            raise ValueError(
                f"{version.label}: warm-up output '{spec.name}' has rank "
                f"{results[spec.name].ndim}, the manifest says {len(spec.shape)}"
            )
    log.info(
        "model loaded",
        extra={
            "model": version.name,
            "version": version.version,
            "providers": list(model.providers),
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return model


Snapshot = Mapping[str, Mapping[str, LoadedModel]]


class ModelManager:
    """Holds the loaded versions of every model; swaps them atomically."""

    def __init__(self, repository: ModelRepository, config: ScorerConfig) -> None:
        self.repository = repository
        self.config = config
        self._snapshot: Snapshot = MappingProxyType({})
        self._write_lock = asyncio.Lock()

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

    # -- writing (start-up, reloads) ---------------------------------------------------------

    def model_names(self) -> list[str]:
        """Models to serve: the configured list, or every model in the repository."""
        configured = [n.strip() for n in self.config.models.split(",") if n.strip()]
        return configured or self.repository.models()

    async def load_all(self) -> None:
        """Loads the newest ``versions_per_model`` good versions of every model.

        A broken version is skipped (and logged) in favour of the next older one, so a bad
        publish cannot crash-loop a restarting scorer; a model without any good version fails
        the start-up.
        """
        names = self.model_names()
        if not names:
            raise FileNotFoundError(f"no models found in repository {self.repository.root}")
        wanted = max(self.config.versions_per_model, 1)
        for name in names:
            versions = self.repository.versions(name)
            if not versions:
                raise FileNotFoundError(f"model '{name}' has no version in {self.repository.root}")
            loaded, refused = 0, []
            for version in reversed(versions):
                try:
                    await self.load(name, version)
                except FailedPrecondition as exc:
                    refused.append(exc.message)
                    continue
                loaded += 1
                if loaded == wanted:
                    break
            if loaded == 0:
                raise FailedPrecondition("; ".join(refused))

    async def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Loads and warms ``name``/``version`` (newest on disk when None), then swaps it in.

        Raises FailedPrecondition when the version is broken; the loaded versions are untouched.
        """
        try:
            opened = self.repository.open(name, version)
            model = await asyncio.to_thread(load_version, opened, self.config)
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except Exception as exc:
            log.error("model version refused: %s", exc, extra={"model": name, "version": version})
            raise FailedPrecondition(
                f"model '{name}' version {version or 'latest'} refused: {exc}"
            ) from exc
        async with self._write_lock:
            current = {n: dict(v) for n, v in self._snapshot.items()}
            versions = current.setdefault(name, {})
            versions[model.version_id] = model
            keep = sorted(versions, key=int)[-max(self.config.versions_per_model, 1) :]
            current[name] = {v: versions[v] for v in keep}
            self._snapshot = MappingProxyType({n: MappingProxyType(v) for n, v in current.items()})
        return model

    async def unload(self, name: str) -> None:
        """Stops serving every version of ``name``; NOT_FOUND when it is not loaded."""
        async with self._write_lock:
            if name not in self._snapshot:
                raise NotFound(f"model '{name}' is not loaded")
            self._snapshot = MappingProxyType(
                {n: v for n, v in self._snapshot.items() if n != name}
            )
