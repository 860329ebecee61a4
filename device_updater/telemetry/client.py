"""The inference app's telemetry client: stdlib only, never raises, never blocks for long.

::

    from device_updater.telemetry.client import TelemetryClient
    tel = TelemetryClient("/run/edge-updater/telemetry.sock")
    tel.inference("clf", latency_ms=3.1, prediction=4, confidence=0.93,
                  features=[0.2, 1.7], prediction_id="req-81")
    tel.feedback("req-81", label=4)          # when the true label becomes known
    tel.error("clf", message="CUDA OOM")

Fire-and-forget: records go into a bounded buffer and are written to the daemon's Unix socket
with a short timeout; when the daemon is down the buffer keeps the newest ``max_buffer``
records (older ones are counted in ``dropped``) and the client reconnects at most once per
``retry_s``. Nothing here can raise into the app (a telemetry fault must never break
inference). Raw inputs are never sent: ``features`` is a short summary (see :func:`summarise`).
This module must stay importable on its own (the app may vendor this one file).
"""

from __future__ import annotations

import collections
import json
import math
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

MAX_FEATURES = 32


def summarise(sample: Iterable[float]) -> list[float]:
    """Per-sample summary for inputs with more than 32 values (images, audio): mean, std, min,
    max, p10, p50, p90 of the flattened values, as the reference profile computes them."""
    xs = sorted(float(x) for x in sample)
    n = len(xs)
    if not n:
        return []
    mean = math.fsum(xs) / n
    std = math.sqrt(max(math.fsum((x - mean) ** 2 for x in xs) / n, 0.0))

    def q(p: float) -> float:  # numpy's "inverted_cdf" quantile
        return xs[max(0, min(n - 1, math.ceil(p * n) - 1))]

    return [mean, std, xs[0], xs[-1], q(0.1), q(0.5), q(0.9)]


def features_of(sample: Sequence[float]) -> list[float]:
    """What to send as ``features`` for one flattened input sample."""
    return [float(x) for x in sample] if len(sample) <= MAX_FEATURES else summarise(sample)


class TelemetryClient:
    def __init__(self, socket_path: str, *, max_buffer: int = 1000, timeout_s: float = 0.05,
                 retry_s: float = 1.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.dropped = 0
        self.sent = 0
        self._buf: collections.deque[bytes] = collections.deque()
        self._max = max(1, max_buffer)
        self._sock: socket.socket | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    # -- records ---------------------------------------------------------------------------------
    def inference(self, model: str, *, latency_ms: float | None = None,
                  prediction: int | float | None = None, confidence: float | None = None,
                  features: Sequence[float] | None = None, prediction_id: str | None = None,
                  version: str | None = None) -> None:
        self.send({"type": "inference", "model": model, "latency_ms": latency_ms,
                   "prediction": prediction, "confidence": confidence,
                   "features": list(features) if features is not None else None,
                   "prediction_id": prediction_id, "version": version})

    def error(self, model: str, *, message: str | None = None, count: int = 1,
              version: str | None = None) -> None:
        self.send({"type": "error", "model": model, "message": (message or "")[:200] or None,
                   "count": count, "version": version})

    def feedback(self, prediction_id: str, label: int | float) -> None:
        self.send({"type": "feedback", "prediction_id": prediction_id, "label": label})

    def accuracy(self, model: str, *, labelled: int, correct: int,
                 version: str | None = None) -> None:
        self.send({"type": "accuracy", "model": model, "labelled": labelled,
                   "correct": correct, "version": version})

    def send(self, record: dict[str, Any]) -> None:
        """Queue one record (None fields left out) and try to deliver the buffer."""
        try:
            line = json.dumps({k: v for k, v in record.items() if v is not None},
                              separators=(",", ":"), allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError):
            self.dropped += 1
            return
        self.send_line(line)

    def send_line(self, line: bytes) -> None:
        """Queue one already-encoded record line (ending in a newline) and try to deliver."""
        with self._lock:
            if len(self._buf) >= self._max:
                self._buf.popleft()
                self.dropped += 1
            self._buf.append(line)
            self._deliver()

    def flush(self) -> bool:
        """Try to deliver everything buffered now; True when the buffer is empty."""
        with self._lock:
            self._next_try = 0.0
            self._deliver()
            return not self._buf

    def close(self) -> None:
        with self._lock:
            self._drop_socket()

    # -- delivery --------------------------------------------------------------------------------
    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout_s)
            s.connect(self.socket_path)
        except OSError:
            self._next_try = now + self.retry_s
            return False
        self._sock = s
        return True

    def _deliver(self) -> None:
        try:
            while self._buf:
                if self._sock is None and not self._connect():
                    return
                assert self._sock is not None
                chunk = b"".join(list(self._buf)[:64])
                n = min(64, len(self._buf))
                try:
                    self._sock.sendall(chunk)
                except OSError:
                    # A partial write may have cut a line: the daemon drops that one line; a new
                    # connection starts clean. The records stay buffered.
                    self._drop_socket()
                    self._next_try = time.monotonic() + self.retry_s
                    return
                for _ in range(n):
                    self._buf.popleft()
                self.sent += n
        except Exception:  # never raise into the inference app
            self._drop_socket()
