"""The encoder's candidate filters, one operator at a time and as a configured pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.pipeline import Pipeline, build_pipeline, parse_names
from services.encoder.filters import (
    DEFAULT_FILTERS,
    CandidateSet,
    ExcludeListed,
    ExcludeSeen,
    build_candidate_filters,
)


def ints(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def state(**kwargs) -> CandidateSet:
    return CandidateSet(
        indices=kwargs.pop("indices", ints(1, 2, 3, 4, 5)),
        seen=kwargs.pop("seen", ints(2, 9)),
        excluded=kwargs.pop("excluded", ints(5)),
        **kwargs,
    )


def test_exclude_seen_drops_seen_items_in_order_unless_included() -> None:
    assert ExcludeSeen().apply(state()).indices.tolist() == [1, 3, 4, 5]
    assert ExcludeSeen().apply(state(include_seen=True)).indices.tolist() == [1, 2, 3, 4, 5]
    assert ExcludeSeen().apply(state(indices=ints(5, 2, 1))).indices.tolist() == [5, 1]


def test_exclude_listed_drops_excluded_items_even_when_seen_are_included() -> None:
    assert ExcludeListed().apply(state()).indices.tolist() == [1, 2, 3, 4]
    assert ExcludeListed().apply(state(include_seen=True)).indices.tolist() == [1, 2, 3, 4]
    assert ExcludeListed().apply(state(excluded=ints(), seen=ints())).indices.tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]


def test_operators_do_not_mutate_their_input() -> None:
    before = state()
    after = ExcludeListed().apply(ExcludeSeen().apply(before))
    assert before.indices.tolist() == [1, 2, 3, 4, 5]
    assert after.indices.tolist() == [1, 3, 4]


def test_default_pipeline_drops_seen_then_excluded() -> None:
    pipeline = build_candidate_filters()
    assert pipeline.names == ("exclude_seen", "exclude_listed") == tuple(DEFAULT_FILTERS.split(","))
    assert pipeline.apply(state()).indices.tolist() == [1, 3, 4]
    assert pipeline.apply(state(include_seen=True)).indices.tolist() == [1, 2, 3, 4]
    assert pipeline.apply(state(indices=ints())).indices.tolist() == []


def test_pipeline_configuration_order_and_errors() -> None:
    assert build_candidate_filters("exclude_listed, exclude_seen").names == (
        "exclude_listed",
        "exclude_seen",
    )
    assert build_candidate_filters("").apply(state()).indices.tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"--candidate-filters: unknown operator\(s\) in_stock"):
        build_candidate_filters("exclude_seen,in_stock")
    with pytest.raises(ValueError, match="listed twice: exclude_seen"):
        build_candidate_filters("exclude_seen,exclude_seen")


def test_generic_pipeline_applies_operators_in_order() -> None:
    class Append:
        def __init__(self, name: str) -> None:
            self.name = name

        def apply(self, trail: tuple[str, ...]) -> tuple[str, ...]:
            return (*trail, self.name)

    registry = {"a": lambda: Append("a"), "b": lambda: Append("b")}
    pipeline: Pipeline[tuple[str, ...]] = build_pipeline(parse_names("b,a,"), registry, "--x")
    assert pipeline.apply(()) == ("b", "a")
    assert parse_names(" a , ,b ") == ("a", "b")
