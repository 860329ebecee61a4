"""Binary layout of a bundle file (format version 2). Pure parsing of hostile bytes.

::

    offset  size  field
    0       8     magic  b"\\x89EPKG\\r\\n\\x1a"
    8       2     format version (big-endian, = 1)
    10      2     flags (must be 0)
    12      8     payload length (ciphertext bytes after the recipients section)
    20      4     manifest length M (<= 1 MiB)
    24      M     manifest (canonical JSON, see _manifest.Manifest)
    .       2     signature block length S (<= 4 KiB)
    .       S     signature block (JSON: {"alg", "keyid", "sig" (base64)})
    .       2     recipient count R (1..1024)
    .       R x   [32 bytes key id][2 bytes length L][L bytes HPKE enc||ct]
    .       P     payload (P = payload length): sealed records, one per plaintext chunk, each a
                  zstd frame or raw with its kind authenticated (manifest compression
                  "zstd-chunked", see _chunks); bundles of earlier builds ("zstd") hold one
                  zstd stream cut into AES-256-GCM STREAM chunks (crypto.seal_chunks)
    .       2     commitment block length C (<= 1 KiB)
    .       C     commitment block (JSON, see :class:`Commitment`), signed by the manifest signer
    .       32    trailer checksum: SHA-256(TRAILER_DOMAIN || C as 2 bytes || commitment block)

The header fields outside the manifest are not signed by the manifest signature, but each is
checked: magic and version are exact, flags must be zero, the key ids and wrapped keys are bound
to the manifest (the manifest lists the recipients, the HPKE ``info`` carries the manifest hash).

Format 2 adds the **commitment**: written after the payload (its digest is only known then, and
the manifest cannot carry it because the manifest hash is the chunks' associated data), it holds
the SHA-256 of every header byte (offset 0 up to the payload), the payload length and the
payload's SHA-256, signed by the release key that signed the manifest. The trailing checksum
covers the commitment block itself, so *without any key* a reader can tell that a file is whole
and unmodified (any cut or flipped byte changes a digest); *with* the trusted key, that it is
byte for byte the file the release key produced. Format 1 files (no commitment) are refused:
none was ever shipped, and accepting them would let anyone strip the commitment off a file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import BinaryIO

from edgepkg._json import loads_bounded
from edgepkg.errors import (
    BundleError,
    NotABundleError,
    TamperedError,
    TooLargeError,
    TruncatedError,
    UnsupportedVersionError,
)

MAGIC = b"\x89EPKG\r\n\x1a"
FORMAT_VERSION = 2
_FIXED = struct.Struct(">8sHHQI")
MAX_MANIFEST = 1 << 20
MAX_SIGNATURE_BLOCK = 4096
MAX_RECIPIENTS = 1024
WRAPPED_KEY_BYTES = 65 + 32 + 16
MAX_COMMITMENT_BLOCK = 1024
CHECKSUM_BYTES = 32
# Domain separation: a commitment signature can never be taken for a manifest signature (or the
# reverse), and the trailer checksum is not a hash of anything else in the file.
COMMITMENT_DOMAIN = b"edgepkg/2 bundle commitment\x00"
TRAILER_DOMAIN = b"edgepkg/2 trailer\x00"
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Signature:
    alg: str
    keyid: str
    sig: bytes

    def to_block(self) -> bytes:
        return json.dumps(
            {"alg": self.alg, "keyid": self.keyid, "sig": base64.b64encode(self.sig).decode()},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_block(cls, raw: bytes) -> Signature:
        data = loads_bounded(
            raw, what="signature block", error=TamperedError, max_bytes=MAX_SIGNATURE_BLOCK
        )
        try:
            sig = base64.b64decode(data["sig"], validate=True)
            alg, keyid = data["alg"], data["keyid"]
        except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
            raise TamperedError("signature block is malformed") from None
        if not isinstance(alg, str) or not isinstance(keyid, str) or len(keyid) != 64:
            raise TamperedError("signature block is malformed")
        return cls(alg=alg, keyid=keyid, sig=sig)


@dataclass(frozen=True)
class Header:
    """Everything before the payload, parsed but not yet trusted."""

    format_version: int
    payload_length: int
    manifest_bytes: bytes
    signature: Signature
    wrapped_keys: dict[str, bytes]  # recipient key id (hex) -> HPKE enc||ct
    payload_offset: int


def encode_header(
    manifest_bytes: bytes, signature: Signature, wrapped: dict[str, bytes], payload_length: int
) -> bytes:
    sig_block = signature.to_block()
    parts = [
        _FIXED.pack(MAGIC, FORMAT_VERSION, 0, payload_length, len(manifest_bytes)),
        manifest_bytes,
        struct.pack(">H", len(sig_block)),
        sig_block,
        struct.pack(">H", len(wrapped)),
    ]
    for keyid, blob in sorted(wrapped.items()):
        parts += [bytes.fromhex(keyid), struct.pack(">H", len(blob)), blob]
    return b"".join(parts)


def payload_length_offset() -> int:
    """Where the 8-byte payload length sits, for writers that fill it in afterwards."""
    return 12


def read_header(fh: BinaryIO) -> Header:
    """Parse the header from the current position; leaves ``fh`` at the start of the payload."""
    fixed = fh.read(_FIXED.size)
    if len(fixed) < 8 or fixed[:8] != MAGIC:
        raise NotABundleError("not an edgepkg bundle (bad magic bytes)")
    if len(fixed) < _FIXED.size:
        raise TruncatedError("bundle ends inside its fixed header")
    _, version, flags, payload_length, manifest_len = _FIXED.unpack(fixed)
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"bundle format version {version} is not supported (this build reads {FORMAT_VERSION});"
            + (" repackage it with this edgepkg (format 1 carries no whole-file commitment)"
               if version < FORMAT_VERSION else " upgrade edgepkg")
        )
    if flags != 0:
        raise UnsupportedVersionError(f"bundle uses unknown flags 0x{flags:04x}")
    if manifest_len > MAX_MANIFEST:
        raise TooLargeError(f"manifest length {manifest_len} exceeds {MAX_MANIFEST} bytes")
    manifest_bytes = _read(fh, manifest_len, "manifest")
    (sig_len,) = struct.unpack(">H", _read(fh, 2, "signature length"))
    if sig_len > MAX_SIGNATURE_BLOCK:
        raise TooLargeError(f"signature block of {sig_len} bytes exceeds {MAX_SIGNATURE_BLOCK}")
    signature = Signature.from_block(_read(fh, sig_len, "signature"))
    (count,) = struct.unpack(">H", _read(fh, 2, "recipient count"))
    if not 1 <= count <= MAX_RECIPIENTS:
        raise BundleError(f"bundle declares {count} recipients (allowed 1..{MAX_RECIPIENTS})")
    wrapped: dict[str, bytes] = {}
    offset = _FIXED.size + manifest_len + 2 + sig_len + 2
    for _ in range(count):
        keyid = _read(fh, 32, "recipient key id").hex()
        (length,) = struct.unpack(">H", _read(fh, 2, "wrapped key length"))
        if length != WRAPPED_KEY_BYTES:
            raise TamperedError(
                f"wrapped data key has length {length}, expected {WRAPPED_KEY_BYTES}"
            )
        if keyid in wrapped:
            raise TamperedError("a recipient appears twice")
        wrapped[keyid] = _read(fh, length, "wrapped key")
        offset += 32 + 2 + length
    return Header(
        format_version=version,
        payload_length=payload_length,
        manifest_bytes=manifest_bytes,
        signature=signature,
        wrapped_keys=wrapped,
        payload_offset=offset,
    )


def _read(fh: BinaryIO, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TruncatedError(f"bundle ends inside its {what}")
    return data


# --- the commitment trailer (format 2) ----------------------------------------------------------


@dataclass(frozen=True)
class Commitment:
    """What the release key commits to about the whole file, beyond the manifest.

    ``signed_bytes()`` is what the signature covers (domain-separated canonical JSON).
    """

    header_sha256: str  # SHA-256 of bytes [0, payload offset): fixed header .. recipients
    payload_length: int
    payload_sha256: str
    signature: Signature

    def body(self) -> dict[str, object]:
        return {
            "format_version": FORMAT_VERSION,
            "header_sha256": self.header_sha256,
            "payload_length": self.payload_length,
            "payload_sha256": self.payload_sha256,
        }

    def signed_bytes(self) -> bytes:
        return COMMITMENT_DOMAIN + _canonical(self.body())

    def to_trailer(self) -> bytes:
        """The bytes that follow the payload: length, block, checksum."""
        sig = self.signature
        block = _canonical(
            {**self.body(), "alg": sig.alg, "keyid": sig.keyid,
             "sig": base64.b64encode(sig.sig).decode()}
        )
        if len(block) > MAX_COMMITMENT_BLOCK:
            raise BundleError(f"commitment block of {len(block)} bytes exceeds the limit")
        prefix = struct.pack(">H", len(block))
        return prefix + block + hashlib.sha256(TRAILER_DOMAIN + prefix + block).digest()


def commitment_signed_bytes(header_sha256: str, payload_length: int, payload_sha256: str) -> bytes:
    """What a writer signs (before it has a signature to build a :class:`Commitment` with)."""
    placeholder = Signature(alg="", keyid="", sig=b"")
    return Commitment(header_sha256, payload_length, payload_sha256, placeholder).signed_bytes()


def read_commitment(fh: BinaryIO, header: Header) -> tuple[Commitment, int]:
    """Parse the trailer after ``header``'s payload; returns it and the exact file size.

    Seeks ``fh``. Raises TruncatedError when the file ends before the trailer does (a cut
    anywhere after the header lands here), TamperedError when the checksum does not match, the
    block is malformed, or bytes follow the trailer.
    """
    end = header.payload_offset + header.payload_length
    if fh.seek(0, 2) < end + 2:  # also keeps a corrupt (huge) payload length out of seek()
        raise TruncatedError(
            "bundle ends before its commitment trailer: the file is cut short "
            "(an incomplete download or copy)"
        )
    fh.seek(end)
    prefix = fh.read(2)
    if len(prefix) != 2:
        raise TruncatedError(
            "bundle ends before its commitment trailer: the file is cut short "
            "(an incomplete download or copy)"
        )
    (length,) = struct.unpack(">H", prefix)
    if not 2 <= length <= MAX_COMMITMENT_BLOCK:
        raise TamperedError(f"commitment block length {length} is out of range (corrupt bundle)")
    rest = fh.read(length + CHECKSUM_BYTES)
    if len(rest) != length + CHECKSUM_BYTES:
        raise TruncatedError("bundle ends inside its commitment trailer: the file is cut short")
    block, checksum = rest[:length], rest[length:]
    if hashlib.sha256(TRAILER_DOMAIN + prefix + block).digest() != checksum:
        raise TamperedError("bundle trailer checksum does not match: the file is corrupt")
    if fh.read(1):
        raise TamperedError("bundle has trailing data after its commitment trailer")
    commitment = _parse_commitment(block)
    if commitment.payload_length != header.payload_length:
        raise TamperedError("the header's payload length differs from the committed length")
    size = header.payload_offset + header.payload_length + 2 + length + CHECKSUM_BYTES
    return commitment, size


def _parse_commitment(block: bytes) -> Commitment:
    try:
        data = json.loads(block)
    except (ValueError, UnicodeDecodeError):
        raise TamperedError("commitment block is not valid JSON (corrupt bundle)") from None
    expected = {"format_version", "header_sha256", "payload_length", "payload_sha256",
                "alg", "keyid", "sig"}
    if not isinstance(data, dict) or set(data) != expected:
        raise TamperedError("commitment block has missing or unknown fields (corrupt bundle)")
    length = data["payload_length"]
    ok = (
        data["format_version"] == FORMAT_VERSION
        and _is_hex64(data["header_sha256"])
        and _is_hex64(data["payload_sha256"])
        and isinstance(length, int) and not isinstance(length, bool) and length >= 0
    )
    if not ok:
        raise TamperedError("commitment block has an invalid field (corrupt bundle)")
    sig = Signature.from_block(
        _canonical({"alg": data["alg"], "keyid": data["keyid"], "sig": data["sig"]})
    )
    return Commitment(data["header_sha256"], length, data["payload_sha256"], sig)


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
