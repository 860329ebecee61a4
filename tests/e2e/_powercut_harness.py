"""Helpers for the whole-cycle power-cut campaign (tests/e2e/test_device_powercut_e2e.py).

* :class:`ThrottledTargets`: WSGI middleware that slows the update server's ``/tuf/targets/``
  responses (full and ``Range`` ones alike) so that a kill lands in the middle of a download.
* :func:`run_updater`: runs the real ``edge-updater`` (``python -m device_updater``) in its own
  process group and cuts its power (``SIGKILL`` to the whole group, validation children
  included) when a :class:`Cut` fires. Cuts need no test hook in the updater: they watch the
  updater's own JSON log on stderr, where every persisted state is logged (message ``state``,
  field ``phase``) right after the atomic save, so ``Cut(phase="installing")`` kills the
  process just after INSTALLING hit the disk and ``Cut(phase="downloading", delay=0.4)`` kills
  it 0.4 s into the download.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class ThrottledTargets:
    """Serve TUF target bytes at about ``rate`` bytes/s in ``step``-byte pieces (the rest of the
    app is untouched). A client that disconnects (killed) simply ends the response."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, rate: float, step: int = 8192,
                 prefix: str = "/tuf/targets/") -> None:
        self.app, self.rate, self.step, self.prefix = app, rate, step, prefix

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        body = self.app(environ, start_response)
        if not str(environ.get("PATH_INFO", "")).startswith(self.prefix):
            return body
        return self._slow(body)

    def _slow(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                for i in range(0, len(chunk), self.step):
                    piece = chunk[i:i + self.step]
                    time.sleep(len(piece) / self.rate)
                    yield piece
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


@dataclass(frozen=True)
class Cut:
    """Where to cut the power: ``delay`` seconds after the ``nth`` log record saying state
    ``phase`` was saved, or, with ``message``, the ``nth`` record with that message (e.g.
    ``"resuming download"``); neither: after the process started."""

    phase: str | None
    delay: float = 0.0
    nth: int = 1
    message: str | None = None

    def label(self) -> str:
        where = self.message or self.phase or "start"
        return f"{where}+{self.delay:.3f}s" if self.delay else f"at {where}"

    def matches(self, record: dict[str, Any]) -> bool:
        if self.message is not None:
            return record.get("message") == self.message
        return record.get("message") == "state" and record.get("phase") == self.phase


@dataclass
class Run:
    rc: int
    killed: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    stderr_tail: str = ""
    seconds: float = 0.0
    phase_times: list[tuple[str, float]] = field(default_factory=list)

    def saved_phases(self) -> list[str]:
        return [p for p, _ in self.phase_times]

    def logged(self, message: str) -> bool:
        return any(r.get("message") == message for r in self.records)


def run_updater(config: Path, command: str = "check", *, cut: Cut | None = None,
                timeout: float = 120.0, env: dict[str, str] | None = None) -> Run:
    """Run ``edge-updater -c CONFIG COMMAND``; cut its power per ``cut``; collect its log."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_updater", "-c", str(config), command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=REPO,
        start_new_session=True)
    assert proc.stderr is not None and proc.stdout is not None
    killed = threading.Event()
    lock = threading.Lock()

    def power_cut() -> None:
        with lock:
            if proc.poll() is None and not killed.is_set():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group: validation children too
                    killed.set()
                except ProcessLookupError:
                    pass

    timers: list[threading.Timer] = []

    def arm(delay: float) -> None:
        if delay <= 0:
            power_cut()
        else:
            t = threading.Timer(delay, power_cut)
            t.daemon = True
            timers.append(t)
            t.start()

    watchdog = threading.Timer(timeout, power_cut)
    watchdog.daemon = True
    watchdog.start()
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    if cut is not None and cut.phase is None and cut.message is None:
        arm(cut.delay)
    records: list[dict[str, Any]] = []
    phase_times: list[tuple[str, float]] = []
    tail: list[str] = []
    seen = 0
    for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip("\n")
        tail = [*tail, line][-40:]
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        records.append(rec)
        if rec.get("message") == "state" and isinstance(rec.get("phase"), str):
            phase_times.append((rec["phase"], time.monotonic() - t0))
        if cut is not None and cut.matches(rec) and not killed.is_set():
            seen += 1
            if seen == cut.nth:
                arm(cut.delay)
    rc = proc.wait()
    watchdog.cancel()
    for t in timers:
        t.cancel()
    reader.join(timeout=10)
    if time.monotonic() - t0 >= timeout:
        raise AssertionError(f"edge-updater {command} hung for {timeout}s:\n" + "\n".join(tail))
    return Run(rc=rc, killed=killed.is_set() and rc == -signal.SIGKILL, records=records,
               stdout=b"".join(out_chunks).decode(errors="replace"),
               stderr_tail="\n".join(tail), seconds=time.monotonic() - t0,
               phase_times=phase_times)
