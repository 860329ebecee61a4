"""A minimal, bounds-checked FlatBuffers table reader.

The generated Python FlatBuffers code (and ``flatbuffers.table.Table``) trusts offsets: a hostile
file makes it raise ``IndexError``/``struct.error`` from deep inside, or walk vectors whose length
field claims billions of entries. This reader checks every offset and length against the buffer
before use and raises :class:`FbError`, which callers turn into ``FormatError``.
Only what model detection needs is implemented: scalars, strings, byte vectors, vectors of
scalars and vectors of tables.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")

_SCALARS: dict[str, struct.Struct] = {
    "b": struct.Struct("<b"),
    "B": struct.Struct("<B"),
    "h": struct.Struct("<h"),
    "H": _U16,
    "i": _I32,
    "I": _U32,
    "q": struct.Struct("<q"),
    "Q": _U64,
    "f": struct.Struct("<f"),
}


class FbError(Exception):
    """Internal: the flatbuffer is malformed. Converted to a FormatError by callers."""


class Buf:
    """A read-only byte buffer with checked reads."""

    __slots__ = ("data", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def check(self, pos: int, length: int) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise FbError(f"offset {pos}+{length} outside the {self.size}-byte buffer")

    def u32(self, pos: int) -> int:
        self.check(pos, 4)
        return int(_U32.unpack_from(self.data, pos)[0])

    def i32(self, pos: int) -> int:
        self.check(pos, 4)
        return int(_I32.unpack_from(self.data, pos)[0])

    def u16(self, pos: int) -> int:
        self.check(pos, 2)
        return int(_U16.unpack_from(self.data, pos)[0])

    def scalar(self, fmt: str, pos: int) -> int | float:
        st = _SCALARS[fmt]
        self.check(pos, st.size)
        return st.unpack_from(self.data, pos)[0]  # type: ignore[no-any-return]

    def root(self) -> Table:
        return Table(self, self.u32(0))

    def identifier(self) -> bytes:
        self.check(4, 4)
        return bytes(self.data[4:8])


class Table:
    """A flatbuffer table at ``pos``; fields are addressed by slot number (schema field order)."""

    __slots__ = ("_vt", "_vt_len", "buf", "pos")

    def __init__(self, buf: Buf, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vt = pos - buf.i32(pos)
        vt_len = buf.u16(vt)
        if vt_len < 4 or vt_len % 2:
            raise FbError(f"bad vtable length {vt_len}")
        buf.check(vt, vt_len)
        table_len = buf.u16(vt + 2)
        buf.check(pos, table_len)
        self._vt = vt
        self._vt_len = vt_len

    def _field(self, slot: int) -> int:
        """Absolute position of the field's data, or 0 when absent."""
        voff = 4 + 2 * slot
        if voff >= self._vt_len:
            return 0
        rel = self.buf.u16(self._vt + voff)
        return self.pos + rel if rel else 0

    def has(self, slot: int) -> bool:
        return self._field(slot) != 0

    def scalar(self, slot: int, fmt: str, default: float = 0) -> int | float:
        p = self._field(slot)
        return self.buf.scalar(fmt, p) if p else default

    def integer(self, slot: int, fmt: str = "i", default: int = 0) -> int:
        return int(self.scalar(slot, fmt, default))

    def _indirect(self, p: int) -> int:
        return p + self.buf.u32(p)

    def table(self, slot: int) -> Table | None:
        p = self._field(slot)
        return Table(self.buf, self._indirect(p)) if p else None

    def _vector(self, slot: int, elem_size: int) -> tuple[int, int] | None:
        p = self._field(slot)
        if not p:
            return None
        start = self._indirect(p)
        n = self.buf.u32(start)
        self.buf.check(start + 4, n * elem_size)
        return start + 4, n

    def blob(self, slot: int) -> bytes | None:
        v = self._vector(slot, 1)
        if v is None:
            return None
        start, n = v
        return bytes(self.buf.data[start : start + n])

    def string(self, slot: int) -> str | None:
        raw = self.blob(slot)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FbError("string is not UTF-8") from exc

    def scalars(self, slot: int, fmt: str) -> list[int | float]:
        st = _SCALARS[fmt]
        v = self._vector(slot, st.size)
        if v is None:
            return []
        start, n = v
        return [st.unpack_from(self.buf.data, start + i * st.size)[0] for i in range(n)]

    def vector_length(self, slot: int, elem_size: int) -> int:
        """Element count of a vector field (bounds-checked), 0 when absent; reads no elements."""
        v = self._vector(slot, elem_size)
        return 0 if v is None else v[1]

    def length(self, slot: int) -> int:
        v = self._vector(slot, 4)
        return 0 if v is None else v[1]

    def tables(self, slot: int) -> Iterator[Table]:
        v = self._vector(slot, 4)
        if v is None:
            return
        start, n = v
        for i in range(n):
            p = start + 4 * i
            yield Table(self.buf, self._indirect(p))
