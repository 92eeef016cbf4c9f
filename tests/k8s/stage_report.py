"""What the image tests did, for the summary at the end of the test output.

The image tests take one of two paths: the real one (podman builds and runs the images) or, on
machines without podman, the fallback that replays the serving Dockerfile in a virtual
environment. Both record here which one ran and how long each step took; the k8s conftest prints
it in pytest's terminal summary (shown even with -q), so a CI log says which path ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageReport:
    paths: dict[str, str] = field(default_factory=dict)  # "podman" / "venv replay" -> why
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, note)


REPORT = StageReport()


def record_path(path: str, why: str) -> None:
    REPORT.paths[path] = why


def record_step(step: str, seconds: float, note: str = "") -> None:
    REPORT.steps.append((step, seconds, note))


def summary_lines() -> list[str]:
    if not REPORT.paths:
        return []
    lines = [f"image tests ran the {path} path: {why}" for path, why in REPORT.paths.items()]
    lines += [f"  {s:<55} {t:7.1f} s  {n}".rstrip() for s, t, n in REPORT.steps]
    return lines
