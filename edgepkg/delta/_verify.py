"""Verification while encoding: the delta stream is decoded in a second thread, as it is
written, by the same decoder a device runs, and every rebuilt byte is compared with the byte of
the new file the encoder read (whose SHA-256 goes into the header).  Memory: a bounded queue.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from edgepkg.delta._io import OldFile
from edgepkg.errors import DeltaError, TooLargeError

_DEPTH = 8  # chunks the verifier may lag behind the encoder (bounds its memory)


class _Pipe:
    """A blocking byte stream fed by another thread (``None`` ends it)."""

    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self._q = q
        self._buf = b""
        self._pos = 0
        self.eof = False

    def poll(self) -> None:
        """Consume one item if there is one (draining after an error)."""
        if not self.eof:
            try:
                self.eof = self._q.get(timeout=0.01) is None
            except queue.Empty:
                pass

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0 and not (self.eof and self._pos >= len(self._buf)):
            if self._pos >= len(self._buf):
                item = self._q.get()
                if item is None:
                    self.eof = True
                    break
                self._buf, self._pos = item, 0
                continue
            take = len(self._buf) - self._pos if n < 0 else min(n, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos : self._pos + take])
            self._pos += take
            n = n - take if n > 0 else n
        return b"".join(parts)


class _CompareWriter:
    """The decoder's output: compared with the expected bytes instead of stored."""

    def __init__(self, expected: _Pipe, limit: int) -> None:
        self._expected = expected
        self.limit = limit
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if self.count + n > self.limit:
            raise TooLargeError("delta rebuilds more bytes than the new file has")
        if self._expected.read(n) != data:
            raise DeltaError(f"verification failed: the delta does not rebuild the new file "
                             f"(first difference within bytes {self.count}..{self.count + n})")
        self.count += n


Decoder = Callable[[OldFile, BinaryIO, _CompareWriter], None]


class PipelinedVerifier:
    """Feed it the new file's bytes (:meth:`expect`) and the delta body (:meth:`body`) as they
    are produced; :meth:`finish` raises unless the body decodes to exactly those bytes."""

    def __init__(self, decode: Decoder, old_path: str, old_len: int, new_len: int) -> None:
        self._records: queue.Queue[bytes | None] = queue.Queue(maxsize=_DEPTH)
        self._expected: queue.Queue[bytes | None] = queue.Queue(maxsize=_DEPTH)
        self._decode = decode
        self._old_path = old_path
        self._old_len = old_len
        self._new_len = new_len
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="delta-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream, expected = _Pipe(self._records), _Pipe(self._expected)
        try:
            with open(self._old_path, "rb") as fh:
                writer = _CompareWriter(expected, self._new_len)
                self._decode(OldFile(fh, self._old_len), stream, writer)  # type: ignore[arg-type]
            if stream.read(1):
                raise DeltaError("verification failed: data after the delta's end marker")
            if writer.count != self._new_len or expected.read(1):
                raise DeltaError(f"verification failed: the delta rebuilds {writer.count} "
                                 f"bytes, the new file has {self._new_len}")
        except Exception as exc:
            self.error = exc
        finally:  # drain both queues together: the feeder may be blocked on either
            while not (stream.eof and expected.eof):
                stream.poll()
                expected.poll()

    def expect(self, data: bytes) -> None:
        if data and self.error is None:  # after an error nothing more is needed
            self._expected.put(data)

    def body(self, data: bytes) -> None:
        if data and self.error is None:
            self._records.put(bytes(data))

    def finish(self) -> None:
        """Close both streams, wait for the decoder, raise what it found."""
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """End both streams and wait for the thread (idempotent; also after an error)."""
        if self._thread.is_alive() or not self._closed:
            if not self._closed:
                self._closed = True
                self._records.put(None)
                self._expected.put(None)
            self._thread.join()


class BackgroundSha256:
    """SHA-256 of bytes fed in order, computed in a worker thread (hashlib drops the GIL)."""

    def __init__(self) -> None:
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=4 * _DEPTH)
        self._sha = hashlib.sha256()
        self.count = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="delta-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            self._sha.update(item)

    def update(self, data: bytes) -> None:
        if data:
            self.count += len(data)
            self._q.put(data)

    def hexdigest(self) -> str:
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._q.put(None)
        self._thread.join()
