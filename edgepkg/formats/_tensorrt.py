"""TensorRT engine/plan headers (pure: a bounded file prefix in, plain values out).

A serialized engine starts with the magic ``ftrt``; bytes 24, 25, 26 after the magic's offset hold
the TensorRT major, minor and patch version it was built with. Ultralytics exports prepend
``[int32 little-endian length][JSON metadata]`` before the engine. The GPU architecture (SM) the
engine was built for is not in the header; the operator supplies it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edgepkg._json import loads_bounded
from edgepkg.errors import FormatError

MAGIC = b"ftrt"
VERSION_OFFSET = 24
MAX_METADATA_BYTES = 1 << 20  # Ultralytics metadata is a few hundred bytes
PREFIX_BYTES = 4 + MAX_METADATA_BYTES + VERSION_OFFSET + 3  # all detection ever reads


class TensorRTError(Exception):
    """Internal: the header claims TensorRT but is malformed. Converted to FormatError."""


@dataclass(frozen=True)
class TensorRTHeader:
    engine_offset: int
    version: tuple[int, int, int]
    metadata: dict[str, Any] | None


def engine_offset(prefix: bytes) -> int | None:
    """Offset of the ``ftrt`` magic (0, or after an Ultralytics prefix), None if not TensorRT."""
    if prefix[:4] == MAGIC:
        return 0
    if len(prefix) < 8:
        return None
    n = int(struct.unpack_from("<i", prefix, 0)[0])
    if 0 < n <= MAX_METADATA_BYTES and prefix[4 + n : 8 + n] == MAGIC:
        return 4 + n
    return None


def parse_header(prefix: bytes) -> TensorRTHeader:
    off = engine_offset(prefix)
    if off is None:
        raise TensorRTError("no 'ftrt' magic at offset 0 or after an Ultralytics metadata prefix")
    if len(prefix) < off + VERSION_OFFSET + 3:
        raise TensorRTError("the TensorRT header is truncated before its version bytes")
    major, minor, patch = prefix[off + VERSION_OFFSET : off + VERSION_OFFSET + 3]
    if not 1 <= major <= 99 or minor > 99 or patch > 99:
        raise TensorRTError(f"implausible TensorRT version bytes {major}.{minor}.{patch}")
    metadata = None
    if off:
        try:
            metadata = loads_bounded(
                prefix[4:off], what="the Ultralytics metadata prefix", error=FormatError,
                max_bytes=MAX_METADATA_BYTES,
            )
        except FormatError as exc:
            raise TensorRTError(str(exc)) from None
        if not isinstance(metadata, dict):
            raise TensorRTError("the Ultralytics metadata prefix is not a JSON object")
    return TensorRTHeader(engine_offset=off, version=(major, minor, patch), metadata=metadata)
