"""Bundle reading: keyless whole-file check, signature verification, streaming decryption.

Order of checks, each before any plaintext is released:

1. parse the header (size limits, exact magic/version/flags) and the commitment trailer: the file
   must end exactly where header + payload + trailer end (a cut is :class:`TruncatedError`,
   extra bytes :class:`TamperedError`), and the trailer checksum must match;
2. with trusted keys: the manifest signature and the commitment signature, both by the same
   trusted release key (the manifest names it);
3. ``check_bundle`` / ``verify_bundle`` then hash the header and the payload and compare with the
   commitment (no key needed for this part);
4. :class:`BundleReader` gets the data key (a recipient key, or a key grant through
   ``data_key_source``), checks the header digest, and streams: the ciphertext is hashed as it is
   read and compared with the commitment when its last byte is read, which is before the last
   chunk is decrypted; every chunk is authenticated (AEAD) before its plaintext is yielded (for
   "zstd-chunked" payloads, worker threads open and decompress chunks in parallel, see
   ``_chunks``); the decompressed length and SHA-256 are checked against the signed manifest at
   the end.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import zstandard

from edgepkg._atomic import atomic_output
from edgepkg._pipeline import BackgroundWriter
from edgepkg.bundle._chunks import CHUNKED, MAX_WINDOW, read_chunked
from edgepkg.bundle._container import Commitment, Header, Signature, read_commitment, read_header
from edgepkg.bundle._io import INFO_PREFIX, READ_BLOCK, BundleInfo, Progress
from edgepkg.bundle._manifest import Manifest
from edgepkg.crypto import (
    TAG_BYTES,
    RecordOpener,
    open_chunks,
    public_key_id,
    signing_algorithm,
    unwrap_data_key,
    verify_signature,
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
from edgepkg.keys._types import PublicKey, RecipientKey

#: Returns the 32-byte data key of the bundle described by its argument (e.g. by opening a key
#: grant, see :mod:`edgepkg.grants`). Called after the signatures were checked.
DataKeySource = Callable[[BundleInfo], bytes]


def _info_from_header(
    header: Header, size: int, commitment: Commitment | None = None
) -> BundleInfo:
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
        wrapped_keys=dict(header.wrapped_keys),
        payload_sha256=commitment.payload_sha256 if commitment else "",
    )


def read_bundle_info(path: str | os.PathLike[str]) -> BundleInfo:
    """Parse a bundle's header and manifest without any key. Nothing returned is verified, and
    the rest of the file is not read (use :func:`check_bundle` for that)."""
    with open(path, "rb") as fh:
        header = read_header(fh)
        return _info_from_header(header, os.fstat(fh.fileno()).st_size)


def _open_checked(fh: BinaryIO) -> tuple[Header, Commitment, BundleInfo]:
    header = read_header(fh)
    commitment, expected = read_commitment(fh, header)
    size = os.fstat(fh.fileno()).st_size
    if size != expected:  # read_commitment saw the end; this guards a file that grew meanwhile
        raise TamperedError(f"bundle is {size} bytes, its trailer says {expected}")
    return header, commitment, _info_from_header(header, size, commitment)


def _check_digests(fh: BinaryIO, header: Header, commitment: Commitment) -> None:
    fh.seek(0)
    if _header_sha256(fh, header) != commitment.header_sha256:
        raise TamperedError("bundle header (manifest, signature or recipients) was modified")
    reader = _CommittedPayload(fh, commitment)
    while reader.read(READ_BLOCK):
        pass


def _header_sha256(fh: BinaryIO, header: Header) -> str:
    fh.seek(0)
    raw = fh.read(header.payload_offset)
    if len(raw) != header.payload_offset:
        raise TruncatedError("bundle ends inside its header")
    return hashlib.sha256(raw).hexdigest()


def check_bundle(path: str | os.PathLike[str]) -> BundleInfo:
    """Check, without any key, that the file is whole and unmodified; return its info.

    Catches truncation and any changed byte (accidents, incomplete copies). It cannot tell a
    file re-made by someone else: :func:`verify_bundle` adds the release-key signatures.
    """
    with open(path, "rb") as fh:
        header, commitment, info = _open_checked(fh)
        _check_digests(fh, header, commitment)
    return info


def _trusted_key(keyid: str, alg: str, trusted_keys: Sequence[PublicKey], what: str) -> PublicKey:
    trusted = {public_key_id(k): k for k in trusted_keys}
    key = trusted.get(keyid)
    if key is None:
        raise UnknownSignerError(
            f"{what} is signed by key {keyid[:16]}…, which is not a trusted release key"
        )
    if signing_algorithm(key) != alg:
        raise BadSignatureError(
            f"{what} signature algorithm {alg!r} does not match the trusted key's type"
        )
    return key


def _verify_header(header: Header, trusted_keys: Sequence[PublicKey]) -> None:
    sig = header.signature
    key = _trusted_key(sig.keyid, sig.alg, trusted_keys, "bundle")
    verify_signature(key, sig.sig, header.manifest_bytes)


def _verify_commitment(
    header: Header, commitment: Commitment, trusted_keys: Sequence[PublicKey]
) -> None:
    sig = commitment.signature
    if sig.keyid != header.signature.keyid:
        raise TamperedError("the commitment is signed by another key than the manifest")
    key = _trusted_key(sig.keyid, sig.alg, trusted_keys, "bundle commitment")
    try:
        verify_signature(key, sig.sig, commitment.signed_bytes())
    except BadSignatureError:
        raise BadSignatureError(
            "the bundle's commitment (header and payload digests) is not signed by its release "
            "key: the file was modified or assembled from parts"
        ) from None


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
    path: str | os.PathLike[str],
    trusted_keys: Sequence[PublicKey],
    *,
    whole_file: bool = True,
) -> BundleInfo:
    """Check both signatures against ``trusted_keys`` and (``whole_file``, the default) every
    byte against the signed commitment; raise or return the info.

    ``whole_file=False`` skips hashing the payload, for a caller that streams it through
    :class:`BundleReader` next (which checks the same digests as it reads).
    """
    with open(path, "rb") as fh:
        header, commitment, info = _open_checked(fh)
        _verify_header(header, trusted_keys)
        _verify_commitment(header, commitment, trusted_keys)
        if whole_file:
            _check_digests(fh, header, commitment)
    return info


class BundleReader:
    """An opened, signature-verified bundle whose plaintext can be streamed once.

    The data key comes from ``keys`` (recipient keys, tried where the bundle lists them) or
    from ``data_key_source`` (e.g. :func:`edgepkg.grants.grant_key_source` for a key grant).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys: Sequence[RecipientKey] = (),
        trusted_keys: Sequence[PublicKey],
        data_key_source: DataKeySource | None = None,
    ) -> None:
        if not keys and data_key_source is None:
            raise KeyError_("no key to decrypt with: give a recipient key or a key grant")
        self._path = Path(path)
        self._keys = list(keys)
        self._source = data_key_source
        with open(self._path, "rb") as fh:
            header, commitment, self.info = _open_checked(fh)
            _verify_header(header, trusted_keys)
            _verify_commitment(header, commitment, trusted_keys)
            self._header_sha256 = _header_sha256(fh, header)
        self._header = header
        self._commitment = commitment
        self.manifest = self.info.manifest

    def _data_key(self, manifest_hash: bytes) -> bytes:
        if self._source is not None:
            data_key = self._source(self.info)
            if len(data_key) != 32:
                raise TamperedError("the data key from the key grant has the wrong length")
            return data_key
        info = INFO_PREFIX + manifest_hash
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

    def _stream_blocks(
        self, payload: _CommittedPayload, data_key: bytes, manifest_hash: bytes
    ) -> Iterator[bytes]:
        sealed = open_chunks(
            data_key,
            payload.read,
            self.manifest.chunk_size,
            manifest_hash,
            expected_length=self.info.payload_length,
        )
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        reader = dctx.stream_reader(
            _IterReader(sealed),  # type: ignore[arg-type]  # duck-typed read()
            read_size=self.manifest.chunk_size,
        )
        while True:
            try:
                block = reader.read(READ_BLOCK)
            except zstandard.ZstdError as exc:
                raise BundleError(f"payload does not decompress: {exc}") from None
            if not block:
                return
            yield block

    def blocks(self, progress: Progress | None = None) -> Iterator[bytes]:
        """Yield authenticated, decompressed plaintext, at most the signed length in total.

        Every chunk is authenticated (AEAD), the ciphertext is checked against the signed
        commitment before its last chunk is decrypted, and the total length is checked; the
        caller must hash what it gets and call :meth:`check_digest` (``chunks`` does both) —
        split so that hashing can run in another thread than decryption and decompression.
        """
        manifest = self.manifest
        if self.info.payload_length < TAG_BYTES:
            raise TruncatedError("bundle payload is empty")
        manifest_hash = hashlib.sha256(self.info.manifest_bytes).digest()
        data_key = self._data_key(manifest_hash)
        # After the key: a wrapped key changed in transit reads as "does not open" (above).
        if self._header_sha256 != self._commitment.header_sha256:
            raise TamperedError("bundle header (manifest, signature or recipients) was modified")
        total = 0
        limit = manifest.plaintext_length
        with open(self._path, "rb") as fh:
            fh.seek(self.info.payload_offset)
            payload = _CommittedPayload(fh, self._commitment)
            if manifest.compression == CHUNKED:
                source = read_chunked(
                    payload.read,
                    RecordOpener(data_key, manifest_hash),
                    manifest.chunk_size,
                    limit,
                )
            else:  # LEGACY_STREAM: one zstd stream, cut into sealed chunks (earlier builds)
                source = self._stream_blocks(payload, data_key, manifest_hash)
            for block in source:
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


class _CommittedPayload:
    """``read(n)`` over exactly the committed payload bytes, hashing them as they pass.

    Returns ``b""`` at the committed end (the trailer that follows is not payload) and raises
    there, before the caller sees that end, if the digest differs: a reader that looks one chunk
    ahead (``open_chunks`` does) thus fails before it decrypts the last chunk.
    """

    def __init__(self, fh: BinaryIO, commitment: Commitment) -> None:
        self._fh = fh
        self._left = commitment.payload_length
        self._expected = commitment.payload_sha256
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self._left == 0:
            return b""
        n = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(n)
        if not data:
            raise TruncatedError("bundle payload ends before its committed length")
        self._left -= len(data)
        self._digest.update(data)
        if self._left == 0 and self._digest.hexdigest() != self._expected:
            raise TamperedError("bundle payload does not match its committed SHA-256")
        return data


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
    keys: Sequence[RecipientKey] = (),
    trusted_keys: Sequence[PublicKey],
    progress: Progress | None = None,
    data_key_source: DataKeySource | None = None,
) -> Iterator[bytes]:
    """Stream the verified plaintext of a bundle (see :meth:`BundleReader.chunks`)."""
    reader = BundleReader(
        path, keys=keys, trusted_keys=trusted_keys, data_key_source=data_key_source
    )
    return reader.chunks(progress)


def unpack_bundle(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    keys: Sequence[RecipientKey] = (),
    trusted_keys: Sequence[PublicKey],
    progress: Progress | None = None,
    mode: int = 0o600,
    data_key_source: DataKeySource | None = None,
) -> Manifest:
    """Decrypt a bundle to ``out_path`` atomically; on any failure nothing is left behind."""
    reader = BundleReader(
        path, keys=keys, trusted_keys=trusted_keys, data_key_source=data_key_source
    )
    with atomic_output(out_path, mode) as out:
        # Decrypt + decompress here, hash + write in the writer thread (both release the GIL).
        with BackgroundWriter(out, digest=hashlib.sha256()) as writer:
            for block in reader.blocks(progress):
                writer.write(block)
        assert writer.digest is not None
        reader.check_digest(writer.digest.hexdigest())  # before the file is renamed into place
    return reader.manifest
