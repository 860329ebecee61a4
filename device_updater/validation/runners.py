"""Model runners: every inference runs in a separate process with a time limit.

A runtime can crash (segfault in native code), hang or exhaust memory on a hostile or broken
model; the updater must survive all of it. Runners therefore never load a model in the daemon
process: they start a child in its own session, give it ``timeout`` seconds, kill its whole
process group on expiry, and map every failure to a typed error:

* killed by a signal            -> :class:`RunnerCrashedError`
* over the time limit           -> :class:`RunnerTimeoutError`
* runtime missing (exit 3)      -> :class:`RuntimeNotInstalledError`
* any other failure             -> :class:`RunnerFailedError`

**External command protocol** (``ExternalCommandRunner``, version ``edgepkg-runner-v1``): the
command is started with argv as configured, gets one JSON object on stdin::

    {"protocol": "edgepkg-runner-v1", "model": "/run/edgepkg/x.bin", "format": "raw",
     "inputs": "/tmp/.../inputs.npy", "outputs": "/tmp/.../outputs.npy"}

``inputs`` is a ``.npy`` array ``[N, ...]``. The command must exit 0 after either writing a
``.npy`` array ``[N, C]`` (scores) or ``[N]`` (class ids) to ``outputs``, or printing as its
last stdout line ``{"predictions": [class id, ...]}``. It may add ``"latencies_ms": [...]``
(per-sample) to that line; otherwise latency is the wall time divided by N. Exit status 3
means "this runtime is not installed here".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device_updater.errors import (
    RunnerCrashedError,
    RunnerFailedError,
    RunnerTimeoutError,
    RuntimeNotInstalledError,
    UntrustedDeviceInputError,
    ValidationError,
)

PROTOCOL = "edgepkg-runner-v1"
EXIT_NOT_INSTALLED = 3
EXIT_CONTRACT = 4
EXIT_MEMORY = 5
MAX_STDOUT = 8 << 20
MAX_OUTPUT_BYTES = 512 << 20
BUILTIN_FORMATS = ("onnx", "tflite", "tflm", "edgetpu", "tensorrt")


class IoContractError(RunnerFailedError, UntrustedDeviceInputError):
    """The holdout or the model's outputs do not fit the model's declared inputs/outputs
    (dtype, shape, names): the gate rejects rather than cast or reshape."""


class MemoryBudgetError(RunnerFailedError):
    """The model needed more memory than the policy's budget allowed (the runner's limit)."""


@dataclass(frozen=True)
class RunOutput:
    outputs: np.ndarray
    latencies_ms: list[float]
    runtime: str
    wall_s: float


class Runner(Protocol):
    """Runs ``model`` on the inputs file and returns its outputs (in a separate process)."""

    @property
    def name(self) -> str: ...

    def run(self, model: Path, fmt: str, inputs: Path, workdir: Path, *,
            timeout: float) -> RunOutput: ...


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_process(argv: Sequence[str], request: Mapping[str, Any], *, timeout: float,
                env: Mapping[str, str] | None = None, what: str,
                codes_known: bool = False) -> tuple[str, float]:
    """Run ``argv`` with ``request`` as JSON on stdin; return (stdout, wall seconds) or raise.

    ``codes_known``: the child is our worker, whose exit 4/5 mean an I/O contract break or an
    exceeded memory budget (an external command's 4 or 5 is just a failure)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=dict(env) if env is not None else None,
            close_fds=True,
        )
    except OSError as exc:
        raise RuntimeNotInstalledError(f"{what}: cannot start {argv[0]!r}: {exc}") from None
    try:
        out, err = proc.communicate(json.dumps(dict(request)).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise RunnerTimeoutError(
            f"{what} did not finish within {timeout:g}s and was killed (model hangs or is too "
            "slow for this device)") from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        # Grandchildren left in the group (a runner that forked) die with it.
        _kill_group(proc, only_group=True)
    wall = time.monotonic() - t0
    tail = err.decode("utf-8", "replace").strip()[-600:]
    rc = proc.returncode
    if rc < 0:
        raise RunnerCrashedError(f"{what} crashed ({_signal_name(-rc)})"
                                 + (f": {tail}" if tail else ""))
    if rc == EXIT_NOT_INSTALLED:
        raise RuntimeNotInstalledError(f"{what}: runtime not installed: {tail or 'exit 3'}")
    special: dict[int, type[ValidationError]] = {EXIT_CONTRACT: IoContractError,
                                                 EXIT_MEMORY: MemoryBudgetError}
    if rc in special and codes_known:
        raise special[rc](f"{what}: {tail or 'no message'}")
    if rc != 0:
        raise RunnerFailedError(f"{what} failed with exit status {rc}: {tail or 'no message'}")
    if len(out) > MAX_STDOUT:
        raise RunnerFailedError(f"{what} printed more than {MAX_STDOUT} bytes")
    return out.decode("utf-8", "replace"), wall


def _kill_group(proc: subprocess.Popen[bytes], *, only_group: bool = False) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not only_group:
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _last_json_line(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                break
            if isinstance(obj, dict):
                return obj
            break
    return {}


def load_outputs(path: Path, what: str) -> np.ndarray:
    """Read a runner's outputs ``.npy`` (no pickles, bounded size)."""
    try:
        if path.stat().st_size > MAX_OUTPUT_BYTES:
            raise RunnerFailedError(f"{what} wrote more than {MAX_OUTPUT_BYTES} bytes of outputs")
        return np.asarray(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise RunnerFailedError(f"{what} exited 0 but wrote no outputs") from None
    except (ValueError, OSError) as exc:
        raise RunnerFailedError(f"{what} wrote unreadable outputs: {exc}") from None


def _latencies(obj: Mapping[str, Any], n: int, wall: float) -> list[float]:
    lat = obj.get("latencies_ms")
    if isinstance(lat, list) and lat and all(isinstance(v, int | float) for v in lat):
        return [float(v) for v in lat][:n]
    return [wall * 1000.0 / max(n, 1)] * max(n, 1)


@dataclass(frozen=True)
class BuiltinRunner:
    """The bundled runtimes (ONNX Runtime, LiteRT, TFLite Micro, Edge TPU delegate, TensorRT)
    in a ``python -m device_updater.validation._worker`` child.

    ``options``: ``threads`` (default 1), ``arena_size`` (TFLM), ``delegate`` (Edge TPU library),
    ``memory_limit_bytes`` (RLIMIT_AS of the child).
    """

    python: str = sys.executable
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "builtin"

    def run(self, model: Path, fmt: str, inputs: Path, workdir: Path, *,
            timeout: float) -> RunOutput:
        if fmt not in BUILTIN_FORMATS:
            raise RuntimeNotInstalledError(
                f"no built-in runner for format {fmt!r}; configure an external runner command")
        obj, outs, wall = self.request(
            {"mode": "run", "format": fmt, "model": str(model), "inputs": str(inputs)},
            workdir, timeout=timeout, what=f"{fmt} runner")
        if not outs:
            raise RunnerFailedError(f"{fmt} runner: the model has no outputs")
        # The old single-array view: the model's first output, stacked over samples as is.
        outputs = outs[0]
        return RunOutput(outputs, _latencies(obj, outputs.shape[0], wall),
                         str(obj.get("runtime") or fmt), wall)

    def request(self, req: Mapping[str, Any], workdir: Path, *, timeout: float, what: str,
                options: Mapping[str, Any] | None = None,
                ) -> tuple[dict[str, Any], list[np.ndarray], float]:
        """One worker request; returns its JSON line, the output arrays (``o0``, ``o1``, ...)
        or ``a_ms``/``b_ms`` for ABAB, and the wall time."""
        out_path = workdir / f"outputs-{os.getpid()}-{time.monotonic_ns()}.npz"
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        stdout, wall = run_process(
            [self.python, "-m", "device_updater.validation._worker"],
            {**dict(req), "outputs": str(out_path),
             "options": {**dict(self.options), **dict(options or {})}},
            timeout=timeout, env=env, what=what, codes_known=True,
        )
        obj = _last_json_line(stdout)
        try:
            if out_path.stat().st_size > MAX_OUTPUT_BYTES:
                raise RunnerFailedError(f"{what} wrote more than {MAX_OUTPUT_BYTES} bytes")
            with np.load(out_path, allow_pickle=False) as z:
                keys = sorted(z.files, key=lambda k: (len(k), k))
                arrays = [z[k] for k in keys]
        except FileNotFoundError:
            raise RunnerFailedError(f"{what} exited 0 but wrote no outputs") from None
        except (ValueError, OSError, EOFError) as exc:
            raise RunnerFailedError(f"{what} wrote unreadable outputs: {exc}") from None
        finally:
            out_path.unlink(missing_ok=True)
        return obj, arrays, wall


@dataclass(frozen=True)
class ExternalCommandRunner:
    """An operator-configured command speaking the ``edgepkg-runner-v1`` protocol (above)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None

    @property
    def name(self) -> str:
        return f"external:{Path(self.argv[0]).name}" if self.argv else "external"

    def run(self, model: Path, fmt: str, inputs: Path, workdir: Path, *,
            timeout: float) -> RunOutput:
        if not self.argv:
            raise RuntimeNotInstalledError("external runner command is empty")
        out_path = workdir / "outputs.npy"
        what = f"external runner {self.argv[0]}"
        stdout, wall = run_process(
            self.argv,
            {"protocol": PROTOCOL, "model": str(model), "format": fmt, "inputs": str(inputs),
             "outputs": str(out_path)},
            timeout=timeout, env=self.env, what=what,
        )
        obj = _last_json_line(stdout)
        preds = obj.get("predictions")
        if out_path.exists():
            outputs = load_outputs(out_path, what)
        elif isinstance(preds, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in preds
        ):
            outputs = np.asarray(preds, dtype=np.int64)
        else:
            raise RunnerFailedError(f"{what} wrote no outputs file and printed no predictions")
        return RunOutput(outputs, _latencies(obj, outputs.shape[0], wall), self.name, wall)


def runner_for(fmt: str, *, external: Mapping[str, Sequence[str]] | None = None,
               options: Mapping[str, Any] | None = None) -> Runner:
    """The runner for ``fmt``: an external command configured for it, else the built-in one."""
    if external and fmt in external:
        return ExternalCommandRunner(tuple(external[fmt]))
    return BuiltinRunner(options=dict(options or {}))
