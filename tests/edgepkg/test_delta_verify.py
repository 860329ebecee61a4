"""make_delta's verification while encoding: a delta that does not rebuild the new file is never
written, and the fast paths (direct write, zero-residual copy) produce what devices expect."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from edgepkg.delta import _tensor, apply_delta, make_delta, read_delta_header
from edgepkg.delta._format import DeltaHeader
from edgepkg.delta._io import OldFile
from edgepkg.delta._verify import BackgroundSha256, PipelinedVerifier
from edgepkg.errors import DeltaError


def _weights(seed: int, n: int) -> bytes:
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32).tobytes()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    old = _weights(1, 3 * 256 * 1024)  # 3 MiB: several tensor chunks
    mid = len(old) // 2 + 4 * 1234
    new = old[:mid] + _weights(4, 8192) + old[mid:]
    (tmp_path / "old.bin").write_bytes(old)
    return tmp_path / "old.bin", old, new


def _tensor_body(old_path: Path, old: bytes, new: bytes) -> bytes:
    out = io.BytesIO()
    with open(old_path, "rb") as ofh:
        _tensor.encode(ofh, len(old), io.BytesIO(new), out)
    return out.getvalue()


def _verify(old_path: Path, old_len: int, body: bytes, expected: bytes, new_len: int) -> None:
    v = PipelinedVerifier(_tensor.apply, str(old_path), old_len, new_len)
    for i in range(0, max(len(expected), len(body)), 1 << 16):
        v.expect(expected[i : i + (1 << 16)])
        v.body(body[i : i + (1 << 16)])
    v.finish()


def test_verifier_accepts_the_stream_that_rebuilds_the_new_file(files):
    old_path, old, new = files
    _verify(old_path, len(old), _tensor_body(old_path, old, new), new, len(new))


def test_verifier_refuses_a_stream_that_rebuilds_another_file(files):
    old_path, old, new = files
    body = _tensor_body(old_path, old, new)
    wrong = bytearray(new)
    wrong[len(new) - 5] ^= 1  # one bit in the last chunk
    with pytest.raises(DeltaError, match="does not rebuild"):
        _verify(old_path, len(old), body, bytes(wrong), len(new))


def test_verifier_refuses_truncated_trailing_and_short_streams(files):
    old_path, old, new = files
    body = _tensor_body(old_path, old, new)
    with pytest.raises(DeltaError, match="truncated"):
        _verify(old_path, len(old), body[:-4], new, len(new))  # end marker missing
    with pytest.raises(DeltaError, match="end marker"):
        _verify(old_path, len(old), body + b"x", new, len(new))
    with pytest.raises(DeltaError, match="rebuilds"):
        _verify(old_path, len(old), body, new + b"more", len(new) + 4)


@pytest.mark.timeout(30)
def test_verifier_that_failed_early_never_blocks_the_encoder(files):
    old_path, old, new = files
    before = threading.active_count()
    v = PipelinedVerifier(_tensor.apply, str(old_path), len(old), len(new))
    v.body(b"\xff" * 64)  # garbage: the decoder fails at once
    for _ in range(200):  # far more than the queues hold
        v.expect(b"y" * 4096)
        v.body(b"z" * 4096)
    with pytest.raises(DeltaError):
        v.finish()
    assert threading.active_count() == before


def test_background_sha256_is_the_sha256_of_what_was_fed():
    h = BackgroundSha256()
    parts = [bytes([i]) * (1000 + i) for i in range(100)]
    for p in parts:
        h.update(p)
    assert h.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest()
    assert h.count == sum(map(len, parts))


@pytest.mark.parametrize(
    "methods",
    [None, ["tensor"], ["zstd-window", "tensor"], ["bsdiff", "tensor"], ["bsdiff"]],
)
def test_every_write_and_verify_path_gives_a_delta_devices_apply(tmp_path, files, methods):
    old_path, old, new = files
    (tmp_path / "new.bin").write_bytes(new)
    r = make_delta(old_path, tmp_path / "new.bin", tmp_path / "d", methods=methods)
    h = read_delta_header(tmp_path / "d")
    want = DeltaHeader(r.method, len(old), hashlib.sha256(old).hexdigest(), len(new),
                       hashlib.sha256(new).hexdigest())
    assert h == want
    assert (tmp_path / "d").stat().st_size == r.delta_size == min(r.sizes.values())
    apply_delta(old_path, tmp_path / "d", tmp_path / "out", expected_sha256=want.new_sha256,
                expected_length=len(new))
    assert (tmp_path / "out").read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "new.bin", "old.bin", "out"]


def test_zero_residual_records_copy_aligned_and_zero_literal_ops(tmp_path):
    old = bytes(range(256)) * 4
    (tmp_path / "old.bin").write_bytes(old)
    rec = struct.pack(">IBBH", 30, 0, 2, 2)  # n, XOR, ZERO layout, 2 ops
    ops = struct.pack(">BIq", 0, 10, 0) + struct.pack(">BIq", 1, 20, 300)
    out = io.BytesIO()

    class Sink:
        count, limit = 0, 30

        def write(self, data: bytes) -> None:
            out.write(data)
            Sink.count += len(data)

    with open(tmp_path / "old.bin", "rb") as fh:
        _tensor.apply(OldFile(fh, len(old)), io.BytesIO(rec + ops + b"\0\0\0\0"), Sink())
    assert out.getvalue() == bytes(10) + old[300:320]
