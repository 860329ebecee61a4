"""Streaming bundle writer with bounded memory (the reader is in ``_read``).

Pass 1 hashes the payload (the manifest must carry its SHA-256 before anything is encrypted,
because the manifest hash is the chunks' associated data); pass 2 compresses with multi-threaded
zstd and seals fixed-size chunks straight into the output file, hashing the ciphertext in the
writer thread; then the header's payload length is filled in and the signed commitment trailer
(header digest, payload length and digest) is appended.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import zstandard

from edgepkg._atomic import atomic_output
from edgepkg._pipeline import BackgroundWriter
from edgepkg.bundle._container import (
    Commitment,
    Signature,
    commitment_signed_bytes,
    encode_header,
    payload_length_offset,
)
from edgepkg.bundle._manifest import Manifest
from edgepkg.crypto import (
    AEAD_NAME,
    HPKE_SUITE_NAME,
    new_data_key,
    public_key_id,
    seal_chunks,
    wrap_data_key,
)
from edgepkg.errors import BundleError, KeyError_
from edgepkg.keys._types import Signer

Progress = Callable[[int], None]
READ_BLOCK = 4 << 20
DEFAULT_CHUNK = 1 << 20
ZSTD_LEVEL = 3
INFO_PREFIX = b"edgepkg/1 data-key\x00"  # HPKE info = prefix || SHA-256(manifest)


@dataclass(frozen=True)
class BundleInfo:
    """What can be read from a bundle without any key (nothing here is trusted yet)."""

    manifest: Manifest
    manifest_bytes: bytes
    signer_key_id: str
    signature_algorithm: str
    recipient_key_ids: list[str]
    format_version: int
    payload_offset: int
    payload_length: int
    size: int
    signature_block: bytes = b""  # the raw signature section, kept so a manifest can be re-verified
    # HPKE-wrapped data key per recipient key id (what a key service re-wraps into a grant).
    wrapped_keys: Mapping[str, bytes] = field(default_factory=dict)
    payload_sha256: str = ""  # SHA-256 of the ciphertext, from the commitment ("" if not read)


# --- writing ---------------------------------------------------------------------------------


def write_bundle(
    payload_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    manifest_fields: Mapping[str, Any],
    signer: Signer,
    recipients: Sequence[Any],
    progress: Progress | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    level: int = ZSTD_LEVEL,
    threads: int = -1,
) -> Manifest:
    """Compress, encrypt and sign ``payload_path`` into ``out_path`` (written atomically).

    ``manifest_fields`` gives name, version, format and optionally requirements, details, policy,
    delta, created_at. ``recipients`` are P-256 public keys; the data key is wrapped to each.
    """
    if not recipients:
        raise KeyError_("a bundle needs at least one recipient key")
    by_id = {public_key_id(pub): pub for pub in recipients}
    sha256, length = _hash_file(payload_path)
    fields = dict(manifest_fields)
    fields.setdefault("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    manifest = Manifest(
        **fields,
        plaintext_sha256=sha256,
        plaintext_length=length,
        compression="zstd",
        chunk_size=chunk_size,
        encryption=f"{HPKE_SUITE_NAME}+{AEAD_NAME}",
        recipients=tuple(sorted(by_id)),
        signer=signer.key_id,
    )
    try:
        manifest.validate()
    except BundleError as exc:
        raise KeyError_(f"cannot build a valid manifest: {exc}") from None
    manifest_bytes = manifest.to_json()
    manifest_hash = hashlib.sha256(manifest_bytes).digest()
    signature = Signature(
        alg=signer.algorithm, keyid=signer.key_id, sig=signer.sign(manifest_bytes)
    )
    data_key = new_data_key()
    info = INFO_PREFIX + manifest_hash
    wrapped = {kid: wrap_data_key(data_key, pub, info) for kid, pub in by_id.items()}
    with atomic_output(out_path) as out:
        out.write(encode_header(manifest_bytes, signature, wrapped, payload_length=0))
        chunks = _compressed_chunks(payload_path, chunk_size, level, threads, progress)
        with BackgroundWriter(out, digest=hashlib.sha256()) as writer:
            for sealed in seal_chunks(data_key, chunks, manifest_hash):
                writer.write(sealed)
        assert writer.digest is not None
        length = writer.written
        out.seek(payload_length_offset())
        out.write(struct.pack(">Q", length))
        out.seek(0, os.SEEK_END)
        header_sha256 = hashlib.sha256(
            encode_header(manifest_bytes, signature, wrapped, payload_length=length)
        ).hexdigest()
        payload_sha256 = writer.digest.hexdigest()
        signed = commitment_signed_bytes(header_sha256, length, payload_sha256)
        commitment = Commitment(
            header_sha256, length, payload_sha256,
            Signature(alg=signer.algorithm, keyid=signer.key_id, sig=signer.sign(signed)),
        )
        out.write(commitment.to_trailer())
    return manifest


def _hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
            length += len(block)
    return digest.hexdigest(), length


class _CountingReader:
    def __init__(self, fh: BinaryIO, progress: Progress | None) -> None:
        self._fh = fh
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if self._progress and data:
            self._progress(len(data))
        return data


def _compressed_chunks(
    path: str | os.PathLike[str],
    chunk_size: int,
    level: int,
    threads: int,
    progress: Progress | None,
) -> Iterator[bytes]:
    # Small reads keep the multi-threaded compressor's input buffering (and so RSS) low.
    cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=False)
    buf = bytearray()
    with open(path, "rb") as fh:
        for piece in cctx.read_to_iter(
            _CountingReader(fh, progress),  # type: ignore[arg-type]  # duck-typed read()
            read_size=1 << 20,
            write_size=chunk_size,
        ):
            buf += piece
            while len(buf) >= chunk_size:
                yield bytes(buf[:chunk_size])
                del buf[:chunk_size]
    if buf:
        yield bytes(buf)
