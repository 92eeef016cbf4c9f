"""The vocabularies and catalogue of one model version, loaded from the model repository.

Why the encoder owns them: item ids become model indices here and nowhere else, so the ranker
and the scorer never see raw ids and cannot disagree about which version's vocabulary was used.
The files are verified against the sha256 in the manifest before use; a catalogue that disagrees
with the target vocabulary is refused (it would silently recommend the wrong items).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.model_repository import FeatureSpec, IntegrityError, ModelVersion

SOURCE_VOCAB = "vocab_source"
TARGET_VOCAB = "vocab_target"
CATALOG = "catalog"


@dataclass(frozen=True)
class CatalogEntry:
    """One target item: id, vocabulary index (>= 1), title and training-window popularity."""

    item_id: str
    index: int
    title: str
    popularity: int


def _vocab(version: ModelVersion, key: str) -> dict[str, int]:
    ids = version.read_json(key)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IntegrityError(f"{version.label}: {key} must be a non-empty JSON list of strings")
    index = {item: position for position, item in enumerate(ids) if position > 0}
    if len(index) != len(ids) - 1:
        raise IntegrityError(f"{version.label}: {key} holds duplicate item ids")
    return index


def _catalog(version: ModelVersion, target: dict[str, int]) -> tuple[CatalogEntry, ...]:
    raw: Any = version.read_json(CATALOG)
    if not isinstance(raw, list):
        raise IntegrityError(f"{version.label}: catalog must be a JSON list")
    entries = []
    for position, item in enumerate(raw):
        where = f"{version.label}: catalog[{position}]"
        try:
            entry = CatalogEntry(
                item_id=str(item["item_id"]),
                index=int(item["index"]),
                title=str(item.get("title", "")),
                popularity=int(item.get("popularity", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}: malformed entry ({exc})") from None
        if target.get(entry.item_id) != entry.index:
            raise IntegrityError(
                f"{where}: item '{entry.item_id}' has index {entry.index}, vocab_target says "
                f"{target.get(entry.item_id)}"
            )
        entries.append(entry)
    entries.sort(key=lambda e: e.index)
    if len({e.index for e in entries}) != len(entries):
        raise IntegrityError(f"{version.label}: catalog lists an item twice")
    return tuple(entries)


@dataclass(frozen=True)
class ModelVocabulary:
    """Id <-> index maps for both domains and the target catalogue of one model version."""

    name: str
    version: str
    features: FeatureSpec
    source_index: dict[str, int]
    target_index: dict[str, int]
    catalog: tuple[CatalogEntry, ...]
    catalog_indices: np.ndarray = field(repr=False)

    @classmethod
    def load(cls, version: ModelVersion) -> ModelVocabulary:
        """Reads and verifies vocab_source.json, vocab_target.json and catalog.json."""
        source = _vocab(version, SOURCE_VOCAB)
        target = _vocab(version, TARGET_VOCAB)
        catalog = _catalog(version, target)
        indices = np.fromiter((e.index for e in catalog), dtype=np.int64, count=len(catalog))
        indices.setflags(write=False)
        return cls(
            name=version.name,
            version=version.version,
            features=version.manifest.features,
            source_index=source,
            target_index=target,
            catalog=catalog,
            catalog_indices=indices,
        )

    @property
    def source_domain(self) -> str:
        return self.features.source_domain

    @property
    def target_domain(self) -> str:
        return self.features.target_domain

    def index_map(self, domain: str) -> dict[str, int]:
        """The id -> index map of ``domain`` (source or target name from the manifest)."""
        return self.target_index if domain == self.target_domain else self.source_index

    def domain_of(self, item_id: str) -> str | None:
        """The domain whose vocabulary holds ``item_id`` (target first), or None."""
        if item_id in self.target_index:
            return self.target_domain
        if item_id in self.source_index:
            return self.source_domain
        return None
