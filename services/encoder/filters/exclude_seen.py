"""``exclude_seen``: drops the items the user already interacted with, unless the request says
``include_seen`` (recommending what someone just watched is rarely useful)."""

from __future__ import annotations

from services.encoder.filters.candidates import CandidateSet


class ExcludeSeen:
    name = "exclude_seen"

    def apply(self, state: CandidateSet) -> CandidateSet:
        return state if state.include_seen else state.without(state.seen)
