"""edgepkg.delta.apply_delta_to: apply a delta into a writable (a device's slot writer)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from edgepkg.delta import DeltaBaseError, apply_delta_to, make_delta
from edgepkg.errors import DeltaError


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    d = tmp_path_factory.mktemp("pair")
    w = np.random.default_rng(7).standard_normal(300_000).astype(np.float32)
    old, new = d / "old.bin", d / "new.bin"
    old.write_bytes(w.tobytes())
    w[-20_000:] = np.random.default_rng(8).standard_normal(20_000).astype(np.float32)
    new.write_bytes(w.tobytes())
    return old, new, new.read_bytes()


@pytest.mark.parametrize("method", ["tensor", "zstd-window", "bsdiff"])
def test_apply_delta_to_streams_the_exact_target_into_a_writer(tmp_path, pair, method):
    old, new, want = pair
    delta = tmp_path / "d"
    make_delta(old, new, delta, methods=[method])
    out = io.BytesIO()
    with open(delta, "rb") as fh:
        apply_delta_to(old, fh, out, expected_sha256=hashlib.sha256(want).hexdigest(),
                       expected_length=len(want), spool_dir=tmp_path)
    assert out.getvalue() == want


def test_apply_delta_to_refuses_a_wrong_base_before_writing(tmp_path, pair):
    old, new, want = pair
    delta = tmp_path / "d"
    make_delta(old, new, delta, methods=["tensor"])
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"\0" * old.stat().st_size)
    out = io.BytesIO()
    with open(delta, "rb") as fh, pytest.raises(DeltaBaseError):
        apply_delta_to(wrong, fh, out, expected_sha256=hashlib.sha256(want).hexdigest(),
                       expected_length=len(want))
    assert out.getvalue() == b""


def test_apply_delta_to_refuses_a_corrupt_delta(tmp_path, pair):
    old, new, want = pair
    delta = tmp_path / "d"
    make_delta(old, new, delta, methods=["tensor"])
    data = bytearray(delta.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(DeltaError) as exc:
        apply_delta_to(old, io.BytesIO(bytes(data)), io.BytesIO(),
                       expected_sha256=hashlib.sha256(want).hexdigest(),
                       expected_length=len(want))
    assert not isinstance(exc.value, DeltaBaseError)
