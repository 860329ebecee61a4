"""Streaming bundle writer with bounded memory (the reader is in ``_read``).

Pass 1 hashes the payload (the manifest must carry its SHA-256 before anything is encrypted,
because the manifest hash is the chunks' associated data) while worker threads already compress
the first chunks; pass 2 reads fixed-size chunks, and the workers compress each one on its own
(or store it raw when it does not compress, see ``_chunks``) and seal it, in parallel; a writer
thread hashes the ciphertext and writes it in order. Then the header's payload length is filled
in and the signed commitment trailer (header digest, payload length and digest) is appended.
Memory is bounded by the chunks in flight (``_DEPTH``), whatever the file size.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

from edgepkg._atomic import atomic_output
from edgepkg._pipeline import BackgroundWriter, OrderedPool
from edgepkg.bundle._chunks import (
    CHUNKED,
    KIND_RAW,
    ChunkEncoder,
    expected_chunks,
    record_header,
)
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
    RecordSealer,
    new_data_key,
    public_key_id,
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
    ``threads`` is the number of worker threads (-1: one per core, at least two).
    """
    if not recipients:
        raise KeyError_("a bundle needs at least one recipient key")
    by_id = {public_key_id(pub): pub for pub in recipients}
    workers = max(2, os.cpu_count() or 2) if threads < 0 else max(1, threads)
    encoder = ChunkEncoder(level)

    def encode(job: _Job) -> tuple[int, int, bytes, bool]:
        index, chunk, sealer, last = job
        kind, body = encoder.encode(chunk)
        if sealer is None:  # read before the manifest hash existed: the caller seals it
            return index, kind, body, False
        return index, kind, sealer.seal(index, last, kind, body), True

    with open(payload_path, "rb") as src, OrderedPool(encode, workers=workers,
                                                      depth=_DEPTH) as pool:
        chunks = _read_chunks(src, chunk_size, progress)
        index = 0
        # The manifest (its hash is every chunk's associated data) needs the plaintext SHA-256,
        # so nothing can be sealed before a first pass has read the whole file; the workers
        # compress the first chunks meanwhile, as far as the bounded pool allows.
        for chunk in chunks:
            pool.submit((index, chunk, None, False))
            index += 1
            if pool.full():
                break
        sha256, length = _hash_file(payload_path)
        manifest, manifest_bytes, signature, data_key, wrapped = _prepare(
            manifest_fields, signer, by_id, sha256, length, chunk_size
        )
        manifest_hash = hashlib.sha256(manifest_bytes).digest()
        sealer = RecordSealer(data_key, manifest_hash)
        last_index = expected_chunks(length, chunk_size) - 1
        with atomic_output(out_path) as out:
            out.write(encode_header(manifest_bytes, signature, wrapped, payload_length=0))
            with BackgroundWriter(out, depth=_DEPTH, digest=hashlib.sha256()) as writer:

                def emit(result: tuple[int, int, bytes, bool]) -> None:
                    i, kind, data, sealed = result
                    if not sealed:
                        data = sealer.seal(i, i == last_index, kind, data)
                    writer.write(record_header(kind, len(data)))
                    writer.write(data)

                for chunk in chunks:
                    if pool.full():
                        emit(pool.next_result())
                    pool.submit((index, chunk, sealer, index == last_index))
                    index += 1
                for result in pool.results():
                    emit(result)
                if index == 0:  # an empty file: one empty, authenticated last chunk
                    emit((0, KIND_RAW, b"", False))
                if index > last_index + 1 or src.tell() != length:
                    raise BundleError(
                        f"{os.fspath(payload_path)} changed while it was being packaged "
                        "(it must not be written to meanwhile); package it again"
                    )
            assert writer.digest is not None
            _finish(out, signer, manifest_bytes, signature, wrapped, writer.written,
                    writer.digest.hexdigest())
    return manifest


_Job = tuple[int, bytes, "RecordSealer | None", bool]
_DEPTH = 16  # chunks in flight in the pool and again in the writer queue: ~32 MiB at 1 MiB chunks


def _prepare(
    manifest_fields: Mapping[str, Any],
    signer: Signer,
    by_id: Mapping[str, Any],
    sha256: str,
    length: int,
    chunk_size: int,
    compression: str = CHUNKED,
) -> tuple[Manifest, bytes, Signature, bytes, dict[str, bytes]]:
    """Build and sign the manifest, make the data key and wrap it to every recipient.

    (``compression`` other than the default only lets tests build bundles of earlier builds.)
    """
    fields = dict(manifest_fields)
    fields.setdefault("created_at", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    manifest = Manifest(
        **fields,
        plaintext_sha256=sha256,
        plaintext_length=length,
        compression=compression,
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
    signature = Signature(
        alg=signer.algorithm, keyid=signer.key_id, sig=signer.sign(manifest_bytes)
    )
    data_key = new_data_key()
    info = INFO_PREFIX + hashlib.sha256(manifest_bytes).digest()
    wrapped = {kid: wrap_data_key(data_key, pub, info) for kid, pub in by_id.items()}
    return manifest, manifest_bytes, signature, data_key, wrapped


def _finish(
    out: BinaryIO,
    signer: Signer,
    manifest_bytes: bytes,
    signature: Signature,
    wrapped: dict[str, bytes],
    length: int,
    payload_sha256: str,
) -> None:
    """Fill in the payload length and append the signed commitment trailer.

    Durability: ``atomic_output`` then makes one fsync of the whole file and one of its
    directory around the rename. That is enough: the file is invisible under its name until the
    rename, so a crash before it leaves the old file (or none), and the fsync before the rename
    orders every byte ahead of the name change; syncing chunk by chunk would only add waits.
    """
    out.seek(payload_length_offset())
    out.write(struct.pack(">Q", length))
    out.seek(0, os.SEEK_END)
    header_sha256 = hashlib.sha256(
        encode_header(manifest_bytes, signature, wrapped, payload_length=length)
    ).hexdigest()
    signed = commitment_signed_bytes(header_sha256, length, payload_sha256)
    commitment = Commitment(
        header_sha256, length, payload_sha256,
        Signature(alg=signer.algorithm, keyid=signer.key_id, sig=signer.sign(signed)),
    )
    out.write(commitment.to_trailer())


def _hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
            length += len(block)
    return digest.hexdigest(), length


def _read_chunks(fh: BinaryIO, chunk_size: int, progress: Progress | None) -> Iterator[bytes]:
    while chunk := fh.read(chunk_size):
        if progress:
            progress(len(chunk))
        yield chunk
