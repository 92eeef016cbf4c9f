"""The encoder's candidate filters: one operator per module, applied in the configured order
(``--candidate-filters``) to the candidate set before the model inputs are built.

Why in the encoder: it is the one place where item ids become indices, so the filters work on
indices it already has, and the candidates input it returns holds exactly the items to score
(nothing is scored that can never be returned, and k results do not come out short).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.common.pipeline import Operator, Pipeline, build_pipeline, parse_names
from services.encoder.filters.candidates import CandidateSet
from services.encoder.filters.exclude_listed import ExcludeListed
from services.encoder.filters.exclude_seen import ExcludeSeen

CandidateFilter = Operator[CandidateSet]
CandidatePipeline = Pipeline[CandidateSet]

REGISTRY: Mapping[str, Callable[[], CandidateFilter]] = {
    ExcludeSeen.name: ExcludeSeen,
    ExcludeListed.name: ExcludeListed,
}
DEFAULT_FILTERS = f"{ExcludeSeen.name},{ExcludeListed.name}"


def build_candidate_filters(spec: str = DEFAULT_FILTERS) -> CandidatePipeline:
    """The pipeline named by a comma-separated list (see ``REGISTRY``); ValueError otherwise."""
    return build_pipeline(parse_names(spec), REGISTRY, "--candidate-filters")


__all__ = [
    "DEFAULT_FILTERS",
    "REGISTRY",
    "CandidateFilter",
    "CandidatePipeline",
    "CandidateSet",
    "ExcludeListed",
    "ExcludeSeen",
    "build_candidate_filters",
]
