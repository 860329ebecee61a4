"""The chunked payload ("zstd-chunked", what :func:`write_bundle` writes): encode and decode.

The plaintext is cut into ``chunk_size`` chunks; each is compressed on its own (one zstd frame,
content size in its header) or, when it does not compress (engines are mostly incompressible
weights), stored raw. Each chunk becomes one record::

    1 byte   kind: 0 = zstd frame, 1 = raw
    4 bytes  sealed length N (big-endian), 16 <= N <= chunk_size + 16
    N bytes  AES-256-GCM(chunk body); nonce = chunk index + last flag, associated data =
             SHA-256(manifest) || kind   (crypto.RecordSealer)

Independent chunks are what lets both cores compress, seal, open and decompress at once, and a
raw chunk costs no compression or decompression at all. The kind byte is in the clear so a
reader knows what to do, and authenticated (associated data), so flipping it fails like any
other change; the whole payload is also covered by the signed commitment (``_container``).

Bounds a reader enforces before decompressing anything (no decompression bombs): the number of
records follows from the signed plaintext length; every record but the last holds exactly
``chunk_size`` plaintext bytes and the last the remainder; a zstd frame must declare that exact
content size in its header, decodes with a bounded window, and may not carry extra bytes.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator

import zstandard

from edgepkg._pipeline import OrderedPool
from edgepkg.crypto import TAG_BYTES, RecordOpener
from edgepkg.errors import BundleError, TamperedError, TooLargeError, TruncatedError

CHUNKED = "zstd-chunked"  # manifest "compression" value of this encoding
LEGACY_STREAM = "zstd"  # one zstd stream cut into sealed chunks (read-only, earlier builds)
KIND_ZSTD = 0
KIND_RAW = 1
RECORD_HEADER = struct.Struct(">BI")
# Store a chunk raw unless zstd saves more than 3 %: below that, the space saved is not worth
# the decompression time on the device.
RAW_RATIO = 0.97
_PROBE = 8 << 10  # bytes sampled twice per chunk by the cheap incompressibility probe
MAX_WINDOW = 32 << 20  # bounded decoder memory; the writer uses far smaller windows


def expected_chunks(plaintext_length: int, chunk_size: int) -> int:
    """How many records a payload of this signed length has (an empty one has one, empty)."""
    return max(1, -(-plaintext_length // chunk_size))


class ChunkEncoder:
    """``encode(chunk) -> (kind, body)``; safe to call from several threads at once."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._local = threading.local()  # zstd contexts are not thread-safe: one per thread

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (
                zstandard.ZstdCompressor(level=1, write_checksum=False),
                zstandard.ZstdCompressor(level=self._level, write_checksum=False),
            )
            self._local.ctx = ctx
        return ctx

    def encode(self, chunk: bytes) -> tuple[int, bytes]:
        probe, full = self._contexts()
        n = len(chunk)
        if n >= 4 * _PROBE:
            # Two samples at level 1 cost ~3 % of compressing the chunk: random-looking weights
            # skip zstd entirely. A chunk that only looks random there is stored raw (safe; at
            # worst a few % larger), one that compresses there still has to earn it below.
            mid = n // 2
            sample = chunk[:_PROBE] + chunk[mid : mid + _PROBE]
            if len(probe.compress(sample)) > RAW_RATIO * len(sample):
                return KIND_RAW, chunk
        body = full.compress(chunk)
        if len(body) > RAW_RATIO * n:
            return KIND_RAW, chunk
        return KIND_ZSTD, body


def record_header(kind: int, sealed_length: int) -> bytes:
    return RECORD_HEADER.pack(kind, sealed_length)


# --- reading -----------------------------------------------------------------------------------


class _Decoder:
    """Open and decompress one record, in a worker thread; checks every bound first."""

    def __init__(self, opener: RecordOpener) -> None:
        self._opener = opener
        self._local = threading.local()

    def _dctx(self) -> zstandard.ZstdDecompressor:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
            self._local.dctx = dctx
        return dctx

    def __call__(self, item: tuple[int, bool, int, bytes, int]) -> bytes:
        index, last, kind, sealed, expected = item
        body = self._opener.open(index, last, kind, sealed)  # authenticated before anything else
        if kind == KIND_RAW:
            if len(body) != expected:
                raise TamperedError(f"raw chunk {index} has {len(body)} bytes, expected {expected}")
            return body
        return decompress_chunk(self._dctx(), index, body, expected)


def decompress_chunk(
    dctx: zstandard.ZstdDecompressor, index: int, frame: bytes, expected: int
) -> bytes:
    """Decompress one chunk's zstd frame to exactly ``expected`` bytes, never more.

    python-zstandard sizes its output from the frame header's content size (and ignores
    ``max_output_size`` then), so the declared size is checked before anything is allocated.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise BundleError(f"payload chunk {index} is not a zstd frame: {exc}") from None
    if declared < 0:
        raise TamperedError(f"payload chunk {index} does not declare its size (not from edgepkg)")
    if declared > expected:
        raise TooLargeError(
            f"payload chunk {index} declares {declared} bytes, more than its {expected}"
        )
    if declared != expected:
        raise TamperedError(f"payload chunk {index} declares {declared} bytes, expected {expected}")
    try:
        out = dctx.decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise BundleError(f"payload chunk {index} does not decompress: {exc}") from None
    if len(out) != expected:
        raise TamperedError(f"payload chunk {index} decompressed to {len(out)} bytes")
    return out


def read_chunked(
    read: Callable[[int], bytes],
    opener: RecordOpener,
    chunk_size: int,
    plaintext_length: int,
    *,
    workers: int = 2,
    depth: int = 8,
) -> Iterator[bytes]:
    """Yield the authenticated plaintext chunks, in order, from ``read`` (the sealed records).

    This thread reads (``read`` may hash what it returns); ``workers`` threads decrypt and
    decompress with at most ``depth`` chunks in flight. Every chunk is authenticated before it is
    decompressed, and its plaintext is yielded only after that.
    """
    count = expected_chunks(plaintext_length, chunk_size)
    max_sealed = chunk_size + TAG_BYTES
    header = _read_exact(read, RECORD_HEADER.size)
    if not header:
        raise TruncatedError("bundle payload is empty")
    index = 0
    with OrderedPool(_Decoder(opener), workers=workers, depth=depth) as pool:
        while True:
            if len(header) != RECORD_HEADER.size:
                raise TruncatedError(f"payload ends inside the header of chunk {index}")
            kind, length = RECORD_HEADER.unpack(header)
            if kind not in (KIND_ZSTD, KIND_RAW):
                raise TamperedError(f"payload chunk {index} has unknown kind {kind}")
            if not TAG_BYTES <= length <= max_sealed:
                raise TamperedError(f"payload chunk {index} has an impossible length {length}")
            if index >= count:
                raise TooLargeError(
                    f"payload has more chunks than its signed length ({plaintext_length} bytes)"
                )
            sealed = _read_exact(read, length)
            if len(sealed) != length:
                raise TruncatedError(f"payload ends inside chunk {index}")
            header = _read_exact(read, RECORD_HEADER.size)
            last = not header
            if last and index != count - 1:
                # Opening it says whether it was cut (authenticates as not-last) or forged.
                opener.open(index, last, kind, sealed)
                raise TamperedError(f"payload has {index + 1} chunks, the manifest implies {count}")
            expected = plaintext_length - index * chunk_size if last else chunk_size
            pool.submit((index, last, kind, sealed, expected))
            if pool.full():
                yield pool.next_result()
            if last:
                break
            index += 1
        yield from pool.results()


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        block = read(n)
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)
