"""Streaming bundle writer and reader with bounded memory.

Writer: pass 1 hashes the payload (the manifest must carry its SHA-256 before anything is
encrypted, because the manifest hash is the chunks' associated data); pass 2 compresses with
multi-threaded zstd and seals fixed-size chunks straight into the output file.
Reader: verify the signature first, then unwrap the data key, then authenticate each chunk
before its plaintext is released, decompress with a bounded output, and check length and
SHA-256 against the signed manifest at the end.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from edgepkg._atomic import atomic_output
from edgepkg._pipeline import BackgroundWriter
from edgepkg.bundle._container import (
    Header,
    Signature,
    encode_header,
    payload_length_offset,
    read_header,
)
from edgepkg.bundle._manifest import Manifest
from edgepkg.crypto import (
    AEAD_NAME,
    HPKE_SUITE_NAME,
    TAG_BYTES,
    new_data_key,
    open_chunks,
    public_key_id,
    seal_chunks,
    signing_algorithm,
    unwrap_data_key,
    verify_signature,
    wrap_data_key,
)
from edgepkg.errors import (
    BadSignatureError,
    BundleError,
    KeyError_,
    NotARecipientError,
    TamperedError,
    TooLargeError,
    TruncatedError,
    UnknownSignerError,
)
from edgepkg.keys._types import PublicKey, RecipientKey, Signer

Progress = Callable[[int], None]
READ_BLOCK = 4 << 20
DEFAULT_CHUNK = 1 << 20
ZSTD_LEVEL = 3
MAX_WINDOW = 32 << 20  # bounded decoder memory; the writer uses far smaller windows
_INFO_PREFIX = b"edgepkg/1 data-key\x00"


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
    signature = Signature(alg=signer.algorithm, keyid=signer.key_id, sig=signer.sign(manifest_bytes))
    data_key = new_data_key()
    info = _INFO_PREFIX + manifest_hash
    wrapped = {kid: wrap_data_key(data_key, pub, info) for kid, pub in by_id.items()}
    with atomic_output(out_path) as out:
        out.write(encode_header(manifest_bytes, signature, wrapped, payload_length=0))
        chunks = _compressed_chunks(payload_path, chunk_size, level, threads, progress)
        with BackgroundWriter(out) as writer:
            for sealed in seal_chunks(data_key, chunks, manifest_hash):
                writer.write(sealed)
        out.seek(payload_length_offset())
        out.write(struct.pack(">Q", writer.written))
        out.seek(0, os.SEEK_END)
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
    path: str | os.PathLike[str], chunk_size: int, level: int, threads: int, progress: Progress | None
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


# --- reading ---------------------------------------------------------------------------------


def _info_from_header(header: Header, size: int) -> BundleInfo:
    manifest = Manifest.from_json(header.manifest_bytes)
    if manifest.signer != header.signature.keyid:
        raise TamperedError("the signature block names a different signer than the manifest")
    if list(manifest.recipients) != sorted(header.wrapped_keys):
        raise TamperedError("the recipients section does not match the signed recipient list")
    return BundleInfo(
        manifest=manifest,
        manifest_bytes=header.manifest_bytes,
        signer_key_id=header.signature.keyid,
        signature_algorithm=header.signature.alg,
        recipient_key_ids=sorted(header.wrapped_keys),
        format_version=header.format_version,
        payload_offset=header.payload_offset,
        payload_length=header.payload_length,
        size=size,
        signature_block=header.signature.to_block(),
    )


def read_bundle_info(path: str | os.PathLike[str]) -> BundleInfo:
    """Parse a bundle's header and manifest without any key. Nothing returned is verified."""
    with open(path, "rb") as fh:
        header = read_header(fh)
        return _info_from_header(header, os.fstat(fh.fileno()).st_size)


def _verify_header(header: Header, trusted_keys: Sequence[PublicKey]) -> None:
    trusted = {public_key_id(k): k for k in trusted_keys}
    sig = header.signature
    key = trusted.get(sig.keyid)
    if key is None:
        raise UnknownSignerError(
            f"bundle is signed by key {sig.keyid[:16]}…, which is not a trusted release key"
        )
    if signing_algorithm(key) != sig.alg:
        raise BadSignatureError(
            f"signature algorithm {sig.alg!r} does not match the trusted key's type"
        )
    verify_signature(key, sig.sig, header.manifest_bytes)


def verify_signed_manifest(
    manifest_bytes: bytes, signature_block: bytes, trusted_keys: Sequence[PublicKey]
) -> Manifest:
    """Re-verify a manifest kept apart from its bundle (e.g. beside an installed model).

    Returns the parsed manifest when ``signature_block`` (``BundleInfo.signature_block``) is a
    valid signature over ``manifest_bytes`` by one of ``trusted_keys``; raises otherwise.
    """
    signature = Signature.from_block(signature_block)
    header = Header(
        format_version=0,
        payload_length=0,
        manifest_bytes=manifest_bytes,
        signature=signature,
        wrapped_keys={},
        payload_offset=0,
    )
    _verify_header(header, trusted_keys)
    manifest = Manifest.from_json(manifest_bytes)
    if manifest.signer != signature.keyid:
        raise TamperedError("the signature block names a different signer than the manifest")
    return manifest


def verify_bundle(
    path: str | os.PathLike[str], trusted_keys: Sequence[PublicKey]
) -> BundleInfo:
    """Check the manifest signature against ``trusted_keys``; raise or return the info."""
    with open(path, "rb") as fh:
        header = read_header(fh)
        _verify_header(header, trusted_keys)
        return _info_from_header(header, os.fstat(fh.fileno()).st_size)


class BundleReader:
    """An opened, signature-verified bundle whose plaintext can be streamed once."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys: Sequence[RecipientKey],
        trusted_keys: Sequence[PublicKey],
    ) -> None:
        self._path = Path(path)
        self._keys = list(keys)
        with open(self._path, "rb") as fh:
            header = read_header(fh)
            _verify_header(header, trusted_keys)
            self.info = _info_from_header(header, os.fstat(fh.fileno()).st_size)
        self._header = header
        self.manifest = self.info.manifest

    def _data_key(self, manifest_hash: bytes) -> bytes:
        info = _INFO_PREFIX + manifest_hash
        candidates = [k for k in self._keys if k.key_id in self._header.wrapped_keys]
        if not candidates:
            listed = ", ".join(kid[:16] + "…" for kid in self.info.recipient_key_ids)
            raise NotARecipientError(
                f"none of the given keys is a recipient of this bundle (recipients: {listed})"
            )
        error: Exception | None = None
        for key in candidates:
            try:
                return unwrap_data_key(self._header.wrapped_keys[key.key_id], key, info)
            except NotARecipientError as exc:
                error = exc
        assert error is not None
        raise error

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        """Yield verified plaintext; raises at the end if length or SHA-256 do not match."""
        digest = hashlib.sha256()
        for block in self.blocks(progress):
            digest.update(block)
            yield block
        self.check_digest(digest.hexdigest())

    def check_digest(self, sha256_hex: str) -> None:
        """Compare the SHA-256 of everything :meth:`blocks` yielded with the signed value."""
        if sha256_hex != self.manifest.plaintext_sha256:
            raise TamperedError("payload SHA-256 does not match the signed manifest")

    def blocks(self, progress: Progress | None = None) -> Iterator[bytes]:
        """Yield authenticated, decompressed plaintext, at most the signed length in total.

        Every chunk is authenticated (AEAD) and the total length is checked; the caller must
        hash what it gets and call :meth:`check_digest` (``chunks`` does both) — split so that
        hashing can run in another thread than decryption and decompression.
        """
        manifest = self.manifest
        end = self.info.payload_offset + self.info.payload_length
        if self.info.size < end:
            raise TruncatedError(
                f"bundle is {self.info.size} bytes but its header announces {end}: "
                "the download is incomplete"
            )
        if self.info.size > end:
            raise TamperedError("bundle has trailing data after its payload")
        if self.info.payload_length < TAG_BYTES:
            raise TruncatedError("bundle payload is empty")
        manifest_hash = hashlib.sha256(self.info.manifest_bytes).digest()
        data_key = self._data_key(manifest_hash)
        total = 0
        limit = manifest.plaintext_length
        with open(self._path, "rb") as fh:
            fh.seek(self.info.payload_offset)
            sealed = open_chunks(
                data_key,
                fh.read,
                manifest.chunk_size,
                manifest_hash,
                expected_length=self.info.payload_length,
            )
            dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
            reader = dctx.stream_reader(
                _IterReader(sealed),  # type: ignore[arg-type]  # duck-typed read()
                read_size=manifest.chunk_size,
            )
            while True:
                try:
                    block = reader.read(READ_BLOCK)
                except zstandard.ZstdError as exc:
                    raise BundleError(f"payload does not decompress: {exc}") from None
                if not block:
                    break
                total += len(block)
                if total > limit:
                    raise TooLargeError(
                        f"payload decompresses to more than the signed length {limit}"
                    )
                if progress:
                    progress(len(block))
                yield block
        if total != limit:
            raise TamperedError(f"payload is {total} bytes, the manifest signs {limit}")


class _IterReader:
    """A read()-able view of an iterator of byte strings (for zstd's stream_reader)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return b""
        if size < 0 or size >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


def open_plaintext(
    path: str | os.PathLike[str],
    *,
    keys: Sequence[RecipientKey],
    trusted_keys: Sequence[PublicKey],
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """Stream the verified plaintext of a bundle (see :meth:`BundleReader.chunks`)."""
    return BundleReader(path, keys=keys, trusted_keys=trusted_keys).chunks(progress)


def unpack_bundle(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    keys: Sequence[RecipientKey],
    trusted_keys: Sequence[PublicKey],
    progress: Progress | None = None,
    mode: int = 0o600,
) -> Manifest:
    """Decrypt a bundle to ``out_path`` atomically; on any failure nothing is left behind."""
    reader = BundleReader(path, keys=keys, trusted_keys=trusted_keys)
    with atomic_output(out_path, mode) as out:
        # Decrypt + decompress here, hash + write in the writer thread (both release the GIL).
        with BackgroundWriter(out, digest=hashlib.sha256()) as writer:
            for block in reader.blocks(progress):
                writer.write(block)
        assert writer.digest is not None
        reader.check_digest(writer.digest.hexdigest())  # before the file is renamed into place
    return reader.manifest
