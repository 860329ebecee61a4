"""A background writer so file output overlaps with compression/crypto in the caller's thread.

File writes release the GIL; with a bounded queue, memory stays at ``depth`` blocks.
"""

from __future__ import annotations

import queue
import threading
from types import TracebackType
from typing import Any, BinaryIO, Self

_STOP = object()


class BackgroundWriter:
    """``write(block)`` hands blocks to a thread that writes them to ``fh`` in order.

    ``close()`` (or leaving the ``with`` block) waits for every block to be written and re-raises
    any error of the writer thread in the caller.
    """

    def __init__(self, fh: BinaryIO, depth: int = 8, digest: Any = None) -> None:
        self._fh = fh
        self.digest = digest  # optional hashlib object updated with every block, in the thread
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgepkg-writer", daemon=True)
        self._thread.start()
        self.written = 0

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is _STOP:
                return
            if self._error is None:
                try:
                    if self.digest is not None:
                        self.digest.update(block)
                    self._fh.write(block)  # type: ignore[call-overload]
                except BaseException as exc:
                    self._error = exc

    def write(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)
        self.written += len(block)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:  # stop the thread, keep the original error
            self._error = self._error or exc
            self._queue.put(_STOP)
            self._thread.join()
