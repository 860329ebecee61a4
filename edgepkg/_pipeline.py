"""Threads that keep both cores busy with bounded memory.

* :class:`BackgroundWriter`: file output (and a digest of it) overlaps with the caller's work.
* :class:`OrderedPool`: a function runs over items on a few worker threads and the results come
  back in submission order, with at most ``depth`` items in flight.

zstd, AES-GCM (``cryptography``), hashlib and file I/O all release the GIL on large buffers, so
plain threads run them in parallel; bounded queues keep memory at ``depth`` blocks whatever the
file size.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, BinaryIO, Generic, Self, TypeVar

T = TypeVar("T")
R = TypeVar("R")

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


class OrderedPool(Generic[T, R]):
    """``submit(item)`` runs ``fn(item)`` on ``workers`` threads; ``results()`` yields in order.

    ``submit`` blocks (by taking the oldest result itself) once ``depth`` items are in flight, so
    at most ``depth`` inputs or outputs are held. Results ``submit`` had to take are queued for
    ``results()``; an error of ``fn`` surfaces, in order, where its result would have been.
    Always leave through ``close()`` or the ``with`` block: it cancels what has not started.
    """

    def __init__(self, fn: Callable[[T], R], *, workers: int = 2, depth: int = 8) -> None:
        self._fn = fn
        self._depth = max(1, depth)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgepkg")
        self._pending: deque[Future[R]] = deque()

    def submit(self, item: T) -> None:
        self._pending.append(self._executor.submit(self._fn, item))

    def full(self) -> bool:
        return len(self._pending) >= self._depth

    def __len__(self) -> int:
        return len(self._pending)

    def next_result(self) -> R:
        """Wait for and return the oldest result (IndexError when nothing is in flight)."""
        return self._pending.popleft().result()

    def results(self) -> Iterator[R]:
        """Drain: every remaining result, in submission order."""
        while self._pending:
            yield self.next_result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
