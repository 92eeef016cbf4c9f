"""The target catalogue (ids, titles, popularity) per model version, fetched once and cached.

Why the ranker holds it: the encoder answers with the catalogue indices of the candidates it
encoded (``EncodeResponse.candidate_indices``); the ranker turns the winners into ids and titles
and, for the popularity fallback, candidates into popularity shares. It never maps ids to indices
(that is the encoder's job). Why cache per version: titles and popularity are needed on every
request but change only with the model version; a new version simply misses the cache once.
Arrays are indexed by catalogue index so that both are gathers, not dict lookups.

Why the newest catalogue is also fetched ahead of need (``CatalogCache.refresh``): when the
encoder is down the ranker must still answer, by popularity, from a catalogue it already holds
(``services.ranker.fallback``); the id -> index map that path needs is built on first use only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from xdrec.encoder.v1 import encoder_pb2

from services.common.errors import Internal

CatalogFetcher = Callable[[str, str, float], Awaitable[encoder_pb2.GetCatalogResponse]]
"""Fetches the catalogue of (model name, version) before a ``time.monotonic()`` deadline."""


@dataclass(frozen=True, eq=False)
class Catalog:
    """One model version's catalogue, indexed by target vocabulary index."""

    name: str
    version: str
    item_ids: list[str]
    titles: list[str]
    popularity: np.ndarray
    share: np.ndarray = field(repr=False)
    present: np.ndarray = field(repr=False)

    @classmethod
    def from_response(cls, response: encoder_pb2.GetCatalogResponse) -> Catalog:
        size = max((item.index for item in response.items), default=0) + 1
        item_ids = [""] * size
        titles = [""] * size
        popularity = np.zeros(size, dtype=np.float64)
        present = np.zeros(size, dtype=bool)
        for item in response.items:
            present[item.index] = True
            item_ids[item.index] = item.item_id
            titles[item.index] = item.title
            popularity[item.index] = max(item.popularity, 0)
        total = popularity.sum()
        share = popularity / total if total > 0 else popularity
        return cls(
            name=response.model.name,
            version=response.model.version,
            item_ids=item_ids,
            titles=titles,
            popularity=popularity,
            share=share,
            present=present,
        )

    def check(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` if every one names an item of this catalogue; INTERNAL otherwise (the
        encoder answered with a vocabulary that disagrees with its own catalogue)."""
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise Internal(
                f"encoder candidate_indices must be a flat integer tensor, got {indices.dtype} "
                f"{list(indices.shape)}"
            )
        inside = (indices > 0) & (indices < self.present.size)
        known = np.zeros(indices.shape, dtype=bool)
        known[inside] = self.present[indices[inside]]
        if not known.all():
            raise Internal(
                f"encoder candidate_indices {indices[~known][:5].tolist()} are not in the "
                f"catalogue of '{self.name}' version {self.version}"
            )
        return indices

    @cached_property
    def index_of(self) -> dict[str, int]:
        """Item id -> catalogue index; only the encoder-down fallback maps ids itself."""
        return {
            item_id: index for index, item_id in enumerate(self.item_ids) if self.present[index]
        }

    @cached_property
    def all_indices(self) -> np.ndarray:
        """Every catalogue index, ascending (the candidates when a request names none)."""
        return np.flatnonzero(self.present).astype(np.int64)

    def popularity_shares(self, indices: np.ndarray) -> np.ndarray:
        """The popularity fallback's scores: each item's share of all training interactions."""
        return self.share[indices].astype(np.float32)


class CatalogCache:
    """Least-recently-used cache of ``Catalog`` by (model name, version)."""

    def __init__(self, fetch: CatalogFetcher, size: int) -> None:
        self._fetch = fetch
        self._size = max(size, 1)
        self._entries: OrderedDict[tuple[str, str], Catalog] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, name: str, version: str, deadline: float) -> Catalog:
        key = (name, version)
        catalog = self._entries.get(key)
        if catalog is None:
            async with self._lock:  # one fetch per version, however many requests miss at once
                catalog = self._entries.get(key)
                if catalog is None:
                    catalog = Catalog.from_response(await self._fetch(name, version, deadline))
                    self._entries[key] = catalog
                    while len(self._entries) > self._size:
                        self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return catalog

    async def refresh(self, deadline: float) -> Catalog:
        """Fetches the catalogue of the encoder's newest version and keeps it as the most recent
        entry, so that the encoder-down fallback has one before the first request needs it."""
        catalog = Catalog.from_response(await self._fetch("", "", deadline))
        key = (catalog.name, catalog.version)
        async with self._lock:
            self._entries.setdefault(key, catalog)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return self._entries[key]

    def peek(self, name: str, version: str) -> Catalog | None:
        """The cached catalogue of (name, version), without fetching it."""
        return self._entries.get((name, version))

    def latest(self) -> Catalog | None:
        """The most recently used catalogue (the version the encoder last answered for)."""
        return next(reversed(self._entries.values()), None)
