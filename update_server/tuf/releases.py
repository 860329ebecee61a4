"""Which releases the server may assign: the current, unrevoked targets of the TUF repository.

``edgepkg.repo.list_releases(repo_dir)`` is the repository's read API and the default reader;
:func:`read_releases` is a small independent reader of ``metadata/`` (timestamp -> snapshot ->
targets) kept for tests and tools. The result is cached and re-read when ``timestamp.json``
changes, so a check-in costs one stat.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from edgepkg.repo import list_releases

log = logging.getLogger("update_server.tuf.releases")

MAX_METADATA_BYTES = 64 * 1024 * 1024


class Release(Protocol):
    """What the server needs of a release target (``edgepkg.repo.ReleaseTarget`` fits)."""

    name: str
    version: str
    kind: str
    target_path: str
    length: int
    sha256: str
    base_version: str | None
    custom: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReleaseTarget:
    name: str
    version: str
    kind: str
    target_path: str
    length: int
    sha256: str
    base_version: str | None
    custom: dict[str, Any]


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        data = fh.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_METADATA_BYTES} bytes")
    obj = json.loads(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("signed"), dict):
        raise ValueError(f"{path.name} is not TUF metadata")
    signed: dict[str, Any] = obj["signed"]
    return signed


def _current_targets_file(meta: Path) -> Path | None:
    try:
        ts = _load_json(meta / "timestamp.json")
        snap_version = int(ts["meta"]["snapshot.json"]["version"])
        snap_path = meta / f"{snap_version}.snapshot.json"
        if not snap_path.exists():
            snap_path = meta / "snapshot.json"
        snap = _load_json(snap_path)
        targets_version = int(snap["meta"]["targets.json"]["version"])
        path = meta / f"{targets_version}.targets.json"
        return path if path.exists() else meta / "targets.json"
    except (OSError, KeyError, TypeError, ValueError):
        pass
    numbered = []
    for p in meta.glob("*.targets.json"):
        head = p.name.split(".", 1)[0]
        if head.isdigit():
            numbered.append((int(head), p))
    if numbered:
        return max(numbered)[1]
    plain = meta / "targets.json"
    return plain if plain.exists() else None


def read_releases(repo_dir: str | os.PathLike[str]) -> list[ReleaseTarget]:
    """Fallback reader: edgepkg targets listed in the current top-level targets metadata."""
    meta = Path(repo_dir) / "metadata"
    path = _current_targets_file(meta)
    if path is None:
        return []
    signed = _load_json(path)
    out: list[ReleaseTarget] = []
    targets = signed.get("targets") or {}
    if not isinstance(targets, dict):
        return []
    for target_path, info in targets.items():
        if not isinstance(info, dict):
            continue
        custom = info.get("custom") or {}
        ep = custom.get("edgepkg") if isinstance(custom, dict) else None
        if not isinstance(ep, dict) or ep.get("revoked"):
            continue
        name, version, kind = ep.get("name"), ep.get("version"), ep.get("kind", "full")
        if (
            not isinstance(name, str)
            or not isinstance(version, str)
            or kind
            not in (
                "full",
                "delta",
            )
        ):
            continue
        delta = ep.get("delta") if isinstance(ep.get("delta"), dict) else None
        base = delta.get("base_version") if delta else None
        hashes = info.get("hashes") or {}
        out.append(
            ReleaseTarget(
                name=name,
                version=version,
                kind=kind,
                target_path=str(target_path),
                length=int(info.get("length", 0)),
                sha256=str(hashes.get("sha256", "")),
                base_version=base if isinstance(base, str) else None,
                custom=custom,
            )
        )
    return out


def default_reader() -> Callable[[str | os.PathLike[str]], Sequence[Release]]:
    """The repository's own read API (``edgepkg.repo.list_releases``)."""
    # edgepkg's ReleaseTarget is a frozen dataclass: structurally a Release, read-only.
    return cast(Callable[[str | os.PathLike[str]], Sequence[Release]], list_releases)


class ReleaseCache:
    """Releases of ``repo_dir``, re-read only when ``metadata/timestamp.json`` changes."""

    def __init__(
        self,
        repo_dir: str | os.PathLike[str] | None,
        reader: Callable[[str | os.PathLike[str]], Sequence[Release]] | None = None,
    ) -> None:
        self.repo_dir = Path(repo_dir) if repo_dir is not None else None
        self._reader = reader
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._releases: list[Release] = []

    def _fingerprint(self) -> tuple[int, int, int] | None:
        assert self.repo_dir is not None
        try:
            st = os.stat(self.repo_dir / "metadata" / "timestamp.json")
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self) -> list[Release]:
        if self.repo_dir is None:
            return []
        stamp = self._fingerprint()
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._releases
            reader = self._reader or default_reader()
            try:
                releases = list(reader(self.repo_dir))
            except Exception as exc:
                # Fail closed: assign nothing until the repository reads cleanly again.
                log.warning("cannot read releases from %s: %s", self.repo_dir, exc)
                self._releases, self._stamp = [], stamp  # retry when timestamp.json changes
                return []
            self._releases, self._stamp = releases, stamp
            return releases


# --- console (issue 14): revocations shown on the release pages ------------------------------

REVOKED_FIELD = "x-edgepkg-revoked"
"""The signed targets field where ``edgepkg revoke`` lists revoked releases."""


def revoked_releases(repo_dir: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """The revoked releases listed in the current targets metadata (name, version, revoked_at,
    reason); empty when there is no repository or it cannot be read (the page says none)."""
    if repo_dir is None:
        return []
    path = _current_targets_file(Path(repo_dir) / "metadata")
    if path is None:
        return []
    try:
        raw = _load_json(path).get(REVOKED_FIELD, [])
    except (OSError, ValueError):
        return []
    return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
