"""``edgepkg package --check-load``: prove the chosen runtime can load the model before signing.

Parsing tells us a file is well-formed; only the runtime can tell it will load (an op it lacks,
a tensor it cannot allocate). The load runs in a child process with a time limit, because a
hostile or broken model may crash or hang a native runtime, and the packager must survive it.

Runtimes: ``onnx`` -> onnxruntime (CPU), ``tflite`` -> ai_edge_litert (``allocate_tensors``),
``tflm`` -> tflite_micro. Other formats need hardware (TensorRT, Edge TPU) or have no runtime
(raw): :class:`UsageError`. A missing runtime package is a :class:`UsageError` naming what to
install; a model the runtime refuses is a :class:`FormatError` with the runtime's reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from edgepkg.errors import FormatError, UsageError

__all__ = ["LOAD_RUNTIMES", "check_load"]

LOAD_RUNTIMES = {
    "onnx": ("onnxruntime", "onnxruntime"),
    "tflite": ("ai_edge_litert", "ai-edge-litert"),
    "tflm": ("tflite_micro", "tflite-micro"),
}
_NOT_INSTALLED = 3
_REFUSED = 4


def check_load(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    requirements: Mapping[str, str | int] | None = None,
    timeout: float = 120.0,
) -> str:
    """Load the model with its format's runtime; return the format, or raise.

    Raises UsageError (format without a loadable runtime here, runtime not installed, timeout)
    or FormatError (the runtime refused the model).
    """
    from edgepkg.formats import detect, extract_model_bytes

    info = detect(path, format=format, extra_requirements=requirements)
    if info.format not in LOAD_RUNTIMES:
        raise UsageError(
            f"--check-load cannot load a {info.format} model on this machine (supported: "
            f"{', '.join(sorted(LOAD_RUNTIMES))}); package without --check-load and validate "
            "on the target device"
        )
    module, dist = LOAD_RUNTIMES[info.format]
    data = extract_model_bytes(path, info)  # a TFLM C array loads as its flatbuffer
    with tempfile.TemporaryDirectory(prefix="edgepkg-load-") as tmp:
        model = Path(path)
        if data is not None:
            model = Path(tmp) / "model.tflite"
            model.write_bytes(data)
        arena = info.requirements.get("arena_size")
        argv = [sys.executable, "-m", "edgepkg.formats.loadcheck", info.format, str(model),
                str(arena if isinstance(arena, int) else 0)]
        # the child imports this very module, wherever it was imported from
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, env=env)
        except subprocess.TimeoutExpired:
            raise UsageError(
                f"{module} did not finish loading {path} within {timeout:.0f} s"
            ) from None
    reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if proc.returncode == _NOT_INSTALLED:
        raise UsageError(
            f"--check-load needs the {info.format} runtime: pip install {dist} ({reason})"
        )
    if proc.returncode != 0:
        if proc.returncode < 0:
            reason = f"the runtime crashed (signal {-proc.returncode})"
        raise FormatError(f"{module} cannot load {path} as {info.format}: {reason}")
    return info.format


def _load(fmt: str, model: str, arena: int) -> None:  # pragma: no cover - runs in the child
    if fmt == "onnx":
        import onnxruntime

        onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    elif fmt == "tflite":
        from ai_edge_litert import interpreter

        interpreter.Interpreter(model_path=model).allocate_tensors()
    else:
        from tflite_micro.python.tflite_micro import runtime

        runtime.Interpreter.from_file(model, arena_size=arena or None)


def _main(argv: list[str]) -> int:  # pragma: no cover - runs in the child
    fmt, model, arena = argv[0], argv[1], int(argv[2])
    try:
        _load(fmt, model, arena)
    except ImportError as exc:
        print(exc, file=sys.stderr)
        return _NOT_INSTALLED
    except Exception as exc:
        print(" ".join(f"{type(exc).__name__}: {exc}".split())[:500], file=sys.stderr)
        return _REFUSED
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
