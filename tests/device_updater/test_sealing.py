"""At-rest sealing of slot content: framing around edgepkg.crypto's chunked AEAD stream."""

from __future__ import annotations

import hashlib
import io

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from device_updater.errors import SealError
from device_updater.sealing import BundleSealer
from edgepkg import crypto
from edgepkg.errors import TamperedError
from edgepkg.keys._software import FileRecipientKey

CHUNK = 4096


def _key() -> FileRecipientKey:
    """A throwaway P-256 device key (test only)."""
    return FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "test device key")


def _seal(sealer: BundleSealer, writes: list[bytes], aad: bytes) -> bytes:
    out = io.BytesIO()
    w = sealer.seal(out, aad)
    for part in writes:
        w.write(part)
    w.close()
    return out.getvalue()


def _unseal(sealer: BundleSealer, blob: bytes, aad: bytes) -> bytes:
    return b"".join(sealer.unseal(io.BytesIO(blob), aad))


def test_stream_sealer_writes_exactly_the_seal_chunks_stream() -> None:
    # Slots sealed before the push-style writer must stay readable, and vice versa.
    key, aad = crypto.new_data_key(), b"binding"
    chunks = [b"a" * CHUNK, b"b" * CHUNK, b"tail"]
    pushed = crypto.StreamSealer(key, aad)
    got = b"".join(pushed.seal(c, last=i == len(chunks) - 1) for i, c in enumerate(chunks))
    assert got == b"".join(crypto.seal_chunks(key, chunks, aad))
    assert b"".join(crypto.open_chunks(key, io.BytesIO(got).read, CHUNK, aad)) == b"".join(chunks)


def test_stream_sealer_refuses_a_chunk_after_the_last() -> None:
    s = crypto.StreamSealer(crypto.new_data_key(), b"")
    s.seal(b"end", last=True)
    with pytest.raises(TamperedError, match="already ended"):
        s.seal(b"more", last=False)


@pytest.mark.parametrize("writes", [
    [],  # an empty model is still one authenticated (empty) last chunk
    [b"x" * CHUNK],  # exactly one chunk: held back, then sealed as the last
    [b"y" * (3 * CHUNK)],  # one large write spanning chunks, ending on a boundary
    [bytes([i % 251]) * 7 for i in range(3000)],  # many small writes crossing boundaries
    [b"z" * (CHUNK - 1), b"", b"zz", b"q" * (2 * CHUNK + 5)],
], ids=["empty", "one-chunk", "boundary", "small-writes", "mixed"])
def test_sealed_slot_content_round_trips(writes: list[bytes]) -> None:
    sealer = BundleSealer(_key(), chunk_size=CHUNK)
    plain = b"".join(writes)
    blob = _seal(sealer, writes, b"summary")
    assert plain[:64] not in blob or not plain  # encrypted, not stored in the clear
    assert hashlib.sha256(_unseal(sealer, blob, b"summary")).digest() == \
        hashlib.sha256(plain).digest()


def test_sealed_content_bound_to_another_summary_does_not_open() -> None:
    sealer = BundleSealer(_key(), chunk_size=CHUNK)
    blob = _seal(sealer, [b"m" * 10_000], b"cam 1.0.0")
    with pytest.raises(SealError, match="does not open"):
        _unseal(sealer, blob, b"cam 2.0.0")


def test_sealed_content_does_not_open_with_another_device_key() -> None:
    blob = _seal(BundleSealer(_key(), chunk_size=CHUNK), [b"m" * 10_000], b"aad")
    with pytest.raises(SealError, match="does not open"):
        _unseal(BundleSealer(_key(), chunk_size=CHUNK), blob, b"aad")


def test_truncated_sealed_content_is_refused() -> None:
    sealer = BundleSealer(_key(), chunk_size=CHUNK)
    blob = _seal(sealer, [b"m" * 10_000], b"aad")
    with pytest.raises(SealError):
        _unseal(sealer, blob[:-100], b"aad")


def test_write_after_close_is_refused() -> None:
    w = BundleSealer(_key(), chunk_size=CHUNK).seal(io.BytesIO(), b"aad")
    w.close()
    with pytest.raises(SealError, match="after close"):
        w.write(b"late")


def test_garbage_is_not_a_sealed_slot() -> None:
    with pytest.raises(SealError, match="no valid header"):
        _unseal(BundleSealer(_key(), chunk_size=CHUNK), b"not a slot file", b"aad")
