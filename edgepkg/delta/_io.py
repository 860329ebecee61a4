"""Small I/O helpers shared by the delta methods: bounded output, random reads of the base."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Protocol

from edgepkg.errors import DeltaError, TooLargeError

BUF = 1 << 20


class DeltaBaseError(DeltaError):
    """The base file is not the one the delta was made against (nothing was written)."""


class Writable(Protocol):
    def write(self, data: bytes) -> object: ...


class BoundedWriter:
    """Write-through to ``fh`` that hashes, counts, and refuses to go past ``limit`` bytes."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh = fh
        self.limit = limit
        self.count = 0
        self._sha = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if self.count + n > self.limit:
            raise TooLargeError(
                f"delta produces more than the expected {self.limit} bytes "
                "(refusing: possible bomb)"
            )
        self._sha.update(data)
        self._fh.write(data)
        self.count += n

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class OldFile:
    """Random access to the base plaintext by seek; never holds more than one request."""

    def __init__(self, fh: BinaryIO, length: int) -> None:
        self._fh = fh
        self.length = length

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``; the range must lie inside the file."""
        if offset < 0 or n < 0 or offset + n > self.length:
            raise DeltaError("delta refers to bytes outside the base file")
        self._fh.seek(offset)
        data = self._fh.read(n)
        if len(data) != n:
            raise DeltaError("base file changed while reading it")
        return data

    def read_zero_padded(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset``; positions outside the file read as zero (bspatch rule)."""
        lo = max(offset, 0)
        hi = min(offset + n, self.length)
        if hi <= lo:
            return bytes(n)
        data = self.read_at(lo, hi - lo)
        if lo == offset and hi == offset + n:
            return data
        return bytes(lo - offset) + data + bytes(offset + n - hi)


def read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes from a delta stream or raise DeltaError (truncated)."""
    parts = []
    left = n
    while left:
        chunk = stream.read(min(left, BUF))
        if not chunk:
            raise DeltaError(f"delta is truncated (inside {what})")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def file_sha256(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(length, hex SHA-256) of a file, streamed."""
    sha = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(BUF):
            sha.update(chunk)
            n += len(chunk)
    return n, sha.hexdigest()


def check_limit(value: int, limit: int, what: str) -> None:
    if value > limit:
        raise TooLargeError(f"delta {what} is {value} bytes, more than the allowed {limit}")
