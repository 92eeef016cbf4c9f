"""The versions the scorer serves: one shared ``VersionFollower`` per model, an immutable
snapshot for request handlers, retired versions drained.

Why an immutable snapshot behind one reference: request handlers read ``ModelManager.get`` on
every call while loads and unloads happen rarely. Choosing, checking and loading versions is the
shared follower's job (services/common/model_repository/follower.py: the same policy and
acceptance rule as the encoder, so both hold the same versions); the follower's swap callback
replaces the whole ``{name: {version: model}}`` mapping in one assignment, so readers never see a
half-loaded version and never block. Versions that leave the snapshot are *retired*: their
batching queue drains (requests already queued finish) before the session is dropped, so a hot
swap fails no request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from types import MappingProxyType

from services.common.errors import FailedPrecondition, NotFound
from services.common.metrics import MODEL_UNLOADED
from services.common.model_repository import ModelRepository, VersionPolicy, VersionRefused
from services.common.model_repository.follower import VersionFollower
from services.scorer.config import ScorerConfig
from services.scorer.loaded_model import LoadedModel
from services.scorer.warmup import load_version

log = logging.getLogger("xdrec.scorer.models")

SERVICE = "scorer"

Snapshot = Mapping[str, Mapping[str, LoadedModel]]
RetireHook = Callable[[LoadedModel], Awaitable[None]]


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
        self._followers: dict[str, VersionFollower[LoadedModel]] = {}
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

    def follower(self, name: str) -> VersionFollower[LoadedModel]:
        """The follower of model ``name`` (created on first use)."""
        follower = self._followers.get(name)
        if follower is None:
            follower = VersionFollower(
                self.repository,
                name,
                self.policy,
                service=SERVICE,
                load=partial(load_version, config=self.config),
                on_swap=partial(self._swapped, name),
                variant=self.config.variant,
            )
            self._followers[name] = follower
        return follower

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

    async def sync(self, name: str, *, retry_refused: bool = False) -> dict[str, str]:
        """Serves the policy's versions of ``name``; returns this pass's refusals
        ({version: message})."""
        return await self.follower(name).sync(retry_refused=retry_refused)

    def _swapped(
        self, name: str, chosen: Mapping[str, LoadedModel], previous: Mapping[str, LoadedModel]
    ) -> None:
        """The follower's swap: one assignment publishes the new set; versions that left it are
        retired (drained)."""
        current = dict(self._snapshot)
        if chosen:
            current[name] = chosen
        else:
            current.pop(name, None)
        self._snapshot = MappingProxyType(current)
        for version, model in chosen.items():
            if version not in previous:
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
        MODEL_UNLOADED.labels(SERVICE, name).set(0)
        if version is None:
            errors = await self.sync(name, retry_refused=True)
            newest = next(iter(self.policy.candidates(self.repository.versions(name))), None)
            if newest is None:
                raise NotFound(f"model '{name}' has no published version in the repository")
            if newest in errors:
                raise FailedPrecondition(errors[newest])
            return self.get(name)
        try:
            return await self.follower(name).load(version)
        except FileNotFoundError as exc:
            raise NotFound(str(exc)) from None
        except VersionRefused as exc:
            raise FailedPrecondition(str(exc)) from exc

    async def unload(self, name: str) -> None:
        """Stops serving every version of ``name`` (drained); polling leaves it unloaded until
        the next explicit load. NOT_FOUND when it is not loaded."""
        if name not in self._snapshot:
            raise NotFound(f"model '{name}' is not loaded")
        self._unloaded.add(name)
        MODEL_UNLOADED.labels(SERVICE, name).set(1)
        await self.follower(name).unload()

    @property
    def unloaded(self) -> list[str]:
        """Models unloaded through the API and not loaded again, sorted."""
        return sorted(self._unloaded)
