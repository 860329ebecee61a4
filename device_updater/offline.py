"""``edge-updater install-offline PATH``: install from an offline (USB) package, no server.

The package (``edgepkg export-offline``: :mod:`edgepkg.offline`) holds the signed TUF metadata,
the target bundles and key grants. Nothing in it is trusted for being on the stick:

* the metadata is refreshed by the same ``ngclient.Updater`` the daemon uses, bootstrapped from
  the root anchored in the device token, into the device's own trusted-metadata directory (so
  rollback and freeze protection carry over between online and offline updates); the only
  difference is :class:`LocalFetcher`, which reads files from the package instead of HTTP;
* the install goes through the same state machine and steps as an online assignment
  (verification, requirements, downgrade rule, key grant, holdout validation gate, A/B switch,
  trial);
* every event (download, validation, outcome) goes to the persistent queue and reaches the
  server the next time the daemon is online.

A failure leaves the update where the state machine puts it (e.g. DOWNLOADING after a tampered
bundle, counted as an attempt): a later ``install-offline`` of a good package, or the daemon
online, resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from device_updater.agent import Agent
from device_updater.errors import UntrustedDeviceInputError
from device_updater.state import Phase
from device_updater.tuf_client import TufSession, load_anchored_root
from edgepkg.offline import MANIFEST_NAME, MAX_MANIFEST_BYTES, OfflineManifest, parse_manifest
from edgepkg.protocol import Assignment, delta_target_name

log = logging.getLogger("edge_updater")

BASE_URL = "offline://package/"
MAX_PACKAGE_BYTES = 64 * 1024**3  # the bundle sizes are bounded again by the signed lengths
MAX_MEMBERS = 10_000
_MEMBER_RE = re.compile(r"^(edgepkg-offline\.json|metadata/[0-9A-Za-z._-]{1,80}\.json|"
                        r"targets/[A-Za-z0-9._+/-]{1,400})$")


class OfflinePackageRefusedError(UntrustedDeviceInputError):
    """The package cannot be read as an offline update package (layout, size, member types)."""


class LocalFetcher(FetcherInterface):
    """Serves ``offline://package/<path>`` from the package directory, nothing outside it; a
    missing file is a 404 (how the TUF client learns there is no newer root)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.requests_made = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests_made += 1
        if not url.startswith(BASE_URL):
            raise tuf_exc.DownloadError(f"{url} is not in the offline package")
        path = (self.root / url[len(BASE_URL):]).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise tuf_exc.DownloadHTTPError(f"{url}: not in the offline package", 404)
        return self._chunks(path)

    @staticmethod
    def _chunks(path: Path) -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                yield chunk


@dataclass
class OfflineResult:
    model: str
    version: str
    phase: str
    active_version: str | None
    reason: str | None
    queued_events: int
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.phase not in ("rejected", "rolled_back")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "phase": self.phase,
                "active_version": self.active_version, "reason": self.reason,
                "queued_events": self.queued_events, "errors": self.errors, "ok": self.ok}


def _extract(archive: Path, dest: Path) -> None:
    """Extract a package tar into ``dest``: regular files and directories under the package's
    names only, bounded in count and size (the tar is hostile until TUF has checked it)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise OfflinePackageRefusedError(f"{archive}: more than {MAX_MEMBERS} entries")
            total = 0
            for m in members:
                name = m.name.removeprefix("./")
                if not (m.isfile() or m.isdir()) or ".." in name.split("/") or not (
                        m.isdir() or _MEMBER_RE.match(name)):
                    raise OfflinePackageRefusedError(
                        f"{archive}: entry {m.name[:120]!r} is not part of an offline package")
                total += m.size
            if total > MAX_PACKAGE_BYTES or total > shutil.disk_usage(dest).free:
                raise OfflinePackageRefusedError(
                    f"{archive}: {total} bytes do not fit (limit {MAX_PACKAGE_BYTES}, free "
                    f"{shutil.disk_usage(dest).free})")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise OfflinePackageRefusedError(f"{archive}: cannot read the archive ({exc})") from None


@contextlib.contextmanager
def _opened(path: Path, scratch_parent: Path) -> Iterator[Path]:
    if path.is_dir():
        yield path
        return
    scratch_parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="offline-", dir=scratch_parent) as tmp:
        _extract(path, Path(tmp))
        yield Path(tmp)


def _read_manifest(root: Path) -> OfflineManifest:
    path = root / MANIFEST_NAME
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise OfflinePackageRefusedError(
            f"{path} cannot be read ({exc.strerror}): is this an 'edgepkg export-offline' "
            "package?") from None
    return parse_manifest(raw)


def install_offline(agent: Agent, path: str | os.PathLike[str]) -> OfflineResult:
    """Verify and install the package at ``path`` (directory or .tar) through ``agent``'s state
    machine; return where the update stands. Never contacts the server."""
    src = Path(path)
    with _opened(src, agent.layout.root / "offline") as root:
        manifest = _read_manifest(root)
        anchors = agent.anchors()
        fetcher = LocalFetcher(root)
        # The device's own trusted metadata directory: the package must be at least as new as
        # what the device already trusts (TUF refuses rollbacks), online or offline.
        agent._tuf = TufSession(agent.layout.metadata_dir, BASE_URL + "metadata/",
                                BASE_URL + "targets/",
                                bootstrap_root=load_anchored_root(agent.layout.tuf_dir,
                                                                  anchors.root_sha256),
                                fetcher=fetcher, target_dir=agent.layout.downloads)
        agent._fetcher = None
        try:
            return _install(agent, manifest)
        finally:
            agent._tuf = None


def _install(agent: Agent, m: OfflineManifest) -> OfflineResult:
    my_id = agent.enrollment.device_id
    grants = m.grants.get(my_id, {})
    if m.grants and not grants:
        log.warning("the offline package holds key grants for other devices only; installing "
                    "works only if this device is a direct recipient of the bundle",
                    extra={"device_id": my_id})
    active = agent.slots(m.model).active() if m.model in agent.layout.model_names() else None
    delta = None
    if active is not None:
        name = delta_target_name(m.model, m.version, active.version)
        delta = name if name in m.deltas else None
    assignment = Assignment(
        model=m.model, version=m.version, target=m.target, delta_target=delta,
        key_grants={k: v for k, v in grants.items() if k in (m.target, delta)})
    before = len(agent.events.pending(10_000))
    agent.last_error = None
    agent._paused.clear()
    agent.apply_assignment(assignment)
    st = agent.store(m.model).load()
    info = agent.slots(m.model).active()
    errors = list(agent._paused)
    if agent.last_error and not st.phase.terminal and st.phase is not Phase.WAITING:
        errors.append(agent.last_error)
    if not st.phase.terminal and st.version != m.version:
        errors.append(f"an update of {m.model} to {st.version} was in progress (phase "
                      f"{st.phase.value}) and was continued instead; install {m.version} after "
                      "it ends")
    if st.phase is Phase.REJECTED and st.version == m.version:
        errors.append(f"the update was refused: {st.reason}")
    return OfflineResult(
        model=m.model, version=m.version, phase=st.phase.value,
        active_version=info.version if info else None, reason=st.reason,
        queued_events=max(0, len(agent.events.pending(10_000)) - before), errors=errors)
