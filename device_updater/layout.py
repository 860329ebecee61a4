"""Where the updater keeps its files under the state directory, and scratch-dir hygiene.

One place names every path (TUF metadata, downloads, events, health log, enrollment, per-model
slots and state), so the agent, the CLI and ``status`` cannot disagree about them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from device_updater.errors import UntrustedDeviceInputError

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Layout:
    """Where everything lives under the state directory."""

    root: Path

    @property
    def tuf_dir(self) -> Path:
        return self.root / "tuf"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "tuf" / "metadata"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def partial(self) -> Path:
        return self.root / "downloads" / ".partial"

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def health(self) -> Path:
        return self.root / "health.json"

    @property
    def enrollment(self) -> Path:
        return self.root / "enrollment.json"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        if not _MODEL_NAME.match(name):
            raise UntrustedDeviceInputError(f"bad model name {name!r}")
        return self.models / name

    def model_names(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir()
                      if p.is_dir() and _MODEL_NAME.match(p.name))


@contextlib.contextmanager
def workdir(runtime_dir: Path) -> Iterator[Path]:
    """Scratch space for plaintext (the runtime dir: meant to be a tmpfs), removed after.

    Named ``.work-<pid>`` so that :func:`remove_stale_workdirs` can tell a dead process's
    leftovers (decrypted patch, base model: plaintext) from a live one's.
    """
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = runtime_dir / f".work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_workdirs(runtime_dir: Path) -> None:
    """Remove the scratch dirs (decrypted patch, base model, half-written export: plaintext) that
    updater processes killed mid-way left in the runtime dir (``.work-<pid>[-export]`` whose
    process is gone)."""
    if not runtime_dir.is_dir():
        return
    for sub in runtime_dir.glob(".work-*"):
        pid = sub.name.removeprefix(".work-").split("-")[0]  # .work-<pid>[-export]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(sub, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass

