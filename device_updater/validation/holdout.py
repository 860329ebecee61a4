"""Loading the device's holdout set (hostile input: sizes, dtypes and shapes are checked).

Either a directory or one ``.npz`` file with arrays ``inputs`` and ``labels``. A directory holds
(format documented in docs/validation.md):

* ``inputs.npy`` ``[N, ...]``, or ``inputs.npz`` with one ``[N, ...]`` array per model input name;
* ``labels.npy`` ``[N]``: class ids (classification; for anomaly scores 0 = normal, 1 = anomaly)
  or ``[N]``/``[N, D]`` floats (regression); for detection ``boxes.npy`` ``[M, 6]`` rows
  ``(sample index, class id, x1, y1, x2, y2)`` instead;
* optionally ``slices.npz``: one boolean ``[N]`` mask per slice tag (e.g. ``night``).
 ``allow_pickle=False`` always; the array headers are read and checked
against the size limit *before* any data is loaded, and ``.npz`` members are checked by their
declared uncompressed size (no decompression bombs).
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from device_updater.errors import HoldoutError

MAX_HOLDOUT_BYTES = 256 << 20
MAX_SAMPLES = 1_000_000


TASKS = ("classification", "regression", "anomaly", "detection")
MAX_SLICES = 64


@dataclass(frozen=True)
class Holdout:
    """Validated holdout arrays: ``inputs`` ``[N, ...]`` numeric (the first or only input),
    ``labels`` ``[N]`` integers (or floats for regression; empty for detection)."""

    inputs: np.ndarray
    labels: np.ndarray
    digest: str  # SHA-256 over every array: identifies this holdout in the result cache
    named_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # inputs.npz, by name
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # tag -> bool [N]
    boxes: np.ndarray | None = None  # detection: [M, 6] (sample, class, x1, y1, x2, y2)
    task: str = "classification"

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def input_arrays(self) -> dict[str, np.ndarray]:
        """What the runner feeds: ``{"": inputs}`` when unnamed, else the named arrays."""
        return dict(self.named_inputs) if self.named_inputs else {"": self.inputs}


def _check_header(fh: IO[bytes], what: str, limit: int) -> None:
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
        return np.asarray(np.load(path, allow_pickle=False))
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
                    _check_header(fh, f"{path.name}:{key}", limit)
                with zf.open(info) as fh:
                    out.append(np.load(fh, allow_pickle=False))
            return out[0], out[1]
    except FileNotFoundError:
        raise HoldoutError(f"holdout file {path} is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise HoldoutError(f"cannot read {path}: {exc}") from None


def _load_npz_dict(path: Path, limit: int) -> dict[str, np.ndarray]:
    """Every member of an .npz (named inputs, slice masks), each checked before loading."""
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_SLICES + 64:
                raise HoldoutError(f"{path.name} has {len(infos)} arrays; at most "
                                   f"{MAX_SLICES + 64} are read")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise HoldoutError(f"{path.name}: member {info.filename!r} is not an array")
                key = info.filename[:-4]
                if info.file_size > limit + 4096:
                    raise HoldoutError(f"{path.name}:{key} expands to {info.file_size} bytes, "
                                       f"over the {limit}-byte holdout limit")
                with zf.open(info) as fh:
                    _check_header(fh, f"{path.name}:{key}", limit)
                with zf.open(info) as fh:
                    out[key] = np.load(fh, allow_pickle=False)
    except FileNotFoundError:
        raise HoldoutError(f"holdout file {path} is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise HoldoutError(f"cannot read {path}: {exc}") from None
    return out


def load_holdout(path: Path, *, max_bytes: int = MAX_HOLDOUT_BYTES,
                 task: str = "classification") -> Holdout:
    """Load ``path`` (a directory as in the module doc, or an .npz with ``inputs`` and
    ``labels``); ``task`` (from the policy's metric) says what the labels must be.
    Raise :class:`HoldoutError` with what is wrong."""
    path = Path(path)
    named: dict[str, np.ndarray] = {}
    slices: dict[str, np.ndarray] = {}
    boxes = None
    labels: np.ndarray | None = None
    if path.is_dir():
        if (path / "inputs.npz").exists():
            named = _load_npz_dict(path / "inputs.npz", max_bytes)
            if not named:
                raise HoldoutError(f"{path / 'inputs.npz'} holds no arrays")
            inputs = next(iter(named.values()))
        else:
            inputs = _load_npy(path / "inputs.npy", max_bytes)
        if task == "detection":
            boxes = _load_npy(path / "boxes.npy", max_bytes)
        else:
            labels = _load_npy(path / "labels.npy", max_bytes)
        if (path / "slices.npz").exists():
            slices = _load_npz_dict(path / "slices.npz", max_bytes)
    elif path.suffix == ".npz":
        inputs, labels = _load_npz(path, max_bytes)
    elif not path.exists():
        raise HoldoutError(f"holdout {path} does not exist")
    else:
        raise HoldoutError(f"holdout {path} must be a directory (inputs.npy + labels.npy) or .npz")
    return make_holdout(inputs, labels if labels is not None else np.zeros(0, np.int64),
                        named_inputs=named, slices=slices, boxes=boxes, task=task)


def make_holdout(inputs: np.ndarray, labels: np.ndarray, *,
                 named_inputs: dict[str, np.ndarray] | None = None,
                 slices: dict[str, np.ndarray] | None = None,
                 boxes: np.ndarray | None = None, task: str = "classification") -> Holdout:
    """Check arrays and build a :class:`Holdout` (also for tests and in-memory sets)."""
    if task not in TASKS:
        raise HoldoutError(f"unknown holdout task {task!r}; one of {list(TASKS)}")
    named = dict(named_inputs or {})
    for name, arr in named.items():
        if arr.shape[:1] != inputs.shape[:1]:
            raise HoldoutError(f"holdout input {name!r} has {arr.shape[:1]} samples, the first "
                               f"input {inputs.shape[:1]}: every input needs the same N")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise HoldoutError(f"holdout input {name!r} contains NaN or infinity")
    if inputs.ndim < 2:
        raise HoldoutError(f"holdout inputs must be [N, ...] with N samples, got shape "
                           f"{inputs.shape}")
    n = inputs.shape[0]
    if not 1 <= n <= MAX_SAMPLES:
        raise HoldoutError(f"holdout must have 1..{MAX_SAMPLES} samples, has {n}")
    if task == "detection":
        if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 6:
            raise HoldoutError("a detection holdout needs boxes.npy [M, 6]: (sample index, "
                               "class id, x1, y1, x2, y2) per labelled box")
        if not np.isfinite(boxes).all() or (boxes.shape[0] and (
                boxes[:, 0].min() < 0 or boxes[:, 0].max() >= n)):
            raise HoldoutError(f"holdout boxes must be finite with sample index in 0..{n - 1}")
    elif task == "regression":
        if labels.ndim not in (1, 2) or labels.shape[0] != n:
            raise HoldoutError(f"holdout labels must be [N={n}] or [N, D], got {labels.shape}")
        if labels.dtype.kind not in "iuf" or (labels.dtype.kind == "f"
                                              and not np.isfinite(labels).all()):
            raise HoldoutError("regression labels must be finite numbers")
    else:
        if labels.ndim != 1 or labels.shape[0] != n:
            raise HoldoutError(f"holdout labels must be [N={n}], got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise HoldoutError(f"holdout labels must be integers (class ids), not "
                               f"{labels.dtype}")
        if task == "anomaly" and not np.isin(labels, (0, 1)).all():
            raise HoldoutError("anomaly labels must be 0 (normal) or 1 (anomaly)")
    if inputs.dtype.kind == "f" and not np.isfinite(inputs).all():
        raise HoldoutError("holdout inputs contain NaN or infinity")
    masks: dict[str, np.ndarray] = {}
    for tag, m in (slices or {}).items():
        if m.dtype != np.bool_ or m.shape != (n,):
            raise HoldoutError(f"slice {tag!r} must be a boolean mask [N={n}], got {m.dtype} "
                               f"{m.shape}")
        masks[tag] = m
    if len(masks) > MAX_SLICES:
        raise HoldoutError(f"at most {MAX_SLICES} slices, got {len(masks)}")
    h = hashlib.sha256(task.encode())
    arrays = [inputs, labels, *named.values(), *masks.values()]
    if boxes is not None:
        arrays.append(boxes)
    for arr in arrays:
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr((sorted(named), sorted(masks))).encode())
    if task == "classification" and not named and not masks:
        # The digest the old holdouts had: cached results of installed models stay valid.
        h = hashlib.sha256()
        for arr in (inputs, labels):
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    lab = labels.astype(np.int64) if task in ("classification", "anomaly") else labels
    return Holdout(inputs=inputs, labels=lab, digest=h.hexdigest(), named_inputs=named,
                   slices=masks, boxes=boxes, task=task)
