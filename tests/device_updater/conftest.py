"""Fixtures shared by the device_updater unit tests (the tests mirror the package's modules)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_root() -> Path:
    """The repository root: the working directory for a child interpreter that must import this
    checkout's packages (not an installed copy)."""
    return REPO_ROOT
