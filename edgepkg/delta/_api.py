"""The delta API behind :mod:`edgepkg.delta` (which re-exports it lazily, see there)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from edgepkg._atomic import atomic_output
from edgepkg.delta import _bsdiff, _tensor, _zwindow
from edgepkg.delta._format import HEADER_SIZE, METHOD_IDS, DeltaHeader, parse_header
from edgepkg.delta._io import (
    BUF,
    BoundedWriter,
    DeltaBaseError,
    OldFile,
    Writable,
    file_sha256,
    read_exact,
)
from edgepkg.delta._verify import BackgroundSha256, PipelinedVerifier
from edgepkg.errors import DeltaError, TooLargeError, UsageError

__all__ = [
    "DEFAULT_MAX_BSDIFF_BYTES",
    "DEFAULT_MAX_ZWINDOW_BYTES",
    "METHODS",
    "ChunkStream",
    "DeltaBaseError",
    "DeltaHeader",
    "DeltaResult",
    "apply_delta",
    "apply_delta_to",
    "delta_method_bounds",
    "make_delta",
    "read_delta_header",
]

METHODS: tuple[str, ...] = ("tensor", "zstd-window", "bsdiff")

# bsdiff4.diff peaks at ~18x the old file: 32 MiB -> ~0.6 GB of RAM on the release machine.
DEFAULT_MAX_BSDIFF_BYTES = 32 << 20
# zstd-window is tried by default only up to this size (it costs time, rarely wins on weights).
DEFAULT_MAX_ZWINDOW_BYTES = 1 << 40

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class DeltaResult:
    """What :func:`make_delta` wrote: the winning method and what every method tried gave."""

    method: str
    delta_size: int  # bytes of the delta file written (header included)
    new_size: int
    old_size: int
    old_sha256: str
    new_sha256: str
    sizes: dict[str, int] = field(default_factory=dict)  # method -> delta size it produced
    method_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        """Delta size as a fraction of the new plaintext (what a caller compares to a margin)."""
        return self.delta_size / self.new_size if self.new_size else 1.0


def delta_method_bounds() -> dict[str, str]:
    """The memory each method needs to *apply* a delta, at any file size."""
    return {
        "tensor": "~10 MB: one 1 MiB chunk of residual, base bytes and output + zstd state",
        "zstd-window": (
            "~45 MB: a <= 8 MiB base dictionary + <= 16 MiB zstd window per 4 MiB segment"
        ),
        "bsdiff": "~10 MB: three bz2 streams read by seek (bz2 state ~4 MB), 1 MiB buffers",
    }


def read_delta_header(delta: PathLike | BinaryIO) -> DeltaHeader:
    """The header of a delta (method, base and target length + SHA-256), without applying it."""
    if isinstance(delta, (str, os.PathLike)):
        with open(delta, "rb") as fh:
            return parse_header(fh.read(HEADER_SIZE))
    return parse_header(delta.read(HEADER_SIZE))


def _default_methods(old_len: int, new_len: int, max_bsdiff: int, max_zwindow: int) -> list[str]:
    out = ["tensor"]
    if max(old_len, new_len) <= max_zwindow:
        out.append("zstd-window")
    if max(old_len, new_len) <= max_bsdiff:
        out.append("bsdiff")
    return out


# auto mode runs the generic methods only when, around anchor hits (content shared with the old
# file), this much of the new file is not explained by the tensor method's aligned regions
GENERIC_GATE = 0.01


def _generic_may_win(stats: _tensor.Encoder | None, new_len: int) -> bool:
    if stats is None:
        return True
    return stats.matchable_literal_bytes > GENERIC_GATE * new_len


def make_delta(
    old_path: PathLike,
    new_path: PathLike,
    out_path: PathLike,
    *,
    methods: list[str] | tuple[str, ...] | None = None,
    max_bsdiff_bytes: int = DEFAULT_MAX_BSDIFF_BYTES,
    max_zwindow_bytes: int = DEFAULT_MAX_ZWINDOW_BYTES,
    level: int = 9,
    verify: bool = True,
    workdir: PathLike | None = None,
) -> DeltaResult:
    """Write the smallest delta turning ``old_path`` into ``new_path`` to ``out_path`` (atomic).

    ``methods=None`` (auto) runs ``tensor`` and then the applicable generic methods
    (``zstd-window`` up to ``max_zwindow_bytes``, ``bsdiff`` up to ``max_bsdiff_bytes``) only
    where they could still win: when more than GENERIC_GATE of the new file shares content with
    the old file in a way the aligned regions do not follow (small moves, reordering).
    A list runs exactly those methods; naming bsdiff above its bound is a UsageError.  With
    ``verify`` (default) nothing is written unless the delta, decoded by the device's decoder,
    rebuilds exactly the bytes of the new file whose SHA-256 goes into the header: the first
    method is decoded by a second thread while it is encoded (and compared with the bytes the
    encoder read); a winner that was not is decoded afterwards into a hashing sink.
    """
    t0 = time.monotonic()
    old_len, new_len = os.stat(old_path).st_size, os.stat(new_path).st_size
    auto = methods is None
    stats: _tensor.Encoder | None = None
    if methods is None:
        chosen = _default_methods(old_len, new_len, max_bsdiff_bytes, max_zwindow_bytes)
    else:
        chosen = list(dict.fromkeys(methods))
        unknown = [m for m in chosen if m not in METHODS]
        if unknown or not chosen:
            raise UsageError(f"unknown delta method(s) {unknown}; choose from {list(METHODS)}")
        if "bsdiff" in chosen and max(old_len, new_len) > max_bsdiff_bytes:
            raise UsageError(
                f"bsdiff needs ~18x the file in RAM; files over {max_bsdiff_bytes} bytes must "
                "use tensor or zstd-window (or raise max_bsdiff_bytes)"
            )
    out_path = Path(out_path)
    tmp_parent = Path(workdir) if workdir is not None else out_path.parent
    sizes: dict[str, int] = {}
    secs: dict[str, float] = {}
    first = chosen[0]
    limit = 2 * new_len + (64 << 20)
    spool = Path(tempfile.gettempdir())

    def decoder(method: str) -> Any:
        return lambda old, stream, writer: _decode_body(method, old, stream, writer, limit, spool)

    # The base is hashed in a worker thread while the first method builds its index; the new file
    # is hashed from the very bytes the first method reads; with ``verify`` a second thread
    # decodes the first method's stream as it is written and compares it with those bytes.
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1))
        old_digest = pool.submit(file_sha256, old_path)
        new_sha = BackgroundSha256()
        stack.callback(new_sha.close)
        verifier = (
            PipelinedVerifier(decoder(first), os.fspath(old_path), old_len, new_len)
            if verify and first != "bsdiff" else None
        )
        if verifier is not None:
            stack.callback(verifier.close)
        # the first method writes straight after the header (no copy if it wins) unless it
        # must be verified after the fact (bsdiff: its decoder reads the stream by seek)
        direct = first if verifier is not None or not verify else None
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".delta-",
                                                                   dir=tmp_parent)))
        fh = stack.enter_context(atomic_output(out_path))
        fh.write(bytes(HEADER_SIZE))  # the header goes here once the winner is known
        bodies: dict[str, Path] = {}
        for m in chosen:
            if auto and m != "tensor" and not _generic_may_win(stats, new_len):
                continue
            t = time.monotonic()
            with contextlib.ExitStack() as files:
                old = files.enter_context(open(old_path, "rb"))
                new: Any = files.enter_context(open(new_path, "rb"))
                if m == first:
                    new = _TeeReader(new, new_sha, verifier)
                if m == direct:
                    out: Any = _TeeWriter(fh, verifier.body if verifier else None)
                else:
                    bodies[m] = tmp / f"{m}.body"
                    out = _TeeWriter(files.enter_context(open(bodies[m], "wb")), None)
                if m == "tensor":
                    stats = _tensor.encode(old, old_len, new, out, level=level)
                elif m == "zstd-window":
                    _zwindow.encode(old, old_len, new, out, level=max(level, 15))
                else:
                    out.write(_bsdiff.diff(old.read(), new.read()))
                if m == first:
                    new.finish()
            sizes[m] = HEADER_SIZE + out.count
            secs[m] = round(time.monotonic() - t, 3)
        old_len_read, old_sha = old_digest.result()
        new_sha_hex = new_sha.hexdigest()
        if verifier is not None:
            verifier.finish()
        if old_len_read != old_len or new_sha.count != new_len:
            raise DeltaError("the base or the new file changed while the delta was being made")
        chosen = [m for m in chosen if m in sizes]
        best = min(chosen, key=lambda m: (sizes[m], chosen.index(m)))
        header = DeltaHeader(best, old_len, old_sha, new_len, new_sha_hex)
        if parse_header(header.pack()) != header:
            raise DeltaError("delta header does not round-trip")  # cannot happen: a format bug
        if best != direct:
            fh.seek(HEADER_SIZE)
            fh.truncate()
            with open(bodies[best], "rb") as src:
                shutil.copyfileobj(src, fh, BUF)
        if verify and (best != first or verifier is None):
            # not verified while encoding: rebuild into a hashing sink (the device's decoder)
            with open(bodies[best], "rb") as body:
                sink = BoundedWriter(_NullSink(), new_len)  # type: ignore[arg-type]
                with open(old_path, "rb") as ofh:
                    _decode_body(best, OldFile(ofh, old_len), body, sink, limit, spool)
                if sink.count != new_len or sink.hexdigest() != new_sha_hex:
                    raise DeltaError("verification failed: the delta does not rebuild the new file")
        fh.seek(0)
        fh.write(header.pack())
    return DeltaResult(
        best,
        sizes[best],
        new_len,
        old_len,
        old_sha,
        new_sha_hex,
        sizes,
        secs,
        round(time.monotonic() - t0, 3),
    )


class _TeeWriter:
    """Counts what a method writes and hands it to the pipelined verifier too."""

    def __init__(self, fh: BinaryIO, also: Any) -> None:
        self._fh = fh
        self._also = also
        self.count = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        if self._also is not None:
            self._also(data)
        self.count += len(data)
        return len(data)


class _TeeReader:
    """The new file as the first method reads it: hashed, and given to the verifier."""

    def __init__(self, fh: BinaryIO, sha: BackgroundSha256, verifier: Any) -> None:
        self._fh = fh
        self._sha = sha
        self._verifier = verifier

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._sha.update(data)
        if self._verifier is not None:
            self._verifier.expect(data)
        return data

    def finish(self) -> None:
        """Read what the method left unread (nothing, normally) so hash and check see it all."""
        while self.read(BUF):
            pass


def apply_delta(
    old_path: PathLike,
    delta: PathLike | BinaryIO,
    out_path: PathLike,
    *,
    expected_sha256: str,
    expected_length: int,
    max_delta_bytes: int | None = None,
) -> None:
    """Rebuild the target from ``old_path`` and a delta (path or binary stream) into ``out_path``.

    The target must have exactly ``expected_length`` bytes and SHA-256 ``expected_sha256``
    (from the full release's signed manifest); output is written atomically and never exceeds
    ``expected_length``.  Raises DeltaError (wrong base, corrupt or truncated delta, hash
    mismatch) or TooLargeError (size limits); on error ``out_path`` is untouched.
    """
    if expected_length < 0:
        raise UsageError("expected_length must be >= 0")
    expected_sha256 = expected_sha256.lower()
    limit = max_delta_bytes if max_delta_bytes is not None else 2 * expected_length + (64 << 20)
    spool = Path(out_path).parent
    with contextlib.ExitStack() as stack:
        if isinstance(delta, (str, os.PathLike)):
            stream: BinaryIO = stack.enter_context(open(delta, "rb"))
        elif isinstance(delta, io.RawIOBase):  # raw reads may return short: buffer them
            stream = io.BufferedReader(delta, BUF)
        else:
            stream = delta
        out = stack.enter_context(atomic_output(out_path))
        _apply_stream(old_path, stream, out, expected_sha256, expected_length, limit,
                      spool_dir=spool)


def apply_delta_to(
    old_path: PathLike,
    delta: BinaryIO,
    out: Writable,
    *,
    expected_sha256: str,
    expected_length: int,
    max_delta_bytes: int | None = None,
    spool_dir: PathLike | None = None,
) -> None:
    """Like :func:`apply_delta`, but the rebuilt target goes to ``out`` (anything with
    ``write``), e.g. a device's slot writer that hashes and seals as bytes arrive.

    Raises :class:`DeltaBaseError` before writing anything when the base does not match; on any
    other error the caller must discard what ``out`` received. ``spool_dir`` is where a
    non-seekable bsdiff delta is spooled (default: the base's folder).
    """
    if expected_length < 0:
        raise UsageError("expected_length must be >= 0")
    limit = max_delta_bytes if max_delta_bytes is not None else 2 * expected_length + (64 << 20)
    _apply_stream(old_path, delta, out, expected_sha256.lower(), expected_length, limit,
                  spool_dir=spool_dir if spool_dir is not None else Path(old_path).parent)


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)


def _apply_stream(
    old_path: PathLike,
    stream: BinaryIO,
    out: Writable,
    expected_sha256: str,
    expected_length: int,
    limit: int,
    *,
    spool_dir: PathLike,
    old_digest: tuple[int, str] | None = None,
) -> None:
    """The one delta decoder behind :func:`apply_delta` and :func:`apply_delta_to`: check
    the header against the expected target and the base, rebuild into ``out``, verify."""
    header = parse_header(read_exact(stream, HEADER_SIZE, "header"))
    if header.new_length != expected_length or header.new_sha256 != expected_sha256:
        raise DeltaError("this delta builds a different file than the expected target")
    old_len, old_sha = old_digest or file_sha256(old_path)
    if old_len != header.old_length or old_sha != header.old_sha256:
        raise DeltaBaseError(
            f"wrong base: the delta needs a base with SHA-256 {header.old_sha256}, "
            f"the given file has {old_sha}"
        )
    with open(old_path, "rb") as ofh:
        writer = BoundedWriter(out, expected_length)  # type: ignore[arg-type]
        _decode_body(header.method, OldFile(ofh, old_len), stream, writer, limit, Path(spool_dir))
        if writer.count != expected_length:
            raise DeltaError(
                f"delta rebuilt {writer.count} bytes, expected {expected_length} (truncated?)"
            )
        if writer.hexdigest() != expected_sha256:
            raise DeltaError("rebuilt file does not match the expected SHA-256 (corrupt delta)")


def _decode_body(
    method: str, old: OldFile, stream: BinaryIO, writer: Any, limit: int, spool_dir: Path
) -> None:
    """Decode one method's stream (after the header) into ``writer``; refuse trailing data."""
    if method == "bsdiff":
        _apply_bsdiff(old, stream, writer, limit, spool_dir)
        return
    decode = _tensor.apply if method == "tensor" else _zwindow.apply
    # The decoders only call .read(): the counting view stands in for the stream.
    decode(old, cast(BinaryIO, _Counted(stream, limit)), writer)
    if stream.read(1):
        raise DeltaError("delta has trailing data after its end marker (corrupt)")


class ChunkStream(io.RawIOBase):
    """A read-only binary stream over an iterator of byte chunks (e.g. a bundle's verified
    plaintext from ``edgepkg.bundle.open_plaintext``), to pass to :func:`apply_delta`."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(buf), len(self._buf))
        buf[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _Counted:
    """A read-only view of a delta stream that refuses to read more than ``limit`` bytes."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._s = stream
        self._left = limit

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            if self._left <= 0:
                raise TooLargeError("delta is larger than the allowed maximum")
            n = self._left if n < 0 else n
        data = self._s.read(n)
        self._left -= len(data)
        return data


def _apply_bsdiff(
    old: OldFile, stream: BinaryIO, writer: BoundedWriter, limit: int, spool_dir: Path
) -> None:
    seekable = False
    try:
        seekable = stream.seekable()
    except (AttributeError, OSError):
        pass
    if seekable:
        start = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        if end - start > limit:
            raise TooLargeError("delta is larger than the allowed maximum")
        _bsdiff.apply(old, stream, start, end - start, writer)
        return
    # bsdiff reads three blocks at once: spool a non-seekable stream to a temp file first
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        n = 0
        while chunk := stream.read(BUF):
            n += len(chunk)
            if n > limit:
                raise TooLargeError("delta is larger than the allowed maximum")
            spool.write(chunk)
        _bsdiff.apply(old, spool, 0, n, writer)


assert set(METHODS) == set(METHOD_IDS)
