"""Generic long-window method: each 4 MiB segment of the new file is zstd-compressed with the
matching region of the old file (found by the anchor index, +- a margin) as a raw-content
dictionary.  Handles arbitrary moves within the margin, any content.

Stream, one record per segment, then a u32 0::

    u32 n, u64 dict_offset, u32 dict_length, u32 compressed length, zstd frame

Apply memory: the dictionary (<= 8 MiB + segment) and the zstd window (<= 16 MiB) per segment,
so ~ 40 MB at any file size (python-zstandard with the *whole* old file as dictionary would
hold the whole file, and the zstd CLI's --patch-from needs ~1 GB at 512 MB).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
import zstandard as zstd

from edgepkg.delta._anchor import AnchorIndex
from edgepkg.delta._io import BoundedWriter, OldFile, read_exact
from edgepkg.errors import DeltaError

SEGMENT = 4 << 20
MARGIN = 2 << 20
_WINDOW_LOG = 24  # >= log2(dictionary + segment)
_REC = struct.Struct(">IQII")
_LEN = struct.Struct(">I")


def _params(level: int, n: int, dict_len: int) -> zstd.ZstdCompressionParameters:
    base = zstd.ZstdCompressionParameters.from_level(level, source_size=n + dict_len)
    span = max(n + dict_len, 1 << 10).bit_length()
    return zstd.ZstdCompressionParameters(
        window_log=_WINDOW_LOG,
        chain_log=min(max(base.chain_log, span + 1), 27),
        hash_log=min(max(base.hash_log, span), 26),
        search_log=base.search_log,
        min_match=base.min_match,
        target_length=base.target_length,
        strategy=base.strategy,
        threads=0,
    )


def encode(old: BinaryIO, old_len: int, new: BinaryIO, out: BinaryIO, *, level: int = 15) -> None:
    o = OldFile(old, old_len)
    index = AnchorIndex(old, old_len)
    pos = 0
    shift = 0
    while True:
        data = new.read(SEGMENT)
        if not data:
            break
        found = index.shifts(np.frombuffer(data, dtype=np.uint8))
        if found:
            shift = found[0][0] - pos
        lo = max(0, min(pos + shift - MARGIN, old_len))
        hi = max(lo, min(pos + shift + len(data) + MARGIN, old_len))
        dict_bytes = o.read_at(lo, hi - lo)
        if dict_bytes:
            d = zstd.ZstdCompressionDict(dict_bytes, dict_type=zstd.DICT_TYPE_RAWCONTENT)
            cctx = zstd.ZstdCompressor(
                dict_data=d, compression_params=_params(level, len(data), len(d))
            )
        else:
            cctx = zstd.ZstdCompressor(level=level)
        frame = cctx.compress(data)
        out.write(_REC.pack(len(data), lo, hi - lo, len(frame)) + frame)
        pos += len(data)
    out.write(_LEN.pack(0))


def apply(old: OldFile, stream: BinaryIO, out: BoundedWriter) -> None:
    # Work bound: each segment loads a dictionary of up to 8 MiB, so a hostile stream of 1-byte
    # segments cost 8 MiB of reads per output byte. The encoder writes full SEGMENT-sized
    # segments except the last, and a dictionary spans at most the segment plus 2 x MARGIN, so
    # the decoder demands both: dictionary bytes read stay under 3 x (output + SEGMENT).
    short_seen = False
    while True:
        (n,) = _LEN.unpack(read_exact(stream, 4, "segment header"))
        if n == 0:
            return
        _, lo, dlen, clen = _REC.unpack(
            _LEN.pack(n) + read_exact(stream, _REC.size - 4, "segment header")
        )
        if n > SEGMENT or dlen > n + 2 * MARGIN or clen > n + (n >> 7) + 1024:
            raise DeltaError("delta segment header is invalid (corrupt patch)")
        if short_seen:
            raise DeltaError(
                f"delta segment follows a short one (only the last may be under {SEGMENT} "
                "bytes; corrupt or hostile patch)"
            )
        short_seen = n < SEGMENT
        if out.count + n > out.limit:
            out.write(bytes(out.limit - out.count + 1))  # raises TooLargeError
        frame = read_exact(stream, clen, "segment")
        try:
            if dlen:
                d = zstd.ZstdCompressionDict(
                    old.read_at(lo, dlen), dict_type=zstd.DICT_TYPE_RAWCONTENT
                )
                dctx = zstd.ZstdDecompressor(dict_data=d, max_window_size=1 << _WINDOW_LOG)
            else:
                dctx = zstd.ZstdDecompressor(max_window_size=1 << _WINDOW_LOG)
            if zstd.get_frame_parameters(frame).content_size != n:
                raise DeltaError("delta segment declares a wrong size (corrupt patch)")
            data = dctx.decompress(frame, max_output_size=n)
        except zstd.ZstdError as exc:
            raise DeltaError(f"delta segment does not decompress: {exc}") from exc
        if len(data) != n:
            raise DeltaError("delta segment decompresses to a wrong size (corrupt patch)")
        out.write(data)
