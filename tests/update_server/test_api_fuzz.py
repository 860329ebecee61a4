"""CI slice of the API fuzzer (``python -m fuzz.api``): fixed seed, bounded budget, both
databases. Every documented operation is called with schema-valid and hostile input, as an
operator, as a signed device and unauthenticated; nothing may hang, answer a non-JSON /api body,
answer a status the OpenAPI document does not list, or fail with a 500 of a cause not already
known from issue 13; and since r13-harden, no 500 at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from fuzz import api

pytestmark = pytest.mark.timeout(180)

BUDGET = {"sqlite": 3000, "postgres": 2000}  # ~10 s + ~15 s on a quiet machine


@pytest.fixture(autouse=True)
def _quiet_server_log() -> Iterator[None]:
    # the 500s are counted by the fuzzer; their tracebacks would flood the test log
    logger = logging.getLogger("update_server")
    before = logger.propagate
    logger.propagate = False
    yield
    logger.propagate = before


_RESULTS: dict[str, api.Result] = {}


def _run(db_url: str) -> api.Result:
    """One fuzz run per database kind, shared by the tests below (same seed, same requests)."""
    kind = "postgres" if db_url.startswith("postgresql") else "sqlite"
    if kind not in _RESULTS:
        _RESULTS[kind] = api.run(db_url, BUDGET[kind], seed_=13, db_name=kind, slow_s=5.0)
    return _RESULTS[kind]


def test_api_fuzz_slice_reaches_every_operation_without_new_500s_or_hangs(db_url: str) -> None:
    res = _run(db_url)
    assert len(res.operations) >= 25  # the OpenAPI document's operations plus the TUF routes
    missed = set(res.operations) - set(res.per_operation)
    assert not missed, missed
    assert res.hangs == [], res.hangs[:5]
    assert res.not_json == [], res.not_json[:5]
    assert dict(res.undocumented) == {}
    new = res.causes()["new"]
    assert not new, new.most_common(5)
    assert res.per_status[200] > 0 and res.per_status[400] > 0 and res.per_status[401] > 0


def test_api_fuzz_slice_answers_no_500_at_all(db_url: str) -> None:
    res = _run(db_url)
    assert res.server_errors == [], res.causes()


def test_classify_splits_known_from_new_causes() -> None:
    assert api.classify("ValueError: embedded null byte @ tuf/files.py:43") == "NUL"
    assert api.classify("UnicodeEncodeError: 'utf-8' codec can't encode character") == "surrogate"
    assert api.classify("OverflowError: Python int too large @ devices/api.py:154") == (
        "integer >= 2^63")
    # an overflow elsewhere than the listed fields is a new finding
    assert api.classify("OverflowError: int too large to convert to float @ rollouts/spec.py:25"
                        ) is None
    assert api.classify("KeyError: 'x' @ devices/api.py:1") is None
