"""Clean-up of the plaintext exports an updater killed mid-way leaves in the runtime dir
(``.export-<pid>-*``, named so that a dead process's dirs can be told apart)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _remove_tree(sub: Path) -> None:
    # Recursive: an export killed mid-way leaves its own scratch dir inside ``sub``.
    if sub.is_dir():
        shutil.rmtree(sub, ignore_errors=True)


def remove_stale_exports(runtime_dir: Path) -> None:
    """Remove plaintext exports left by a process that died (its pid no longer exists)."""
    if not runtime_dir.is_dir():
        return
    for sub in runtime_dir.glob(".export-*-*"):
        try:
            pid = int(sub.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove_tree(sub)
        except PermissionError:
            pass
