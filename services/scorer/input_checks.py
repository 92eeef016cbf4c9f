"""Value checks on decoded request tensors: item indices inside the vocabularies, finite floats.

Why before ONNX Runtime: ORT's Gather wraps a negative index (``-1`` scores the last item, so a
wrong request returns OK with scores of other items) and reports an index past the end as a
run-time failure with its own text. Checking the values against the vocabulary sizes of the
version (read once at load time from its ``vocab_*.json``) gives the caller INVALID_ARGUMENT
naming the input, and NaN/Inf floats never reach the model to come back as NaN scores.

The index inputs are the documented model signature (docs/architecture.md "Model signature"):
``src_items`` indexes vocab_source, ``tgt_items`` and ``candidates`` index vocab_target (0 is
padding in the histories; candidates are real items, >= 1, and at least one per row). Models
with other input names get the finiteness check only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument
from services.common.model_repository import ModelVersion
from services.common.model_repository.vocabulary import SOURCE_VOCAB, TARGET_VOCAB


@dataclass(frozen=True)
class IndexInput:
    """How one index input of the signature relates to a vocabulary."""

    vocabulary: str
    """Manifest file key of the vocabulary (``vocab_source`` / ``vocab_target``)."""
    lowest: int
    """Smallest valid index (0 where 0 is padding, 1 where every entry must be an item)."""
    needs_entries: bool
    """Whether the last axis must be non-empty (a request must score at least one candidate)."""


INDEX_INPUTS: dict[str, IndexInput] = {
    "src_items": IndexInput(SOURCE_VOCAB, lowest=0, needs_entries=False),
    "tgt_items": IndexInput(TARGET_VOCAB, lowest=0, needs_entries=False),
    "candidates": IndexInput(TARGET_VOCAB, lowest=1, needs_entries=True),
}


@dataclass(frozen=True)
class IndexRange:
    """Valid values of one index input of a loaded version: ``lowest <= i < limit``."""

    input: str
    vocabulary: str
    lowest: int
    limit: int
    needs_entries: bool


def index_ranges(version: ModelVersion, input_names: tuple[str, ...]) -> tuple[IndexRange, ...]:
    """The ranges of the version's index inputs, from the sizes of its vocabulary files.

    A vocabulary file the manifest does not list leaves its inputs unchecked (the acceptance
    rule refuses such versions for serving; test doubles may omit them).
    """
    sizes: dict[str, int] = {}
    ranges = []
    for name in input_names:
        spec = INDEX_INPUTS.get(name)
        if spec is None or spec.vocabulary not in version.manifest.files:
            continue
        if spec.vocabulary not in sizes:
            entries = version.read_json(spec.vocabulary)
            sizes[spec.vocabulary] = len(entries) if isinstance(entries, list) else 0
        ranges.append(
            IndexRange(
                name, spec.vocabulary, spec.lowest, sizes[spec.vocabulary], spec.needs_entries
            )
        )
    return tuple(ranges)


def _field(name: str) -> str:
    return f"inputs['{name}']"


def check_indices(arrays: Mapping[str, np.ndarray], ranges: tuple[IndexRange, ...]) -> None:
    """INVALID_ARGUMENT naming the input for an empty candidate axis or an index out of range."""
    for spec in ranges:
        array = arrays.get(spec.input)
        if array is None:
            continue
        if spec.needs_entries and (array.ndim == 0 or array.shape[-1] == 0):
            raise InvalidArgument(_field(spec.input), "empty; give at least one index per row")
        if array.size == 0:
            continue
        low, high = int(array.min()), int(array.max())
        if low < spec.lowest or high >= spec.limit:
            bad = low if low < spec.lowest else high
            raise InvalidArgument(
                _field(spec.input),
                f"index {bad} is outside {spec.vocabulary} (valid: {spec.lowest}.."
                f"{spec.limit - 1})",
            )


def check_finite(arrays: Mapping[str, np.ndarray]) -> None:
    """INVALID_ARGUMENT naming the input when a float input holds NaN or +-Inf."""
    for name, array in arrays.items():
        if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
            raise InvalidArgument(_field(name), "holds NaN or infinite values")
