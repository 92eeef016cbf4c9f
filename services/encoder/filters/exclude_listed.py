"""``exclude_listed``: drops the items the request lists in ``exclude_item_ids`` (a business
filter the caller controls, e.g. items out of stock or already shown on the page)."""

from __future__ import annotations

from services.encoder.filters.candidates import CandidateSet


class ExcludeListed:
    name = "exclude_listed"

    def apply(self, state: CandidateSet) -> CandidateSet:
        return state.without(state.excluded)
