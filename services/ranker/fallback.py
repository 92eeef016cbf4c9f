"""Graceful degradation: which downstream failures the ranker answers by popularity, and how.

Why degrade instead of failing: a recommendation by popularity is a far better answer for a caller
than an error page, and the ranker holds everything that answer needs (the catalogue carries
popularity, ids and titles). So while one dependency is down, overloaded or too slow for the
caller's deadline, the ranker still answers OK, flagged in ``RecommendResponse.fallback`` so the
caller (and the metrics) can tell a degraded answer from a personal one:

* scorer unavailable -> the encoder's candidates (its seen/excluded filters already applied) by
  popularity, ``FALLBACK_SCORER_UNAVAILABLE``;
* encoder unavailable -> candidates from the ranker's cached catalogue (the request's
  ``candidate_item_ids`` or the whole catalogue, minus ``exclude_item_ids``) by popularity,
  ``FALLBACK_ENCODER_UNAVAILABLE``; seen items cannot be dropped (the history is the encoder's).

Only failures that say "this dependency cannot answer now" degrade (UNAVAILABLE,
DEADLINE_EXCEEDED of the downstream call, RESOURCE_EXHAUSTED from a shedding dependency); a
client error (INVALID_ARGUMENT, NOT_FOUND) or an INTERNAL answer is still surfaced, since
popularity would hide a bug or a bad request.
"""

from __future__ import annotations

import grpc
import numpy as np
from prometheus_client import Counter
from xdrec.ranker.v1 import ranker_pb2

from services.common.errors import ServiceError
from services.ranker.catalog import Catalog

DEGRADING_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Downstream statuses that mean "cannot answer now" rather than "this request is wrong"."""

FALLBACK_ANSWERS = Counter(
    "xdrec_ranker_fallback_answers",
    "Recommend answers served by popularity because a dependency could not answer, by reason "
    "(scorer_unavailable, encoder_unavailable)",
    ["reason"],
)


def degrades(exc: BaseException) -> bool:
    """Whether a failed downstream call is answered by the popularity fallback."""
    return isinstance(exc, ServiceError) and exc.code in DEGRADING_CODES


def record(fallback: int) -> None:
    """Counts one degraded answer under its reason."""
    name = ranker_pb2.Fallback.Name(fallback).removeprefix("FALLBACK_").lower()
    FALLBACK_ANSWERS.labels(name).inc()


def candidates_without_encoder(
    catalog: Catalog, request: ranker_pb2.RecommendRequest
) -> tuple[np.ndarray, list[str]]:
    """The catalogue indices to rank when the encoder cannot be asked, and the requested ids
    that are not in the catalogue (reported back as the encoder would).

    The request's candidates in their order (duplicates once, unknown ids once), or the whole catalogue, minus
    ``exclude_item_ids``; ids unknown to the catalogue are ignored in the exclusions.
    """
    index_of = catalog.index_of
    excluded = {index_of[i] for i in request.exclude_item_ids if i in index_of}
    if not request.candidate_item_ids:
        indices = catalog.all_indices
        if excluded:
            indices = indices[~np.isin(indices, list(excluded))]
        return indices, []
    unknown: dict[str, None] = {}
    chosen: dict[int, None] = {}
    for item_id in request.candidate_item_ids:
        index = index_of.get(item_id)
        if index is None:
            unknown.setdefault(item_id, None)
        elif index not in excluded:
            chosen.setdefault(index, None)
    return np.fromiter(chosen, dtype=np.int64, count=len(chosen)), list(unknown)
