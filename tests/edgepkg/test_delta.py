"""edgepkg.delta: smallest binary delta per pair, bounded streaming apply, hostile deltas
refused."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from edgepkg.delta import (
    METHODS,
    ChunkStream,
    apply_delta,
    delta_method_bounds,
    make_delta,
    read_delta_header,
)
from edgepkg.delta._format import HEADER_SIZE
from edgepkg.errors import DeltaError, TooLargeError, UsageError

N_FLOATS = 128 * 1024  # 512 KiB of float32 weights


def _weights(seed: int, n: int = N_FLOATS) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(np.float32)


def _int8_pair() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(7)
    old, new = [], []
    for i in range(16):
        w = rng.standard_normal(65536) * 0.05
        q = np.round(w / (np.abs(w).max() / 127)).astype(np.int8)
        old.append(q.tobytes())
        if i in (3, 11):  # two tensors re-quantized after a small update
            w2 = w * (1 + rng.standard_normal(w.size) * 1e-2)
            q = np.round(w2 / (np.abs(w2).max() / 127)).astype(np.int8)
        new.append(q.tobytes())
    return b"".join(old), b"".join(new)


def _scenario(name: str) -> tuple[bytes, bytes]:
    w = _weights(1)
    old = w.tobytes()
    if name == "head_retrain":
        new = w.copy()
        k = int(w.size * 0.95)
        new[k:] = _weights(2, w.size - k)
        return old, new.tobytes()
    if name == "fine_tune":
        rng = np.random.default_rng(3)
        return old, (w * (1 + rng.standard_normal(w.size) * 1e-3)).astype(np.float32).tobytes()
    if name == "insertion":
        mid = len(old) // 2 + 4 * 1234
        return old, old[:mid] + _weights(4, w.size // 100).tobytes() + old[mid:]
    if name == "int8_requant":
        return _int8_pair()
    if name == "unrelated":
        return old, _weights(5).tobytes()
    if name == "shuffled_blocks":  # small moves everywhere: nothing stays aligned
        blocks = [old[i : i + 1024] for i in range(0, len(old), 1024)]
        perm = np.random.default_rng(6).permutation(len(blocks))
        return old, b"".join(blocks[j] for j in perm)
    raise AssertionError(name)


SCENARIOS = ["head_retrain", "fine_tune", "insertion", "int8_requant", "unrelated"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pair(tmp_path: Path):
    def write(old: bytes, new: bytes) -> tuple[Path, Path]:
        (tmp_path / "old.bin").write_bytes(old)
        (tmp_path / "new.bin").write_bytes(new)
        return tmp_path / "old.bin", tmp_path / "new.bin"

    return write


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_round_trip_per_method_and_scenario(tmp_path, pair, method, scenario):
    old_b, new_b = _scenario(scenario)
    old, new = pair(old_b, new_b)
    result = make_delta(old, new, tmp_path / "d", methods=[method])
    assert result.method == method
    assert read_delta_header(tmp_path / "d").method == method
    apply_delta(
        old,
        tmp_path / "d",
        tmp_path / "out",
        expected_sha256=_sha(new_b),
        expected_length=len(new_b),
    )
    assert (tmp_path / "out").read_bytes() == new_b


def test_chooser_picks_tensor_on_fine_tune_and_beats_generic_methods(tmp_path, pair):
    old, new = pair(*_scenario("fine_tune"))
    result = make_delta(old, new, tmp_path / "d", methods=list(METHODS))
    assert result.method == "tensor"
    assert set(result.sizes) == set(METHODS)
    assert result.delta_size < 0.6 * result.new_size
    assert result.delta_size < 0.7 * min(result.sizes["bsdiff"], result.sizes["zstd-window"])


@pytest.mark.parametrize("scenario", ["fine_tune", "int8_requant", "unrelated"])
def test_auto_skips_generic_methods_when_nothing_moved(tmp_path, pair, scenario):
    old, new = pair(*_scenario(scenario))
    result = make_delta(old, new, tmp_path / "d")
    assert result.method == "tensor"
    assert set(result.sizes) == {"tensor"}


def test_chooser_picks_a_generic_method_when_content_moved_in_small_pieces(tmp_path, pair):
    old, new = pair(*_scenario("shuffled_blocks"))
    result = make_delta(old, new, tmp_path / "d")
    assert result.method in ("bsdiff", "zstd-window")
    assert result.sizes["tensor"] > 10 * result.delta_size


def test_insertion_realigns_after_the_inserted_bytes(tmp_path, pair):
    old_b, new_b = _scenario("insertion")
    old, new = pair(old_b, new_b)
    result = make_delta(old, new, tmp_path / "d", methods=["tensor"])
    # only the inserted 1 % (random floats, ~86 % after byte planes) and the 4 KiB judged
    # around each edge should cost anything; without re-alignment half the file would differ
    assert result.delta_size < 0.02 * len(new_b)


def test_head_retrain_costs_about_the_changed_part(tmp_path, pair):
    old, new = pair(*_scenario("head_retrain"))
    result = make_delta(old, new, tmp_path / "d")
    assert result.delta_size < 0.045 * result.new_size


def test_bsdiff_above_its_memory_bound_is_refused(tmp_path, pair):
    old, new = pair(*_scenario("head_retrain"))
    with pytest.raises(UsageError):
        make_delta(old, new, tmp_path / "d", methods=["bsdiff"], max_bsdiff_bytes=1000)
    auto = make_delta(old, new, tmp_path / "d", max_bsdiff_bytes=1000)
    assert "bsdiff" not in auto.sizes


def test_unknown_method_is_a_usage_error(tmp_path, pair):
    old, new = pair(*_scenario("head_retrain"))
    with pytest.raises(UsageError):
        make_delta(old, new, tmp_path / "d", methods=["xdelta"])


@pytest.fixture
def made(tmp_path, pair):
    """A head-retrain delta per method: (old path, new bytes, {method: delta path})."""
    old_b, new_b = _scenario("head_retrain")
    old, _ = pair(old_b, new_b)
    deltas = {}
    for m in METHODS:
        make_delta(old, tmp_path / "new.bin", tmp_path / f"{m}.delta", methods=[m])
        deltas[m] = tmp_path / f"{m}.delta"
    return old, new_b, deltas


def _assert_nothing_left(directory: Path, name: str) -> None:
    assert not (directory / name).exists()
    assert not [p for p in os.listdir(directory) if p.startswith(f".{name}.")]


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_wrong_base_and_leaves_no_output(tmp_path, made, method):
    old, new_b, deltas = made
    other = tmp_path / "other.bin"
    data = bytearray(old.read_bytes())
    data[100] ^= 1
    other.write_bytes(bytes(data))
    with pytest.raises(DeltaError, match="wrong base"):
        apply_delta(
            other,
            deltas[method],
            tmp_path / "out",
            expected_sha256=_sha(new_b),
            expected_length=len(new_b),
        )
    _assert_nothing_left(tmp_path, "out")


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_corrupt_delta_and_leaves_no_output(tmp_path, made, method):
    old, new_b, deltas = made
    data = bytearray(deltas[method].read_bytes())
    body = len(data) - HEADER_SIZE
    for frac in (0.1, 0.5, 0.9):  # several places: headers, frames, control blocks
        bad = bytearray(data)
        bad[HEADER_SIZE + int(body * frac)] ^= 0x5A
        (tmp_path / "bad.delta").write_bytes(bytes(bad))
        with pytest.raises((DeltaError, TooLargeError)):
            apply_delta(
                old,
                tmp_path / "bad.delta",
                tmp_path / "out",
                expected_sha256=_sha(new_b),
                expected_length=len(new_b),
            )
        _assert_nothing_left(tmp_path, "out")


@pytest.mark.parametrize("method", METHODS)
def test_apply_refuses_truncated_delta_and_leaves_no_output(tmp_path, made, method):
    old, new_b, deltas = made
    data = deltas[method].read_bytes()
    for cut in (10, HEADER_SIZE, HEADER_SIZE + 7, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.delta").write_bytes(data[:cut])
        with pytest.raises(DeltaError):
            apply_delta(
                old,
                tmp_path / "cut.delta",
                tmp_path / "out",
                expected_sha256=_sha(new_b),
                expected_length=len(new_b),
            )
        _assert_nothing_left(tmp_path, "out")


def test_apply_refuses_delta_for_another_target(tmp_path, made):
    old, new_b, deltas = made
    with pytest.raises(DeltaError, match="different file"):
        apply_delta(
            old,
            deltas["tensor"],
            tmp_path / "out",
            expected_sha256="00" * 32,
            expected_length=len(new_b),
        )
    with pytest.raises(DeltaError, match="different file"):
        apply_delta(
            old,
            deltas["tensor"],
            tmp_path / "out",
            expected_sha256=_sha(new_b),
            expected_length=len(new_b) - 1,
        )


def test_apply_refuses_bad_magic(tmp_path, made):
    old, new_b, deltas = made
    (tmp_path / "x.delta").write_bytes(b"BSDIFF40" + deltas["bsdiff"].read_bytes()[8:])
    with pytest.raises(DeltaError, match="magic"):
        apply_delta(
            old,
            tmp_path / "x.delta",
            tmp_path / "out",
            expected_sha256=_sha(new_b),
            expected_length=len(new_b),
        )


@pytest.mark.parametrize("method", METHODS)
def test_apply_stops_a_delta_that_writes_more_than_expected(tmp_path, made, method):
    """A (signed but hostile) delta whose header claims a short target: output stops there."""
    old, new_b, deltas = made
    short = len(new_b) // 2
    claimed = _sha(new_b[:short])
    data = bytearray(deltas[method].read_bytes())
    # header layout: >8sHBBIQ32sQ32s -> new_len at 56, new_sha at 64
    struct.pack_into(">Q32s", data, 56, short, bytes.fromhex(claimed))
    (tmp_path / "bomb.delta").write_bytes(bytes(data))
    with pytest.raises((TooLargeError, DeltaError)):
        apply_delta(
            old,
            tmp_path / "bomb.delta",
            tmp_path / "out",
            expected_sha256=claimed,
            expected_length=short,
        )
    _assert_nothing_left(tmp_path, "out")


def test_apply_bomb_raises_too_large_before_writing_past_the_limit(tmp_path, made):
    old, _new_b, deltas = made
    short = 1000
    data = bytearray(deltas["tensor"].read_bytes())
    struct.pack_into(">Q32s", data, 56, short, hashlib.sha256(b"x").digest())
    (tmp_path / "bomb.delta").write_bytes(bytes(data))
    with pytest.raises(TooLargeError):
        apply_delta(
            old,
            tmp_path / "bomb.delta",
            tmp_path / "out",
            expected_sha256=hashlib.sha256(b"x").hexdigest(),
            expected_length=short,
        )


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like a decrypting bundle reader."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf) -> int:  # type: ignore[override]
        chunk = self._b.read(min(len(buf), 4096))
        buf[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("method", METHODS)
def test_apply_from_a_non_seekable_stream(tmp_path, made, method):
    old, new_b, deltas = made
    stream = io.BufferedReader(_Pipe(deltas[method].read_bytes()))
    apply_delta(
        old, stream, tmp_path / "out", expected_sha256=_sha(new_b), expected_length=len(new_b)
    )
    assert (tmp_path / "out").read_bytes() == new_b


def test_apply_from_an_iterator_of_chunks_like_a_bundle_plaintext(tmp_path, made):
    old, new_b, deltas = made
    data = deltas["tensor"].read_bytes()
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
    apply_delta(
        old,
        ChunkStream(chunks),
        tmp_path / "out",
        expected_sha256=_sha(new_b),
        expected_length=len(new_b),
    )
    assert (tmp_path / "out").read_bytes() == new_b


def test_bsdiff_control_block_that_makes_no_progress_is_refused(tmp_path, pair):
    import bz2

    from edgepkg.delta._format import DeltaHeader

    old_b, new_b = b"a" * 100, b"b" * 100
    old, _ = pair(old_b, new_b)
    ctrl = bz2.compress(bytes(24 * 5000))  # 5000 empty (0, 0, 0) entries
    body_blocks = ctrl + bz2.compress(b"") + bz2.compress(b"")
    body = struct.pack("<8sqqq", b"BSDIFF40", len(ctrl), len(bz2.compress(b"")), 100)
    header = DeltaHeader("bsdiff", 100, _sha(old_b), 100, _sha(new_b)).pack()
    (tmp_path / "loop.delta").write_bytes(header + body + body_blocks)
    with pytest.raises(DeltaError, match="no progress"):
        apply_delta(
            old,
            tmp_path / "loop.delta",
            tmp_path / "out",
            expected_sha256=_sha(new_b),
            expected_length=100,
        )


def test_apply_refuses_oversized_delta_stream(tmp_path, made):
    old, new_b, deltas = made
    with pytest.raises(TooLargeError):
        apply_delta(
            old,
            deltas["bsdiff"],
            tmp_path / "out",
            expected_sha256=_sha(new_b),
            expected_length=len(new_b),
            max_delta_bytes=200,
        )


def test_make_delta_replaces_output_atomically_and_reports_sizes(tmp_path, pair):
    old, new = pair(*_scenario("head_retrain"))
    (tmp_path / "d").write_bytes(b"previous")
    result = make_delta(old, new, tmp_path / "d", methods=["tensor", "zstd-window"])
    assert (tmp_path / "d").stat().st_size == result.delta_size == min(result.sizes.values())
    assert result.new_sha256 == _sha(new.read_bytes())
    assert 0 < result.ratio < 0.05
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_every_method_documents_its_apply_memory_bound():
    assert set(delta_method_bounds()) == set(METHODS)


def test_empty_and_tiny_files_round_trip(tmp_path, pair):
    for old_b, new_b in [(b"", b"abc"), (b"abc", b""), (b"x" * 5, b"x" * 7), (b"", b"")]:
        old, new = pair(old_b, new_b)
        for m in METHODS:
            make_delta(old, new, tmp_path / "d", methods=[m])
            apply_delta(
                old,
                tmp_path / "d",
                tmp_path / "out",
                expected_sha256=_sha(new_b),
                expected_length=len(new_b),
            )
            assert (tmp_path / "out").read_bytes() == new_b
