"""Shared test helpers.

``require(ok, what)``: a test that needs a real service (SoftHSM2, PostgreSQL, Chromium) skips on a
developer's machine where it is absent, but under ``CI=true`` absence is a failure, not a skip.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(ok: bool, what: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available", pytrace=False)
    pytest.skip(f"{what} is not available")
