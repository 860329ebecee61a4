"""CI slice of the parser fuzzer (``python -m fuzz.parsers``): fixed seed, bounded budget.

Every target (bundle header, manifest, three delta decoders, each model format) gets ~100 mutated
inputs; only ``edgepkg.errors.Error`` subclasses may escape, and no case may run past 5 s (the
long mode uses 2 s; CI machines are shared and loaded, and the time bombs this guards against
took 4 s to minutes, each also pinned by its own test in test_parser_bounds.py).
"""

from __future__ import annotations

import pytest

from fuzz import parsers

pytestmark = pytest.mark.timeout(120)


def test_parser_fuzz_slice_has_no_untyped_exceptions_and_no_hangs():
    res = parsers.run(1500, seed=13, case_seconds=5.0)
    assert res.cases == 1500
    assert len(res.per_target) >= 14  # every parser was exercised
    assert res.untyped == [], res.untyped[:5]
    assert res.hangs == [], res.hangs[:5]


def test_mutations_replay_from_the_seed():
    import random

    seed = b"0123456789abcdef" * 4
    a = [parsers.mutate(random.Random(5), seed, [seed]) for _ in range(3)]
    b = [parsers.mutate(random.Random(5), seed, [seed]) for _ in range(3)]
    assert a == b
