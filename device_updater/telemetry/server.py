"""The daemon's Unix socket for the inference app: newline-delimited JSON records.

The socket is created under a temporary name, set to mode 0660 (owner and the app's group)
and renamed into place, so it is never reachable with looser permissions. Input is hostile:
lines are limited to :data:`~.records.MAX_LINE_BYTES`, records are parsed strictly, the total
rate is limited by a token bucket, and at most ``max_connections`` clients are served at once.
What is refused is dropped and counted (``stats``), never an error for the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from device_updater.telemetry.records import MAX_LINE_BYTES, Record, RecordError, parse_record

log = logging.getLogger("edge_updater")


@dataclass
class SocketStats:
    accepted: int = 0
    malformed: int = 0
    oversized: int = 0
    rate_limited: int = 0
    refused_connections: int = 0


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    owner: TelemetrySocketServer


class _Handler(socketserver.StreamRequestHandler):
    timeout = 300  # an idle client is disconnected after 5 minutes

    def handle(self) -> None:
        owner = self.server.owner  # type: ignore[attr-defined]
        if not owner._enter():
            owner.stats.refused_connections += 1
            return
        try:
            owner._serve(self.rfile)
        except OSError:
            pass
        finally:
            owner._leave()


class TelemetrySocketServer:
    """Serves ``path`` in background threads; ``sink(record)`` receives each valid record."""

    def __init__(self, path: Path, sink: Callable[[Record], None], *,
                 max_records_per_s: float = 500.0, max_connections: int = 16,
                 max_line_bytes: int = MAX_LINE_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.sink = sink
        self.max_line_bytes = max_line_bytes
        self.max_connections = max_connections
        self.stats = SocketStats()
        self._bucket = TokenBucket(max_records_per_s, max_records_per_s * 2, clock)
        self._lock = threading.Lock()
        self._conns = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        server = _Server(str(tmp), _Handler, bind_and_activate=True)
        try:
            os.chmod(tmp, 0o660)
            os.replace(tmp, self.path)
        except OSError:
            server.server_close()
            raise
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="telemetry-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _enter(self) -> bool:
        with self._lock:
            if self._conns >= self.max_connections:
                return False
            self._conns += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._conns -= 1

    def _serve(self, rfile: BinaryIO) -> None:
        readline = rfile.readline
        skipping = False
        while True:
            line: bytes = readline(self.max_line_bytes + 1)
            if not line:
                return
            if skipping or not line.endswith(b"\n"):
                # Over-long line: drop it, and the rest of it up to the next newline.
                if not skipping:
                    with self._lock:
                        self.stats.oversized += 1
                skipping = not line.endswith(b"\n")
                continue
            self.handle_line(line)

    def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        with self._lock:
            if not self._bucket.take():
                self.stats.rate_limited += 1
                return
        try:
            record = parse_record(line)
        except RecordError as exc:
            with self._lock:
                self.stats.malformed += 1
            log.debug("telemetry record dropped: %s", exc)
            return
        self.sink(record)
        with self._lock:
            self.stats.accepted += 1
