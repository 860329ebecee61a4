"""Loading the device's holdout set (hostile input: sizes, dtypes and shapes are checked).

Either a directory with ``inputs.npy`` and ``labels.npy``, or one ``.npz`` file with arrays
``inputs`` and ``labels``. ``allow_pickle=False`` always; the array headers are read and checked
against the size limit *before* any data is loaded, and ``.npz`` members are checked by their
declared uncompressed size (no decompression bombs).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from device_updater.errors import HoldoutError

MAX_HOLDOUT_BYTES = 256 << 20
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Holdout:
    """Validated holdout arrays: ``inputs`` ``[N, ...]`` numeric, ``labels`` ``[N]`` integers."""

    inputs: np.ndarray
    labels: np.ndarray
    digest: str  # SHA-256 over both arrays: identifies this holdout in the result cache

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])


def _check_header(fh: BinaryIO, what: str, limit: int) -> None:
    try:
        major, _ = np.lib.format.read_magic(fh)
        if major == 1:
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif major in (2, 3):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise HoldoutError(f"{what}: unsupported .npy version {major}")
    except (ValueError, OSError) as exc:
        raise HoldoutError(f"{what} is not a valid .npy array: {exc}") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise HoldoutError(f"{what} must hold numbers, not {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if nbytes > limit:
        raise HoldoutError(f"{what} is {nbytes} bytes, over the {limit}-byte holdout limit")


def _load_npy(path: Path, limit: int) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            _check_header(fh, path.name, limit)
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise HoldoutError(f"holdout file {path} is missing") from None
    except (ValueError, OSError) as exc:
        raise HoldoutError(f"cannot read {path}: {exc}") from None


def _load_npz(path: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: i for i in zf.infolist()}
            for key in ("inputs", "labels"):
                if f"{key}.npy" not in members:
                    raise HoldoutError(f"{path.name} has no '{key}' array")
            out = []
            for key in ("inputs", "labels"):
                info = members[f"{key}.npy"]
                if info.file_size > limit + 4096:
                    raise HoldoutError(f"{path.name}:{key} expands to {info.file_size} bytes, "
                                       f"over the {limit}-byte holdout limit")
                with zf.open(info) as fh:
                    _check_header(fh, f"{path.name}:{key}", limit)  # type: ignore[arg-type]
                with zf.open(info) as fh:
                    out.append(np.load(fh, allow_pickle=False))  # type: ignore[arg-type]
            return out[0], out[1]
    except FileNotFoundError:
        raise HoldoutError(f"holdout file {path} is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise HoldoutError(f"cannot read {path}: {exc}") from None


def load_holdout(path: Path, *, max_bytes: int = MAX_HOLDOUT_BYTES) -> Holdout:
    """Load ``path`` (a directory with inputs.npy/labels.npy, or an .npz); raise HoldoutError."""
    path = Path(path)
    if path.is_dir():
        inputs = _load_npy(path / "inputs.npy", max_bytes)
        labels = _load_npy(path / "labels.npy", max_bytes)
    elif path.suffix == ".npz":
        inputs, labels = _load_npz(path, max_bytes)
    elif not path.exists():
        raise HoldoutError(f"holdout {path} does not exist")
    else:
        raise HoldoutError(f"holdout {path} must be a directory (inputs.npy + labels.npy) or .npz")
    return make_holdout(inputs, labels)


def make_holdout(inputs: np.ndarray, labels: np.ndarray) -> Holdout:
    """Check arrays and build a :class:`Holdout` (also for tests and in-memory sets)."""
    if inputs.ndim < 2:
        raise HoldoutError(f"holdout inputs must be [N, ...] with N samples, got shape "
                           f"{inputs.shape}")
    n = inputs.shape[0]
    if not 1 <= n <= MAX_SAMPLES:
        raise HoldoutError(f"holdout must have 1..{MAX_SAMPLES} samples, has {n}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise HoldoutError(f"holdout labels must be [N={n}], got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise HoldoutError(f"holdout labels must be integers (class ids), not {labels.dtype}")
    if inputs.dtype.kind == "f" and not np.isfinite(inputs).all():
        raise HoldoutError("holdout inputs contain NaN or infinity")
    h = hashlib.sha256()
    for arr in (inputs, labels):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return Holdout(inputs=inputs, labels=labels.astype(np.int64), digest=h.hexdigest())
