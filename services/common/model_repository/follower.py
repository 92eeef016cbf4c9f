"""ONE version follower: keeps a service's set of versions of one model in line with the
repository, the version policy and the acceptance rule.

Both services use it (the encoder with a callback that builds its vocabulary state, the scorer
with one that builds and warms its ONNX Runtime session), so they choose versions the same way:

* the policy (``latest:N`` / ``specific:V1,V2``) picks candidates, newest first, and an optional
  variant filter (manifest ``exporter.variant``) skips others;
* each new candidate is opened and checked by ``acceptance.accept`` and then handed to the
  service's blocking ``load`` callback, in a worker thread;
* a refused version is remembered with a fingerprint of manifest.json and of every file the
  manifest lists, and tried again only when one of them changes;
* the new set replaces the old one in one assignment (``loaded``) and ``on_swap`` tells the
  service (encoder: swap the servicer's states; scorer: swap its snapshot, drain retired
  versions); ``xdrec_model_version_loaded`` / ``xdrec_model_load_failures_total`` are updated here;
* a scan never empties a serving set: an empty listing (volume hiccup) or a pass in which no
  version is acceptable keeps what is loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

from services.common.metrics import LOAD_FAILURES, LOADED_VERSIONS
from services.common.model_repository.acceptance import ACCEPTANCE, AcceptanceRule, accept
from services.common.model_repository.errors import VersionRefused
from services.common.model_repository.policy import VersionPolicy
from services.common.model_repository.repository import (
    Fingerprint,
    ModelRepository,
    ModelVersion,
)

log = logging.getLogger("xdrec.model_repository")

T = TypeVar("T")
LoadCallback = Callable[[ModelVersion], T]
SwapCallback = Callable[[Mapping[str, T], Mapping[str, T]], None]


@dataclass(frozen=True)
class Refusal:
    """Why a version was refused, and the state of its files at the time."""

    fingerprint: Fingerprint
    message: str


class _Skipped:
    """The version is not of the configured variant (not a refusal)."""


_SKIPPED = _Skipped()


class VersionFollower(Generic[T]):
    """The versions of one model a service holds (``loaded``: version -> service object)."""

    def __init__(
        self,
        repository: ModelRepository,
        name: str,
        policy: VersionPolicy,
        *,
        service: str,
        load: LoadCallback[T],
        on_swap: SwapCallback[T] | None = None,
        variant: str = "",
        rule: AcceptanceRule = ACCEPTANCE,
    ) -> None:
        self.repository = repository
        self.name = name
        self.policy = policy
        self.service = service
        self.variant = variant
        self.rule = rule
        self._load = load
        self._on_swap = on_swap
        self.loaded: Mapping[str, T] = MappingProxyType({})
        self.refused: dict[str, Refusal] = {}
        self._lock = asyncio.Lock()

    # -- blocking part (worker thread) --------------------------------------------------------

    def _open_accept_load(self, version: str, *, filter_variant: bool) -> T | _Skipped:
        opened = self.repository.open(self.name, version)  # FileNotFoundError, ManifestError
        if filter_variant and self.variant and opened.variant != self.variant:
            return _SKIPPED
        accept(opened, self.rule)
        return self._load(opened)

    def _refuse(self, version: str, fingerprint: Fingerprint, exc: Exception) -> str:
        message = f"model '{self.name}' version {version} refused: {exc}"
        self.refused[version] = Refusal(fingerprint, message)
        LOAD_FAILURES.labels(self.service, self.name).inc()
        log.error(
            "model version refused: %s",
            exc,
            extra={"model": self.name, "version": version, "service": self.service},
        )
        return message

    # -- the scans ----------------------------------------------------------------------------

    async def sync(self, *, retry_refused: bool = False) -> dict[str, str]:
        """Brings ``loaded`` in line with the policy; returns this pass's refusals
        ({version: message}). ``retry_refused`` also retries remembered refusals (start-up,
        explicit load)."""
        async with self._lock:
            available = await asyncio.to_thread(self.repository.versions, self.name)
            loaded = dict(self.loaded)
            if not available:
                if loaded:
                    log.warning(
                        "no versions found on disk; keeping the loaded ones",
                        extra={"model": self.name, "service": self.service},
                    )
                return {}
            chosen: dict[str, T] = {}
            errors: dict[str, str] = {}
            for version in self.policy.candidates(available):
                if len(chosen) >= self.policy.limit:
                    break
                if version in loaded:
                    chosen[version] = loaded[version]
                    continue
                fingerprint = self.repository.fingerprint(self.name, version)
                refusal = self.refused.get(version)
                if refusal and refusal.fingerprint == fingerprint and not retry_refused:
                    continue
                try:
                    result = await asyncio.to_thread(
                        self._open_accept_load, version, filter_variant=True
                    )
                except Exception as exc:  # every reason to refuse, all handled alike
                    errors[version] = self._refuse(version, fingerprint, exc)
                    continue
                if isinstance(result, _Skipped):
                    continue
                self.refused.pop(version, None)
                chosen[version] = result
            if not chosen and loaded:
                log.warning(
                    "no acceptable version on disk; keeping the loaded ones",
                    extra={"model": self.name, "service": self.service},
                )
                return errors
            if chosen.keys() != loaded.keys():
                self._swap(chosen, loaded)
            return errors

    async def load(self, version: str) -> T:
        """Explicit load of one version (not variant-filtered); the policy then trims to its
        newest ``N`` for ``latest:N``. Raises FileNotFoundError or VersionRefused."""
        async with self._lock:
            loaded = dict(self.loaded)
            if version in loaded:
                return loaded[version]
            fingerprint = self.repository.fingerprint(self.name, version)
            try:
                result = await asyncio.to_thread(
                    self._open_accept_load, version, filter_variant=False
                )
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise VersionRefused(self._refuse(version, fingerprint, exc)) from exc
            assert not isinstance(result, _Skipped)
            self.refused.pop(version, None)
            chosen = {**loaded, version: result}
            if not self.policy.specific:
                keep = sorted(chosen, key=int)[-self.policy.limit :]
                chosen = {v: chosen[v] for v in keep}
            self._swap(chosen, loaded)
            return result

    async def unload(self) -> None:
        """Drops every loaded version."""
        async with self._lock:
            self._swap({}, dict(self.loaded))

    def _swap(self, chosen: dict[str, T], previous: dict[str, T]) -> None:
        self.loaded = MappingProxyType(dict(chosen))
        for version in chosen.keys() - previous.keys():
            LOADED_VERSIONS.labels(self.service, self.name, version).set(1)
        for version in previous.keys() - chosen.keys():
            LOADED_VERSIONS.remove(self.service, self.name, version)
        log.info(
            "model versions",
            extra={
                "model": self.name,
                "service": self.service,
                "versions": sorted(chosen, key=int),
            },
        )
        if self._on_swap is not None:
            self._on_swap(self.loaded, MappingProxyType(previous))
