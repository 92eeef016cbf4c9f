"""An ordered list of small operators over one request's state (in the spirit of Merlin Systems'
ops): the encoder's candidate filters and the ranker's ranking steps are both built this way.

Why operators instead of fixed calls: each filter is one small module with one job and its own
test; which ones run, and in which order, is configuration (a comma-separated list of names), so
a business filter is added by writing one operator and naming it, not by editing a servicer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

S = TypeVar("S")


class Operator(Protocol[S]):
    """One step: takes the request's state and returns the new state (never mutates it)."""

    name: str

    def apply(self, state: S) -> S: ...


@dataclass(frozen=True)
class Pipeline(Generic[S]):
    """Operators applied in order."""

    operators: tuple[Operator[S], ...]

    def apply(self, state: S) -> S:
        for operator in self.operators:
            state = operator.apply(state)
        return state

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(operator.name for operator in self.operators)


def parse_names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the configuration spelling of a pipeline."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def build_pipeline(
    names: Sequence[str], registry: Mapping[str, Callable[[], Operator[S]]], what: str
) -> Pipeline[S]:
    """The pipeline of ``names`` (in order); an unknown or repeated name is a ValueError that
    lists the known ones (``what`` names the setting, e.g. ``--candidate-filters``)."""
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(
            f"{what}: unknown operator(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(registry))})"
        )
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise ValueError(f"{what}: operator(s) listed twice: {', '.join(repeated)}")
    return Pipeline(tuple(registry[name]() for name in names))
