"""The target catalogue (ids, titles, popularity) per model version, fetched once and cached.

Why cache per version: titles and popularity are needed on every request but change only with the
model version, and the encoder tells the ranker which version each request was encoded for; a new
version simply misses the cache once. Arrays are indexed by vocabulary index so that turning the
scored candidate indices into items is a gather, not a dict lookup per candidate.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from xdrec.encoder.v1 import encoder_pb2

CatalogFetcher = Callable[[str, str, float], Awaitable[encoder_pb2.GetCatalogResponse]]
"""Fetches the catalogue of (model name, version) before a ``time.monotonic()`` deadline."""


@dataclass(frozen=True)
class Catalog:
    """One model version's catalogue, indexed by target vocabulary index."""

    name: str
    version: str
    item_ids: list[str]
    titles: list[str]
    popularity: np.ndarray
    share: np.ndarray = field(repr=False)
    present: np.ndarray = field(repr=False)
    index_of: dict[str, int] = field(repr=False)

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
            index_of={item.item_id: item.index for item in response.items},
        )

    def indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """Indices of the known ids among ``item_ids`` (unknown ones are ignored)."""
        found = [self.index_of[i] for i in item_ids if i in self.index_of]
        return np.asarray(found, dtype=np.int64)

    def known(self, indices: np.ndarray) -> np.ndarray:
        """The subset of ``indices`` that name a catalogue item (guards against a short catalogue)."""
        inside = indices[(indices > 0) & (indices < self.present.size)]
        return inside[self.present[inside]]


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
