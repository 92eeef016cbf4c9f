"""The vocabularies and catalogue of one model version, loaded from the model repository.

Why the encoder owns them: item ids become model indices here and nowhere else, so the ranker
and the scorer never see raw ids and cannot disagree about which version's vocabulary was used.
The files are verified against the sha256 in the manifest before use; a catalogue that disagrees
with the target vocabulary is refused (it would silently recommend the wrong items). Reading and
checking them is shared with the acceptance rule (services/common/model_repository/vocabulary.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.common.model_repository import FeatureSpec, ModelVersion
from services.common.model_repository.vocabulary import (
    SOURCE_VOCAB,
    TARGET_VOCAB,
    CatalogEntry,
    read_catalog,
    read_vocabulary,
)


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
    catalog_index: dict[str, int] = field(repr=False, default_factory=dict)
    """Id -> index of the catalogue's items: the candidates a request may name."""

    @classmethod
    def load(cls, version: ModelVersion) -> ModelVocabulary:
        """Reads and verifies vocab_source.json, vocab_target.json and catalog.json."""
        source = read_vocabulary(version, SOURCE_VOCAB)
        target = read_vocabulary(version, TARGET_VOCAB)
        catalog = read_catalog(version, target)
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
            catalog_index={e.item_id: e.index for e in catalog},
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
