"""Fixtures for the edgepkg tests.

The shared fixture modules (models, SoftHSM token, PostgreSQL) are registered by the root
``tests/conftest.py`` and apply here too; this file holds what only the library tests need.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_root() -> Path:
    """The checkout's root (where ``edgepkg/``, ``update_server/`` and ``device_updater/`` are)."""
    return REPO_ROOT
