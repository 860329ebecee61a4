"""The shadow spool: live input samples the inference app hands to the updater.

The app writes sampled inputs as ``.npy`` files into ``[shadow] spool_dir``, atomically (write
``.name.npy.tmp`` or any name starting with ``.``, then rename to ``name.npy``): the updater
never reads a file that does not end in ``.npy`` or starts with a dot. Each file holds
``[n, ...]`` samples laid out as the model's (single) input takes them, batch first, like a
holdout's ``inputs.npy``.

The spool is bounded: files larger than ``max_file_bytes`` and, beyond ``max_files``, the
oldest files are deleted unread, so an app that samples too eagerly cannot fill the disk.
Samples are consumed: a file is deleted once read (shadow verdicts never see a sample twice).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("edge_updater")


@dataclass(frozen=True)
class SpoolBatch:
    inputs: np.ndarray | None  # [k, ...] samples, or None when nothing usable was spooled
    files: int  # files consumed
    discarded: int  # files dropped (too large, unreadable, or not like the first sample)


class ShadowSpool:
    def __init__(self, directory: Path, *, max_files: int = 1000,
                 max_file_bytes: int = 4 << 20) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes

    def _ready(self) -> list[Path]:
        try:
            entries = [p for p in self.directory.iterdir()
                       if p.name.endswith(".npy") and not p.name.startswith(".")
                       and p.is_file() and not p.is_symlink()]
        except FileNotFoundError:
            return []
        entries.sort(key=lambda p: (_mtime(p), p.name))
        excess = len(entries) - self.max_files
        for p in entries[:max(excess, 0)]:  # bounded: the oldest go first
            p.unlink(missing_ok=True)
        return entries[max(excess, 0):]

    def take(self, max_samples: int) -> SpoolBatch:
        """Read and delete spooled files, oldest first, until ``max_samples`` samples."""
        rows: list[np.ndarray] = []
        count = files = discarded = 0
        first: tuple[np.dtype[np.generic], tuple[int, ...]] | None = None
        for path in self._ready():
            if count >= max_samples:
                break
            arr = self._read(path)
            path.unlink(missing_ok=True)
            files += 1
            if arr is None or arr.ndim < 1 or arr.shape[0] == 0:
                discarded += 1
                continue
            key = (arr.dtype, tuple(arr.shape[1:]))
            if first is None:
                first = key
            elif key != first:
                log.warning("shadow spool: %s is %s %s, unlike the batch's %s %s; dropped",
                            path.name, arr.dtype, list(arr.shape[1:]), first[0], list(first[1]))
                discarded += 1
                continue
            take = arr[: max_samples - count]
            rows.append(take)
            count += int(take.shape[0])
        inputs = np.concatenate(rows, axis=0) if rows else None
        return SpoolBatch(inputs, files, discarded)

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            if path.stat().st_size > self.max_file_bytes:
                log.warning("shadow spool: %s is larger than %d bytes; dropped", path.name,
                            self.max_file_bytes)
                return None
            # The size check bounds the allocation: .npy is uncompressed, and a header that
            # declares more data than the file holds fails to load.
            arr = np.load(path, allow_pickle=False)
            return np.asarray(arr) if arr.dtype.kind in "biuf" else None
        except Exception as exc:  # hostile or half-written file: drop it, never stop the daemon
            log.warning("shadow spool: cannot read %s (%s); dropped", path.name, exc)
            return None

    def clear(self) -> None:
        """Drop what is spooled (samples from before a shadow run started are stale)."""
        for p in self._ready():
            with contextlib.suppress(OSError):
                p.unlink()


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
