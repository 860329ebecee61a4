"""Child processes of the demo: each in its own session, all stopped together, none orphaned."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from edgepkg.errors import Error


class DemoStepError(Error):
    """A step of the demo failed (a child command, a server call, a timeout)."""


def python_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (the same virtualenv)."""
    return [sys.executable, "-m", module, *args]


def run_cmd(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    what: str = "",
) -> str:
    """Run a short command to completion; its stdout, or :class:`DemoStepError` with stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DemoStepError(f"{what or argv[0]} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DemoStepError(
            f"{what or ' '.join(argv[:4])} failed (exit {proc.returncode}): " + " | ".join(tail)
        )
    return proc.stdout


class Interrupted(Exception):
    """SIGTERM reached the demo (raised in the main thread by :func:`on_sigterm`)."""


_deferring = 0
_pending_signal: int | None = None


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """The demo's SIGTERM handler: raise :class:`Interrupted`, unless the main thread is between
    starting a child and registering it; then the signal is raised right after."""
    global _pending_signal
    if _deferring:
        _pending_signal = signum
        return
    raise Interrupted(f"signal {signum}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    global _deferring, _pending_signal
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread only; nothing to defer here
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending_signal is not None:
        signum, _pending_signal = _pending_signal, None
        raise Interrupted(f"signal {signum}")


class ProcessSet:
    """Long-running children (server, device daemons). Each starts a new session so that
    :meth:`stop_all` can signal its whole process group (gunicorn workers, validation runners)."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[object] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        with _signals_deferred():  # a SIGTERM inside Popen would orphan the new child
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
            self.procs[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [f"{n} (exit {p.returncode})" for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            _stop([proc], timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        _stop(procs, timeout)
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()  # type: ignore[attr-defined]
        self._logs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # the child leads its own session: pgid == pid


def _stop(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
    for p in procs:  # stragglers, and anything left in a group after its leader exited
        _signal_group(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
