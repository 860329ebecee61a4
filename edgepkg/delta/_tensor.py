"""The tensor-aware method: per aligned region, XOR (or byte-subtract) against the old bytes at
the same place and compress the residual split into 4 byte planes; unaligned parts are literal.

Stream (after the container header), one record per chunk of the new file, then a u32 0::

    u32 n            bytes of new file in this chunk (1..CHUNK_MAX)
    u8  transform    0 = XOR, 1 = byte-wise subtraction (mod 256)
    u8  layout       0 = one frame of the residual, 1 = four frames, one per byte plane,
                     2 = no frame: the residual is all zeros
    u16 nops
    nops x (u8 kind, u32 length, i64 old_offset)   kind 0 = literal, 1 = aligned with old
    frames: (u8 codec, u32 compressed length, frame) x (1 or 4)   codec 0 = zstd, 1 = bz2

Residual = transform(new, old[old_offset:...]) for aligned ops and the new bytes for literal
ops.  Insertions/deletions move content: an anchor index finds the shift, so regions after an
insertion are aligned again at their new offset and only the inserted bytes are literal.
Apply memory: one chunk (1 MiB) of residual, old bytes and output, plus zstd state (~ 8 MB).
"""

from __future__ import annotations

import bz2
import struct
from collections import Counter
from typing import BinaryIO

import numpy as np
import zstandard as zstd

from edgepkg.delta._anchor import AnchorIndex
from edgepkg.delta._io import BoundedWriter, OldFile, read_exact
from edgepkg.errors import DeltaError

CHUNK = 1 << 20
CHUNK_MAX = 4 << 20
SUB = 4096  # granularity at which a region is judged aligned or not
_REC = struct.Struct(">IBBH")
_OP = struct.Struct(">BIq")
_LEN = struct.Struct(">I")
_FRAME = struct.Struct(">BI")
ZSTD, BZ2 = 0, 1
XOR, SUB8 = 0, 1
RAW, PLANES, ZERO = 0, 1, 2  # ZERO: the residual is all zeros, no frame follows
LITERAL, ALIGNED = 0, 1

# cost proxy: bits of the signed magnitude of a residual byte (0 for 0, 8 for +-128)
_BITS = np.array(
    [0] + [int(min(v, 256 - v)).bit_length() + 1 for v in range(1, 256)], dtype=np.uint16
)


def _planes(res: np.ndarray) -> list[bytes]:
    return [res[i::4].tobytes() for i in range(4)]


def _pack_frames(frames: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_FRAME.pack(codec, len(f)) + f for codec, f in frames)


class Encoder:
    def __init__(self, old: BinaryIO, old_len: int, *, level: int = 9) -> None:
        self._old = OldFile(old, old_len)
        self._index = AnchorIndex(old, old_len)
        self._fast = zstd.ZstdCompressor(level=1)
        self._final = zstd.ZstdCompressor(level=level)
        self._strong = zstd.ZstdCompressor(level=max(level, 19))
        self._shift = 0
        self.aligned_bytes = 0
        # bytes around anchor hits (content shared with the old file) that the chosen ops do not
        # follow: what a generic method (bsdiff, zstd-window) might still find
        self.matchable_literal_bytes = 0

    def _cost(self, new: np.ndarray, shift: int, pos: int) -> np.ndarray | None:
        n = new.size
        lo, hi = pos + shift, pos + shift + n
        if hi <= 0 or lo >= self._old.length:
            return None
        a, b = max(lo, 0), min(hi, self._old.length)
        old = np.frombuffer(self._old.read_at(a, b - a), dtype=np.uint8)
        nsub = -(-n // SUB)
        cost = np.full(nsub, np.inf)
        s0, s1 = -(-(a - lo) // SUB), (b - lo) // SUB  # sub-chunks fully inside the old file
        if b - lo == n:
            s1 = nsub
        if s1 <= s0:
            return None
        seg_lo, seg_hi = s0 * SUB, min(s1 * SUB, n)
        r = new[seg_lo:seg_hi] - old[seg_lo - (a - lo) : seg_hi - (a - lo)]
        bits = _BITS[r].astype(np.int64)
        pad = (-bits.size) % SUB
        if pad:
            bits = np.concatenate([bits, np.zeros(pad, dtype=np.int64)])
        cost[s0:s1] = bits.reshape(-1, SUB).sum(axis=1)
        return cost

    def _identical(self, new_bytes: bytes, pos: int) -> bytes | None:
        """Fast path: the chunk equals the old bytes at the current shift."""
        off = pos + self._shift
        n = len(new_bytes)
        if off < 0 or off + n > self._old.length or self._old.read_at(off, n) != new_bytes:
            return None
        self.aligned_bytes += n
        return _REC.pack(n, XOR, ZERO, 1) + _OP.pack(ALIGNED, n, off)

    def encode_chunk(self, new_bytes: bytes, pos: int) -> bytes:
        same = self._identical(new_bytes, pos)
        if same is not None:
            return same
        new = np.frombuffer(new_bytes, dtype=np.uint8)
        n = new.size
        shifts = [self._shift]
        hit_at, hit_old = self._index.hits(new)
        found = Counter(hit_old.tolist()).most_common()
        for old_start, _votes in found[:4]:
            shifts.append(old_start - pos)
        if 0 not in shifts:
            shifts.append(0)
        shifts = list(dict.fromkeys(shifts))
        rows, used = [], []
        for s in shifts:
            c = self._cost(new, s, pos)
            if c is not None:
                rows.append(c)
                used.append(s)
        nsub = -(-n // SUB)
        lit = _BITS[new].astype(np.int64)
        pad = (-n) % SUB
        if pad:
            lit = np.concatenate([lit, np.zeros(pad, dtype=np.int64)])
        rows.append(lit.reshape(-1, SUB).sum(axis=1).astype(float))
        cost = np.vstack(rows)  # (len(used)+1, nsub); last row = literal
        best = cost.argmin(axis=0)
        # hysteresis: stay with the current choice unless another is clearly (10 %) better
        choice = np.empty(nsub, dtype=np.int64)
        cur = int(best[0])
        for i in range(nsub):
            b = int(best[i])
            if b != cur and not cost[cur, i] <= 1.1 * cost[b, i]:
                cur = b
            choice[i] = cur
        # runs -> ops
        ops: list[tuple[int, int, int]] = []  # (kind, start, length) with old offset via shift
        shift_of: list[int | None] = [*used, None]
        i = 0
        while i < nsub:
            j = i
            while j + 1 < nsub and choice[j + 1] == choice[i]:
                j += 1
            start, end = i * SUB, min((j + 1) * SUB, n)
            ops.append((int(choice[i]), start, end - start))
            i = j + 1
        if hit_at.size:  # anchor hits that the chosen ops do not follow: moved content we missed
            chosen_shift = np.array(
                [np.nan if shift_of[c] is None else shift_of[c] for c in choice]
            )
            missed = chosen_shift[hit_at // SUB] != (hit_old - pos)
            self.matchable_literal_bytes += SUB * np.unique(hit_at[missed] // SUB).size
        res_x = new.copy()
        res_s = new.copy()
        op_recs = []
        for ci, start, length in ops:
            sh = shift_of[ci]
            if sh is None:  # literal
                op_recs.append(_OP.pack(LITERAL, length, 0))
                continue
            off = pos + start + sh
            o = np.frombuffer(self._old.read_at(off, length), dtype=np.uint8)
            res_x[start : start + length] ^= o
            res_s[start : start + length] -= o
            op_recs.append(_OP.pack(ALIGNED, length, off))
            self._shift = sh
            self.aligned_bytes += length
        # choose transform/layout by a fast compression, then compress the winner for real
        variants = [(XOR, PLANES, res_x), (SUB8, PLANES, res_s), (SUB8, RAW, res_s)]
        if all(shift_of[ci] is None for ci, _, _ in ops):
            variants = [(XOR, PLANES, res_x), (XOR, RAW, res_x)]
        best_v = None
        best_size = None
        for tr, lay, res in variants:
            parts = _planes(res) if lay == PLANES else [res.tobytes()]
            size = sum(len(self._fast.compress(p)) for p in parts)
            if best_size is None or size < best_size:
                best_v, best_size = (tr, lay, res), size
        assert best_v is not None
        tr, lay, res = best_v
        parts = _planes(res) if lay == PLANES else [res.tobytes()]
        frames: list[tuple[int, bytes]] = [(ZSTD, self._final.compress(p)) for p in parts]
        if lay == RAW:  # small-alphabet residuals (int8 re-quantization): try stronger coders
            alts = [(BZ2, bz2.compress(parts[0], 9))]
            if len(frames[0][1]) < n // 8:  # sparse: level 19 is cheap here and often best
                alts.append((ZSTD, self._strong.compress(parts[0])))
            for alt in alts:
                if len(alt[1]) < len(frames[0][1]):
                    frames = [alt]
        return _REC.pack(n, tr, lay, len(op_recs)) + b"".join(op_recs) + _pack_frames(frames)


def encode(old: BinaryIO, old_len: int, new: BinaryIO, out: BinaryIO, *, level: int = 9) -> Encoder:
    """Write the tensor stream for ``new`` against ``old``; return the encoder (for its stats)."""
    enc = Encoder(old, old_len, level=level)
    pos = 0
    while True:
        data = new.read(CHUNK)
        if not data:
            break
        out.write(enc.encode_chunk(data, pos))
        pos += len(data)
    out.write(_LEN.pack(0))
    return enc


def _unzstd(dctx: zstd.ZstdDecompressor, frame: bytes, n: int) -> bytes:
    try:
        params = zstd.get_frame_parameters(frame)
        if params.content_size != n:
            raise DeltaError("delta frame declares a wrong size (corrupt patch)")
        data = dctx.decompress(frame, max_output_size=n)
    except zstd.ZstdError as exc:
        raise DeltaError(f"delta frame does not decompress: {exc}") from exc
    if len(data) != n:
        raise DeltaError("delta frame decompresses to a wrong size (corrupt patch)")
    return data


def _unbz2(frame: bytes, n: int) -> bytes:
    dec = bz2.BZ2Decompressor()
    try:
        data = dec.decompress(frame, max_length=n)
    except (OSError, EOFError, ValueError) as exc:
        raise DeltaError(f"delta frame does not decompress: {exc}") from exc
    if len(data) != n or not dec.eof:
        raise DeltaError("delta frame decompresses to a wrong size (corrupt patch)")
    return data


def apply(old: OldFile, stream: BinaryIO, out: BoundedWriter) -> None:
    dctx = zstd.ZstdDecompressor(max_window_size=1 << 23)
    while True:
        (n,) = _LEN.unpack(read_exact(stream, 4, "chunk header"))
        if n == 0:
            return
        rest = read_exact(stream, _REC.size - 4, "chunk header")
        _, tr, lay, nops = _REC.unpack(_LEN.pack(n) + rest)
        if n > CHUNK_MAX or tr not in (XOR, SUB8) or lay not in (RAW, PLANES, ZERO):
            raise DeltaError("delta chunk header is invalid (corrupt patch)")
        if out.count + n > out.limit:
            out.write(bytes(out.limit - out.count + 1))  # raises TooLargeError
        raw_ops = read_exact(stream, _OP.size * nops, "operation list")
        ops = [_OP.unpack_from(raw_ops, k * _OP.size) for k in range(nops)]
        # every op covers >= 1 byte (the encoder writes runs), so work per chunk is bounded by n
        if sum(op[1] for op in ops) != n or any(
            op[0] not in (LITERAL, ALIGNED) or op[1] == 0 for op in ops
        ):
            raise DeltaError("delta operations do not cover the chunk (corrupt patch)")
        if lay == ZERO:  # zero residual: aligned ops copy the old bytes, literal ops are zeros
            for kind, length, off in ops:
                out.write(old.read_at(off, length) if kind == ALIGNED else bytes(length))
            continue
        sizes = [(n - i + 3) // 4 for i in range(4)] if lay == PLANES else [n]
        res = np.empty(n, dtype=np.uint8)
        for i, size in enumerate(sizes):
            codec, clen = _FRAME.unpack(read_exact(stream, _FRAME.size, "frame header"))
            if codec not in (ZSTD, BZ2) or clen > size + (size >> 6) + 1024:
                raise DeltaError("delta frame header is invalid (corrupt patch)")
            frame = read_exact(stream, clen, "frame")
            raw = _unzstd(dctx, frame, size) if codec == ZSTD else _unbz2(frame, size)
            plane = np.frombuffer(raw, dtype=np.uint8)
            if lay == PLANES:
                res[i::4] = plane
            else:
                res[:] = plane
        start = 0
        for kind, length, off in ops:
            if kind == ALIGNED:
                o = np.frombuffer(old.read_at(off, length), dtype=np.uint8)
                if tr == XOR:
                    res[start : start + length] ^= o
                else:
                    res[start : start + length] += o
            start += length
        out.write(res.tobytes())
