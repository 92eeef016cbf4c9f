"""The item files of a version: vocab_source.json, vocab_target.json and catalog.json.

Why here and not in the encoder: the acceptance rule checks them, so a version whose catalogue
is malformed (even with its hash recomputed) is refused by the scorer as well as the encoder;
the encoder builds its id <-> index maps from the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.common.model_repository.errors import IntegrityError
from services.common.model_repository.manifest import MODEL_KEY
from services.common.model_repository.repository import ModelVersion

SOURCE_VOCAB = "vocab_source"
TARGET_VOCAB = "vocab_target"
CATALOG = "catalog"
REQUIRED_FILES = (MODEL_KEY, SOURCE_VOCAB, TARGET_VOCAB, CATALOG)  # docs/architecture.md layout


@dataclass(frozen=True)
class CatalogEntry:
    """One target item: id, vocabulary index (>= 1), title and training-window popularity."""

    item_id: str
    index: int
    title: str
    popularity: int


def read_vocabulary(version: ModelVersion, key: str) -> dict[str, int]:
    """Item id -> index of vocabulary file ``key`` (position 0 is padding, not an item)."""
    ids = version.read_json(key)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IntegrityError(f"{version.label}: {key} must be a non-empty JSON list of strings")
    index = {item: position for position, item in enumerate(ids) if position > 0}
    if len(index) != len(ids) - 1:
        raise IntegrityError(f"{version.label}: {key} holds duplicate item ids")
    return index


def read_catalog(version: ModelVersion, target: dict[str, int]) -> tuple[CatalogEntry, ...]:
    """The catalogue, sorted by index; every entry must agree with the target vocabulary."""
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
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


def check_item_files(version: ModelVersion) -> None:
    """Every required file is listed, and the vocabularies and catalogue parse and agree."""
    missing = [key for key in REQUIRED_FILES if key not in version.manifest.files]
    if missing:
        raise IntegrityError(f"{version.label}: manifest.files has no entry {', '.join(missing)}")
    read_vocabulary(version, SOURCE_VOCAB)
    read_catalog(version, read_vocabulary(version, TARGET_VOCAB))
