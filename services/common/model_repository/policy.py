"""Which versions a service holds: ONE version policy for the encoder and the scorer.

``latest:N`` holds the N newest versions that pass the acceptance rule; ``specific:V1,V2`` holds
exactly the listed ones. The encoder's older ``--version V`` flag is an alias for ``specific:V``
(``VersionPolicy.from_flags``), so both services pin versions the same way underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_POLICY = "latest:2"  # both services: the newest two, so a roll-out has a common version


@dataclass(frozen=True)
class VersionPolicy:
    """``latest:N`` (the N newest loadable versions) or ``specific:V1,V2``."""

    latest: int = 2
    specific: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """Parses ``latest:N`` / ``latest`` (= latest:1) / ``specific:V1,V2``; ValueError says
        what to write instead."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind == "latest":
            try:
                count = int(rest) if rest.strip() else 1
            except ValueError:
                raise ValueError(f"version policy '{text}': N must be an integer") from None
            if count < 1:
                raise ValueError(f"version policy '{text}': N must be >= 1")
            return cls(latest=count)
        if kind == "specific":
            versions = tuple(v.strip() for v in rest.split(",") if v.strip())
            if not versions or not all(v.isdigit() and int(v) > 0 for v in versions):
                raise ValueError(
                    f"version policy '{text}': list positive version numbers, e.g. specific:1,3"
                )
            return cls(latest=0, specific=versions)
        raise ValueError(f"version policy '{text}': use latest:N or specific:V1,V2")

    @classmethod
    def from_flags(cls, policy: str, pinned: str = "") -> VersionPolicy:
        """The policy of ``--version-policy``, or ``specific:V`` when ``--version V`` is set."""
        if pinned.strip():
            return cls.parse(f"specific:{pinned.strip()}")
        return cls.parse(policy)

    def candidates(self, available: Sequence[str]) -> list[str]:
        """Versions that may be served, newest first."""
        newest_first = sorted(available, key=int, reverse=True)
        if self.specific:
            return [v for v in newest_first if v in self.specific]
        return newest_first

    @property
    def limit(self) -> int:
        """How many versions to keep (every listed one for ``specific``)."""
        return len(self.specific) if self.specific else self.latest

    def __str__(self) -> str:
        return f"specific:{','.join(self.specific)}" if self.specific else f"latest:{self.latest}"
