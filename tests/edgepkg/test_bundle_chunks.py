"""The chunked payload: compressible chunks as zstd frames, incompressible ones stored raw, each
sealed with its kind authenticated; sizes bounded before anything is decompressed."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgepkg import errors
from edgepkg.bundle import BundleReader, read_bundle_info, unpack_bundle, write_bundle
from edgepkg.bundle._chunks import (
    KIND_RAW,
    KIND_ZSTD,
    RECORD_HEADER,
    ChunkEncoder,
    decompress_chunk,
    record_header,
)
from edgepkg.bundle._container import encode_header, read_header
from edgepkg.bundle._io import INFO_PREFIX, _finish, _prepare
from edgepkg.crypto import RecordOpener, RecordSealer, seal_chunks, unwrap_data_key
from edgepkg.keys._software import FileRecipientKey, FileSigner

CHUNK = 4096


@pytest.fixture()
def keys() -> tuple[FileSigner, FileRecipientKey]:
    return (FileSigner(ed25519.Ed25519PrivateKey.generate(), "signer"),
            FileRecipientKey(ec.generate_private_key(ec.SECP256R1()), "recipient"))


def _mixed(n_chunks: int, tail: int = 100) -> bytes:
    parts = []
    for i in range(n_chunks):
        parts.append(os.urandom(CHUNK) if i % 3 == 1 else bytes([i % 7]) * CHUNK)
    return b"".join(parts) + os.urandom(tail)


def _package(tmp_path: Path, keys, data: bytes, chunk: int = CHUNK) -> Path:
    signer, recipient = keys
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    out = tmp_path / "model.edgepkg"
    write_bundle(src, out, manifest_fields={"name": "m", "version": "1.0.0", "format": "raw"},
                 signer=signer, recipients=[recipient.public_key()], chunk_size=chunk)
    return out


def _records(bundle: Path) -> list[tuple[int, int, bytes]]:
    """(offset of the kind byte, kind, sealed bytes) of every record in the payload."""
    info = read_bundle_info(bundle)
    data = bundle.read_bytes()
    pos, end = info.payload_offset, info.payload_offset + info.payload_length
    out = []
    while pos < end:
        kind, length = RECORD_HEADER.unpack_from(data, pos)
        out.append((pos, kind, data[pos + RECORD_HEADER.size: pos + RECORD_HEADER.size + length]))
        pos += RECORD_HEADER.size + length
    assert pos == end
    return out


def _unpack(bundle: Path, keys, out: Path) -> bytes:
    signer, recipient = keys
    unpack_bundle(bundle, out, keys=[recipient], trusted_keys=[signer.public_key()])
    return out.read_bytes()


def _resign(bundle: Path, signer: FileSigner, payload: bytes) -> None:
    """Replace the payload and re-sign the commitment with the *real* release key: what only a
    release-key holder could do, so that the checks behind the commitment are what is tested."""
    with open(bundle, "rb") as fh:
        header = read_header(fh)
    with open(bundle, "wb") as out:
        out.write(encode_header(header.manifest_bytes, header.signature, header.wrapped_keys,
                                payload_length=0))
        out.write(payload)
        _finish(out, signer, header.manifest_bytes, header.signature, header.wrapped_keys,
                len(payload), hashlib.sha256(payload).hexdigest())


def _data_key(bundle: Path, recipient: FileRecipientKey) -> tuple[bytes, bytes]:
    info = read_bundle_info(bundle)
    manifest_hash = hashlib.sha256(info.manifest_bytes).digest()
    key = unwrap_data_key(info.wrapped_keys[recipient.key_id], recipient,
                          INFO_PREFIX + manifest_hash)
    return key, manifest_hash


def test_mixed_compressible_and_random_chunks_round_trip(tmp_path, keys):
    data = _mixed(60)  # more chunks than the pool holds: the pre-hash and the main path both run
    bundle = _package(tmp_path, keys, data)
    kinds = [kind for _, kind, _ in _records(bundle)]
    assert len(kinds) == 61
    assert kinds[1] == kinds[4] == kinds[-1] == KIND_RAW and kinds[0] == kinds[2] == KIND_ZSTD
    assert read_bundle_info(bundle).manifest.compression == "zstd-chunked"
    assert _unpack(bundle, keys, tmp_path / "out.bin") == data
    assert bundle.stat().st_size < len(data) * 0.6  # the zero/constant chunks did compress


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 1])
def test_sizes_at_chunk_boundaries_round_trip(tmp_path, keys, size):
    data = os.urandom(size // 2) + bytes(size - size // 2)
    bundle = _package(tmp_path, keys, data)
    assert len(_records(bundle)) == max(1, -(-size // CHUNK))
    assert _unpack(bundle, keys, tmp_path / "out.bin") == data


def test_probe_stores_random_megabyte_raw_and_weights_like_data_compressed():
    encoder = ChunkEncoder(3)
    random_chunk = os.urandom(1 << 20)
    assert encoder.encode(random_chunk) == (KIND_RAW, random_chunk)
    kind, body = encoder.encode(bytes(range(256)) * 4096)
    assert kind == KIND_ZSTD and len(body) < 0.1 * (1 << 20)


def test_flipped_raw_flag_is_tampering_even_with_a_resigned_commitment(tmp_path, keys):
    signer = keys[0]
    data = _mixed(6)
    bundle = _package(tmp_path, keys, data)
    info = read_bundle_info(bundle)
    records = _records(bundle)
    raw = bytearray(bundle.read_bytes())
    offset = records[2][0]  # a zstd chunk in the middle
    raw[offset] ^= KIND_RAW ^ KIND_ZSTD
    bundle.write_bytes(bytes(raw))
    with pytest.raises(errors.TamperedError):  # keyless whole-file commitment catches it first
        _unpack(bundle, keys, tmp_path / "out.bin")
    payload = bytes(raw[info.payload_offset: info.payload_offset + info.payload_length])
    _resign(bundle, signer, payload)
    with pytest.raises(errors.TamperedError, match="flag changed"):
        _unpack(bundle, keys, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_record_opener_refuses_other_kind_index_and_last_flag():
    key, aad = os.urandom(32), b"m" * 32
    sealed = RecordSealer(key, aad).seal(3, False, KIND_ZSTD, b"chunk")
    opener = RecordOpener(key, aad)
    assert opener.open(3, False, KIND_ZSTD, sealed) == b"chunk"
    for index, last, kind in [(3, False, KIND_RAW), (2, False, KIND_ZSTD)]:
        with pytest.raises(errors.TamperedError):
            opener.open(index, last, kind, sealed)
    with pytest.raises(errors.TruncatedError):  # a non-last chunk where the stream ends
        opener.open(3, True, KIND_ZSTD, sealed)


def test_bomb_frame_is_refused_from_its_header_before_decompression():
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(256 << 20))  # 256 MiB in ~8 KiB
    dctx = zstandard.ZstdDecompressor()
    with pytest.raises(errors.TooLargeError, match="declares"):
        decompress_chunk(dctx, 0, bomb, 1 << 20)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(errors.TamperedError, match="does not declare"):
        decompress_chunk(dctx, 0, no_size, 100)
    with pytest.raises(errors.BundleError):  # extra bytes after the frame
        decompress_chunk(dctx, 0, zstandard.ZstdCompressor().compress(b"y" * 10) + b"z", 10)


def test_authentic_bomb_chunk_in_a_signed_bundle_is_refused(tmp_path, keys):
    signer, recipient = keys
    bundle = _package(tmp_path, keys, bytes(3 * CHUNK))
    data_key, manifest_hash = _data_key(bundle, recipient)
    sealer = RecordSealer(data_key, manifest_hash)
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    payload = b""
    for i, body in enumerate([bomb, bytes(CHUNK), bytes(CHUNK)]):
        kind = KIND_ZSTD if i == 0 else KIND_RAW
        sealed = sealer.seal(i, i == 2, kind, body)
        payload += record_header(kind, len(sealed)) + sealed
    _resign(bundle, signer, payload)
    with pytest.raises(errors.TooLargeError):
        _unpack(bundle, keys, tmp_path / "out.bin")


def test_extra_authentic_chunk_beyond_the_signed_length_is_refused(tmp_path, keys):
    signer, recipient = keys
    bundle = _package(tmp_path, keys, bytes(2 * CHUNK))
    data_key, manifest_hash = _data_key(bundle, recipient)
    sealer = RecordSealer(data_key, manifest_hash)
    payload = b""
    for i in range(3):
        sealed = sealer.seal(i, i == 2, KIND_RAW, bytes(CHUNK))
        payload += record_header(KIND_RAW, len(sealed)) + sealed
    _resign(bundle, signer, payload)
    with pytest.raises(errors.TooLargeError, match="more chunks"):
        _unpack(bundle, keys, tmp_path / "out.bin")


def test_bundles_of_earlier_builds_one_zstd_stream_still_unpack(tmp_path, keys):
    signer, recipient = keys
    data = _mixed(5)
    _, manifest_bytes, signature, data_key, wrapped = _prepare(
        {"name": "m", "version": "1.0.0", "format": "raw"}, signer,
        {recipient.key_id: recipient.public_key()}, hashlib.sha256(data).hexdigest(), len(data),
        CHUNK, compression="zstd",
    )
    stream = zstandard.ZstdCompressor(level=3).compress(data)
    pieces = [stream[i: i + CHUNK] for i in range(0, len(stream), CHUNK)]
    payload = b"".join(seal_chunks(data_key, pieces, hashlib.sha256(manifest_bytes).digest()))
    bundle = tmp_path / "old.edgepkg"
    with open(bundle, "wb") as out:
        out.write(encode_header(manifest_bytes, signature, wrapped, payload_length=0))
        out.write(payload)
        _finish(out, signer, manifest_bytes, signature, wrapped, len(payload),
                hashlib.sha256(payload).hexdigest())
    assert _unpack(bundle, keys, tmp_path / "out.bin") == data
    reader = BundleReader(bundle, keys=[recipient], trusted_keys=[signer.public_key()])
    assert b"".join(reader.chunks()) == data


def test_record_header_layout_is_kind_then_sealed_length():
    assert record_header(KIND_RAW, 0x01020304) == b"\x01" + struct.pack(">I", 0x01020304)
