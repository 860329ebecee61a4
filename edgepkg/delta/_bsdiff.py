"""bsdiff (BSDIFF40, as written by bsdiff4 and Debian's bsdiff) with a *streaming* apply.

Diff: ``bsdiff4.diff`` needs ~18x the old file in RAM, so callers only use it below a bound.
Apply: the patch is parsed here block by block (control / diff / extra, each bz2-compressed)
and the base is read by seek, so memory is a few MB at any file size (``bsdiff4.patch`` would
hold old + new + patch in RAM).
"""

from __future__ import annotations

import bz2
import struct
from typing import BinaryIO

import bsdiff4
import numpy as np

from edgepkg.delta._io import BUF, BoundedWriter, OldFile, read_exact
from edgepkg.errors import DeltaError

_MAGIC = b"BSDIFF40"
_HDR = struct.Struct("<8sqqq")
_RAW_CHUNK = 64 * 1024
# Work bounds. Each control entry costs a fixed overhead whatever bytes it produces, so a tiny
# hostile patch made of 1-byte (or empty) entries took seconds per KB rebuilt. bsdiff emits an
# entry only after a match well above 8 bytes; measured on bsdiff4 output (inserts, scattered
# edits, shuffled pieces, periodic data) the worst was 1 entry per 10 output bytes, so we allow
# 1 per 4 plus a constant, and at most _MAX_EMPTY entries that produce nothing, in total.
_MAX_EMPTY = 1024
_BYTES_PER_ENTRY = 4
_ENTRY_SLACK = 1024


def max_control_entries(new_size: int) -> int:
    """Most control entries a patch rebuilding ``new_size`` bytes may hold."""
    return _ENTRY_SLACK + new_size // _BYTES_PER_ENTRY


def diff(old: bytes, new: bytes) -> bytes:
    """The BSDIFF40 patch turning ``old`` into ``new`` (all in memory: callers bound sizes)."""
    return bytes(bsdiff4.diff(old, new))


def _offtin(b: bytes) -> int:
    v = int.from_bytes(b[:7], "little") | ((b[7] & 0x7F) << 56)
    return -v if b[7] & 0x80 else v


class _Bz2Section:
    """Sequential reader of one bz2-compressed section stored at [start, start+length)."""

    def __init__(self, fh: BinaryIO, start: int, length: int, what: str) -> None:
        self._fh = fh
        self._pos = start
        self._end = start + length
        self._dec = bz2.BZ2Decompressor()
        self._what = what

    def read(self, n: int) -> bytes:
        out = bytearray()
        try:
            while len(out) < n:
                if self._dec.eof:
                    raise DeltaError(f"bsdiff {self._what} block ends early (corrupt patch)")
                raw = b""
                if self._dec.needs_input:
                    if self._pos >= self._end:
                        raise DeltaError(f"bsdiff {self._what} block is truncated")
                    self._fh.seek(self._pos)
                    raw = self._fh.read(min(_RAW_CHUNK, self._end - self._pos))
                    if not raw:
                        raise DeltaError("delta is truncated (inside a bsdiff block)")
                    self._pos += len(raw)
                out += self._dec.decompress(raw, n - len(out))
        except (OSError, EOFError, ValueError) as exc:
            raise DeltaError(f"bsdiff {self._what} block is corrupt: {exc}") from exc
        return bytes(out)

    def finish(self) -> None:
        """The block must end exactly here: no more output, a complete bz2 stream."""
        try:
            while not self._dec.eof:
                if self._pos >= self._end:
                    raise DeltaError(f"bsdiff {self._what} block is truncated")
                self._fh.seek(self._pos)
                raw = self._fh.read(min(_RAW_CHUNK, self._end - self._pos))
                if not raw:
                    raise DeltaError("delta is truncated (inside a bsdiff block)")
                self._pos += len(raw)
                if self._dec.decompress(raw, 1):
                    raise DeltaError(f"bsdiff {self._what} block has extra data (corrupt)")
        except (OSError, EOFError, ValueError) as exc:
            raise DeltaError(f"bsdiff {self._what} block is corrupt: {exc}") from exc


def apply(old: OldFile, fh: BinaryIO, body_start: int, body_len: int, out: BoundedWriter) -> None:
    """Rebuild from a seekable delta file whose BSDIFF40 body spans [body_start, +body_len)."""
    fh.seek(body_start)
    hdr = read_exact(fh, _HDR.size, "bsdiff header")
    magic, ctrl_len, diff_len, new_size = _HDR.unpack(hdr)
    if magic != _MAGIC:
        raise DeltaError("bsdiff body has a bad magic (corrupt patch)")
    if ctrl_len < 0 or diff_len < 0 or new_size < 0:
        raise DeltaError("bsdiff header has negative lengths (corrupt patch)")
    if _HDR.size + ctrl_len + diff_len > body_len:
        raise DeltaError("bsdiff blocks extend past the end of the delta (truncated)")
    if new_size != out.limit:
        raise DeltaError("bsdiff body describes a different output length than the header")
    base = body_start + _HDR.size
    ctrl = _Bz2Section(fh, base, ctrl_len, "control")
    dif = _Bz2Section(fh, base + ctrl_len, diff_len, "diff")
    extra = _Bz2Section(
        fh, base + ctrl_len + diff_len, body_len - _HDR.size - ctrl_len - diff_len, "extra"
    )
    newpos = 0
    oldpos = 0
    empty = 0
    entries = 0
    max_entries = max_control_entries(new_size)
    while newpos < new_size:
        c = ctrl.read(24)
        x, y, z = _offtin(c[0:8]), _offtin(c[8:16]), _offtin(c[16:24])
        if x < 0 or y < 0 or newpos + x + y > new_size:
            raise DeltaError("bsdiff control block is out of range (corrupt patch)")
        entries += 1
        if entries > max_entries:
            raise DeltaError(
                f"bsdiff control block has more than {max_entries} entries for {new_size} "
                "output bytes (corrupt or hostile patch)"
            )
        empty += x + y == 0
        if empty > _MAX_EMPTY:  # a bz2 bomb of empty entries would loop for hours
            raise DeltaError("bsdiff control block makes no progress (corrupt patch)")
        left = x
        while left:
            k = min(left, BUF)
            d = np.frombuffer(dif.read(k), dtype=np.uint8)
            o = np.frombuffer(old.read_zero_padded(oldpos, k), dtype=np.uint8)
            out.write((d + o).tobytes())
            oldpos += k
            left -= k
        left = y
        while left:
            k = min(left, BUF)
            out.write(extra.read(k))
            left -= k
        newpos += x + y
        oldpos += z
    for section in (ctrl, dif, extra):
        section.finish()
