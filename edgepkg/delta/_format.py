"""The self-describing delta container: a fixed header, then one method's stream.

Header (big-endian, 96 bytes)::

    magic     8s   b"EPKDELTA"
    version   H    1
    method    B    method id (see METHOD_IDS)
    reserved  B    0
    reserved  I    0
    old_len   Q    length of the base plaintext
    old_sha   32s  SHA-256 of the base plaintext
    new_len   Q    length of the rebuilt plaintext
    new_sha   32s  SHA-256 of the rebuilt plaintext

Pure parsing/packing; no file I/O here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edgepkg.errors import DeltaError, TooLargeError

MAGIC = b"EPKDELTA"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHBBIQ32sQ32s")
HEADER_SIZE = _HEADER.size

METHOD_IDS: dict[str, int] = {"bsdiff": 1, "zstd-window": 2, "tensor": 3}
_METHOD_NAMES = {v: k for k, v in METHOD_IDS.items()}

# Largest plaintext a delta may describe (a hostile header cannot make us plan for more).
MAX_PLAINTEXT = 1 << 40


@dataclass(frozen=True)
class DeltaHeader:
    method: str
    old_length: int
    old_sha256: str
    new_length: int
    new_sha256: str

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            METHOD_IDS[self.method],
            0,
            0,
            self.old_length,
            bytes.fromhex(self.old_sha256),
            self.new_length,
            bytes.fromhex(self.new_sha256),
        )


def parse_header(data: bytes) -> DeltaHeader:
    """Parse the first HEADER_SIZE bytes of a delta; raise DeltaError on anything odd."""
    if len(data) < HEADER_SIZE:
        raise DeltaError("delta is truncated: shorter than its header")
    magic, version, method_id, r1, r2, old_len, old_sha, new_len, new_sha = _HEADER.unpack(
        data[:HEADER_SIZE]
    )
    if magic != MAGIC:
        raise DeltaError("not an edgepkg delta (bad magic)")
    if version != FORMAT_VERSION:
        raise DeltaError(f"unsupported delta format version {version} (this build reads 1)")
    if method_id not in _METHOD_NAMES:
        raise DeltaError(f"unknown delta method id {method_id}")
    if r1 or r2:
        raise DeltaError("delta header has non-zero reserved fields")
    if old_len > MAX_PLAINTEXT or new_len > MAX_PLAINTEXT:
        raise TooLargeError("delta header claims a plaintext larger than 1 TiB")
    return DeltaHeader(_METHOD_NAMES[method_id], old_len, old_sha.hex(), new_len, new_sha.hex())
