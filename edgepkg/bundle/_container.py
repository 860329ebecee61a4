"""Binary layout of a bundle file (format version 1). Pure parsing of hostile bytes.

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
    .       ...   payload: AES-256-GCM STREAM chunks (edgepkg.crypto.seal_chunks)

The header fields outside the manifest are not signed, but each is checked: magic and version
are exact, flags must be zero, the payload length must match the file, and the key ids and
wrapped keys are bound to the manifest (the manifest lists the recipients, the HPKE ``info``
carries the manifest hash).
"""

from __future__ import annotations

import base64
import binascii
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
FORMAT_VERSION = 1
_FIXED = struct.Struct(">8sHHQI")
MAX_MANIFEST = 1 << 20
MAX_SIGNATURE_BLOCK = 4096
MAX_RECIPIENTS = 1024
WRAPPED_KEY_BYTES = 65 + 32 + 16


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
            " upgrade edgepkg"
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
            raise TamperedError(f"wrapped data key has length {length}, expected {WRAPPED_KEY_BYTES}")
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
