"""Precomputed item vectors of any modality (image, audio, text embeddings from your own encoders).

They reach the model the way title embeddings do (trainer/models/history_tower.py, ``ItemTable``):
a frozen buffer aligned with each domain's vocabulary, projected and added to the id embedding,
and exported as a constant of the ONNX graph, so serving needs no new input. Three layouts are
accepted (``data.item_vectors`` / ``data.item_vectors_ids`` / ``data.item_vectors_column``):

* an ``.npz`` with arrays ``ids`` ([n] strings) and ``vectors`` ([n, dim]);
* an ``.npy`` ([n, dim]) plus its ids: a ``.json`` list, an ``.npy`` of strings, or a text file
  with one id per line;
* a list column of the generic items table (Parquet ``data.items_path``), one list per item
  (null = no vector).

Everything is checked before training: a wrong dimension, NaN/Inf or duplicate ids stop with a
message that names the file and what to fix; ids no domain knows are counted and ignored; items
of the catalogue without a vector get a learned "missing" vector, and how many did is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import DataConfig


class ItemVectorError(ValueError):
    """Item vectors that cannot be used as given; the message names the file and the fix."""


@dataclass
class ItemVectors:
    ids: list[str]
    vectors: np.ndarray  # float32 [len(ids), dim]
    origin: str  # the file (and column) they came from, for messages and reports

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass
class AlignedVectors:
    """Vectors laid out along one vocabulary (index 0 = padding: zeros, not missing)."""

    vectors: np.ndarray  # float32 [len(vocab), dim], zeros where missing
    missing: np.ndarray  # bool [len(vocab)], True for catalogue items without a vector

    @property
    def covered(self) -> int:
        return int(len(self.missing) - 1 - self.missing.sum())


@dataclass
class ContentReport:
    origin: str
    dim: int
    vectors: int
    unknown_ids: int  # ids in the file that no domain's vocabulary holds (ignored)
    unknown_examples: list[str] = field(default_factory=list)
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> covered/missing

    def to_dict(self) -> dict:
        return {
            "origin": self.origin,
            "dim": self.dim,
            "vectors": self.vectors,
            "unknown_ids": self.unknown_ids,
            "unknown_examples": self.unknown_examples,
            "coverage": self.coverage,
        }

    def lines(self) -> list[str]:
        out = [f"  item vectors from {self.origin}: {self.vectors} vectors of dimension {self.dim}"]
        for domain, c in self.coverage.items():
            line = f"    {domain}: {c['covered']} items with a vector"
            if c["missing"]:
                line += f", {c['missing']} without (they get a learned 'missing' vector)"
            out.append(line)
        if self.unknown_ids:
            out.append(
                f"    WARNING: {self.unknown_ids} id(s) in the vectors match no item of either "
                f"domain (ignored), e.g. {self.unknown_examples[:3]}"
            )
        return out


def load_item_vectors(data: DataConfig) -> ItemVectors:
    """Reads and validates the configured vectors (see the module docstring for the layouts)."""
    if data.item_vectors and data.item_vectors_column:
        raise ItemVectorError(
            "data.item_vectors and data.item_vectors_column are both set; give the vectors "
            "either as a file or as a column of the items table, not both"
        )
    if data.item_vectors_column:
        ids, rows, origin = _from_items_column(data.items_path, data.item_vectors_column)
        return _validated(ids, rows, origin)
    if not data.item_vectors:
        raise ItemVectorError(
            "model.content_fusion is true but no item vectors are configured; set "
            "data.item_vectors (a .npz, or a .npy with data.item_vectors_ids) or "
            "data.item_vectors_column (a list column of data.items_path)"
        )
    path = Path(data.item_vectors)
    if not path.exists():
        raise ItemVectorError(f"data.item_vectors: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if "ids" not in keys or "vectors" not in keys:
                raise ItemVectorError(
                    f"{path}: an .npz of item vectors needs arrays 'ids' and 'vectors'; it has "
                    f"{keys}. Save it with np.savez(path, ids=ids, vectors=vectors)"
                )
            ids, vectors = archive["ids"], archive["vectors"]
        return _validated([str(i) for i in ids.tolist()], vectors, str(path))
    if suffix == ".npy":
        if not data.item_vectors_ids:
            raise ItemVectorError(
                f"{path}: an .npy holds only the vectors; set data.item_vectors_ids to a file of "
                "their item ids (.json list, .npy of strings, or one id per line), or save an "
                ".npz with arrays 'ids' and 'vectors'"
            )
        vectors = np.load(path, allow_pickle=False)
        ids = _read_ids(Path(data.item_vectors_ids))
        if len(ids) != len(vectors):
            raise ItemVectorError(
                f"{path} has {len(vectors)} vectors but {data.item_vectors_ids} has {len(ids)} "
                "ids; they must be aligned, one id per vector row"
            )
        return _validated(ids, vectors, str(path))
    raise ItemVectorError(
        f"data.item_vectors: {path} is neither .npz nor .npy; for a Parquet list column of the "
        "items table set data.item_vectors_column instead"
    )


def _read_ids(path: Path) -> list[str]:
    if not path.exists():
        raise ItemVectorError(f"data.item_vectors_ids: file not found: {path}")
    if path.suffix.lower() == ".npy":
        return [str(i) for i in np.load(path, allow_pickle=False).tolist()]
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        ids = json.loads(text)
        if not isinstance(ids, list):
            raise ItemVectorError(f"{path}: expected a JSON list of item ids")
        return [str(i) for i in ids]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_items_column(items_path: str | None, column: str) -> tuple[list[str], list, str]:
    """Ids and per-item lists (None where null) from a list column of the items table."""
    if not items_path:
        raise ItemVectorError(
            f"data.item_vectors_column={column!r} needs data.items_path (a Parquet items table)"
        )
    path = Path(items_path)
    if not path.exists():
        raise ItemVectorError(f"data.items_path: file not found: {path}")
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise ItemVectorError(
            f"{path}: a vector column needs a Parquet items table (CSV has no list type); "
            "convert it to Parquet, or give the vectors as a side .npz / .npy (data.item_vectors)"
        )
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if column not in names or "item_id" not in names:
        raise ItemVectorError(
            f"{path}: data.item_vectors_column={column!r} needs columns 'item_id' and {column!r}; "
            f"the table has {names}"
        )
    table = pq.read_table(path, columns=["item_id", column]).to_pydict()
    return [str(i) for i in table["item_id"]], table[column], f"{path} column {column!r}"


def _validated(ids: list[str], vectors, origin: str) -> ItemVectors:
    """Checks shape, dimension, finiteness and id uniqueness; drops null rows (no vector)."""
    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2:
            raise ItemVectorError(
                f"{origin}: vectors must be a 2-D array [items, dim]; got shape {vectors.shape}"
            )
        if not np.issubdtype(vectors.dtype, np.number):
            raise ItemVectorError(f"{origin}: vectors must be numeric; got dtype {vectors.dtype}")
        matrix = vectors.astype(np.float32)
    else:  # a list column: one list per item, None = no vector
        present = [k for k, v in enumerate(vectors) if v is not None]
        lengths = {len(vectors[k]) for k in present}
        if len(lengths) > 1:
            first = len(vectors[present[0]])
            odd = next(k for k in present if len(vectors[k]) != first)
            raise ItemVectorError(
                f"{origin}: inconsistent vector dimension: item {ids[present[0]]!r} has {first} "
                f"values, item {ids[odd]!r} has {len(vectors[odd])}; every vector must have the "
                "same length"
            )
        ids = [ids[k] for k in present]
        try:
            matrix = np.array([vectors[k] for k in present], dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ItemVectorError(f"{origin}: vectors must be lists of numbers: {error}") from None
        if not present:
            raise ItemVectorError(f"{origin}: every vector is null; nothing to fuse")
        matrix = matrix.reshape(len(present), -1)
    if matrix.shape[1] == 0:
        raise ItemVectorError(f"{origin}: vectors have dimension 0")
    if matrix.shape[0] != len(ids):
        raise ItemVectorError(
            f"{origin}: {matrix.shape[0]} vectors but {len(ids)} ids; they must be aligned"
        )
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        examples = [ids[k] for k in np.flatnonzero(bad)[:5]]
        raise ItemVectorError(
            f"{origin}: {int(bad.sum())} vector(s) contain NaN or Inf (e.g. items {examples}); "
            "fix them, or leave those items out (they then get the learned 'missing' vector)"
        )
    if len(set(ids)) != len(ids):
        counts: dict[str, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        repeated = [i for i, c in counts.items() if c > 1]
        raise ItemVectorError(
            f"{origin}: {len(repeated)} item id(s) have more than one vector (e.g. "
            f"{repeated[:5]}); keep one vector per item"
        )
    return ItemVectors(ids, matrix, origin)


def align(vectors: ItemVectors, vocab_ids: list[str]) -> AlignedVectors:
    """Lays the vectors out along a vocabulary (index 0 is padding: zeros, not "missing")."""
    row = {item: k for k, item in enumerate(vectors.ids)}
    out = np.zeros((len(vocab_ids), vectors.dim), dtype=np.float32)
    missing = np.zeros(len(vocab_ids), dtype=bool)
    for index, item in enumerate(vocab_ids[1:], start=1):
        k = row.get(item)
        if k is None and item.split(":", 1)[0] in ("source", "target"):
            k = row.get(item.split(":", 1)[1])  # namespaced by data.item_id_collisions
        if k is None:
            missing[index] = True
        else:
            out[index] = vectors.vectors[k]
    return AlignedVectors(out, missing)


def content_for_split(
    data: DataConfig, source_ids: list[str], target_ids: list[str]
) -> tuple[AlignedVectors, AlignedVectors, ContentReport]:
    """Loads, validates and aligns the vectors with both vocabularies (index 0 = padding)."""
    vectors = load_item_vectors(data)
    source, target = align(vectors, source_ids), align(vectors, target_ids)
    known = set(source_ids[1:]) | set(target_ids[1:])
    unknown = [i for i in vectors.ids if i not in known]
    if len(unknown) == len(vectors.ids):
        raise ItemVectorError(
            f"{vectors.origin}: none of the {len(unknown)} ids matches an item of the data "
            f"(e.g. {unknown[:3]} vs items like {target_ids[1:4]}); the vectors must be keyed by "
            "the interactions' item_id"
        )
    report = ContentReport(
        vectors.origin,
        vectors.dim,
        len(vectors.ids),
        len(unknown),
        unknown[:5],
        {
            name: {"covered": a.covered, "missing": int(a.missing.sum())}
            for name, a in (("source", source), ("target", target))
        },
    )
    return source, target, report
