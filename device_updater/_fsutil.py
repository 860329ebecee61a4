"""Small file-system helpers for device_updater (on top of :mod:`edgepkg._atomic`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepkg._atomic import atomic_write_bytes, fsync_dir

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "file_lock",
    "fsync_dir",
    "read_limited",
    "remove_durably",
]


def canonical_json(value: Any) -> bytes:
    """Deterministic compact JSON (sorted keys) used for persisted files and AAD binding."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def atomic_write_json(path: Path, value: Any, mode: int = 0o600) -> None:
    """Write ``value`` as JSON to ``path`` atomically and durably (temp, fsync, rename, fsync
    dir)."""
    atomic_write_bytes(path, canonical_json(value) + b"\n", mode)


def read_limited(path: Path, limit: int) -> bytes:
    """Read a whole file, refusing files larger than ``limit`` bytes (raises ValueError)."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def remove_durably(*paths: Path) -> None:
    """Unlink files (missing ones are fine) and fsync their directories."""
    dirs: set[Path] = set()
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
            dirs.add(p.parent)
    for d in dirs:
        fsync_dir(d)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    The kernel drops the lock when the process dies, so a SIGKILL never leaves it stale.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
