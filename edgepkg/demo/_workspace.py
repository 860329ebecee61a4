"""The demo's workspace: one directory holding keys, repository, server, devices and logs."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepkg.errors import UsageError


@dataclass(frozen=True)
class Workspace:
    root: Path
    temporary: bool  # created by the demo (removed at the end unless kept)

    @property
    def hsm(self) -> Path:
        return self.root / "hsm"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def server(self) -> Path:
        return self.root / "server"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def device(self, index: int) -> Path:
        return self.devices / f"device-{index:02d}"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def make_workspace(workdir: str | None) -> Workspace:
    """A fresh workspace: ``workdir`` (must be empty or absent) or a new temporary directory."""
    if workdir is None:
        ws = Workspace(Path(tempfile.mkdtemp(prefix="edgepkg-demo-")), temporary=True)
    else:
        root = Path(workdir).resolve()
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"--workdir {root} is not empty: give a new or empty directory")
        root.mkdir(parents=True, exist_ok=True)
        ws = Workspace(root, temporary=False)
    for d in (
        ws.hsm,
        ws.keys,
        ws.repo.parent,
        ws.models,
        ws.bundles,
        ws.server,
        ws.devices,
        ws.logs,
    ):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return ws
