"""TUF metadata on disk: load the current role versions, sign with thresholds, write atomically.

Layout (consistent snapshots): ``metadata/N.root.json`` (+ ``root.json``, the newest),
``metadata/N.targets.json``, ``metadata/N.snapshot.json``, ``metadata/timestamp.json`` and
hash-prefixed target files under ``targets/``. ``timestamp.json`` is written last: it is the
commit point, so a reader (or a crash) always sees a complete, consistent set.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer as SslibSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import RepoError

MAX_METADATA_BYTES = 32 * 1024 * 1024
_ROOT_FILE = re.compile(r"^([1-9][0-9]{0,9})\.root\.json$")
_SERIALIZER = JSONSerializer(compact=False)


def utc(now: datetime | None) -> datetime:
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).replace(microsecond=0)


def metadata_dir(repo_dir: str | os.PathLike[str]) -> Path:
    return Path(repo_dir) / "metadata"


def targets_dir(repo_dir: str | os.PathLike[str]) -> Path:
    return Path(repo_dir) / "targets"


def _read_limited(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_METADATA_BYTES + 1)
    except FileNotFoundError:
        raise RepoError(
            f"metadata file {path} is missing: is this an initialised repository?"
        ) from None
    if len(data) > MAX_METADATA_BYTES:
        raise RepoError(f"metadata file {path} is larger than {MAX_METADATA_BYTES} bytes")
    return data


def _parse(path: Path, expected: type[Signed]) -> Metadata[Any]:
    try:
        md = Metadata.from_bytes(_read_limited(path))
    except DeserializationError as exc:
        raise RepoError(f"metadata file {path} is malformed: {exc}") from exc
    if not isinstance(md.signed, expected):
        raise RepoError(f"{path} holds {md.signed.type} metadata, expected {expected.type}")
    return md


def root_versions(repo_dir: str | os.PathLike[str]) -> list[int]:
    versions = []
    try:
        entries = os.listdir(metadata_dir(repo_dir))
    except OSError as exc:
        raise RepoError(f"cannot read {metadata_dir(repo_dir)}: {exc.strerror}; is {repo_dir} "
                        "an initialised repository?") from None
    for entry in entries:
        match = _ROOT_FILE.match(entry)
        if match:
            versions.append(int(match.group(1)))
    return sorted(versions)


def load_root(repo_dir: str | os.PathLike[str], version: int | None = None) -> Metadata[Root]:
    if version is None:
        versions = root_versions(repo_dir)
        if not versions:
            raise RepoError(f"no root metadata in {metadata_dir(repo_dir)}")
        version = versions[-1]
    return _parse(metadata_dir(repo_dir) / f"{version}.root.json", Root)


def load_timestamp(repo_dir: str | os.PathLike[str]) -> Metadata[Timestamp]:
    return _parse(metadata_dir(repo_dir) / "timestamp.json", Timestamp)


def load_snapshot(
    repo_dir: str | os.PathLike[str], timestamp: Metadata[Timestamp] | None = None
) -> Metadata[Snapshot]:
    timestamp = timestamp or load_timestamp(repo_dir)
    version = timestamp.signed.snapshot_meta.version
    return _parse(metadata_dir(repo_dir) / f"{version}.snapshot.json", Snapshot)


def load_targets(
    repo_dir: str | os.PathLike[str], snapshot: Metadata[Snapshot] | None = None
) -> Metadata[Targets]:
    snapshot = snapshot or load_snapshot(repo_dir)
    meta = snapshot.signed.meta.get("targets.json")
    if meta is None:
        raise RepoError("snapshot does not list targets.json")
    return _parse(metadata_dir(repo_dir) / f"{meta.version}.targets.json", Targets)


def to_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(_SERIALIZER)


def sign(
    md: Metadata[Any],
    signers: Sequence[SslibSigner],
    delegators: Sequence[Root],
) -> None:
    """Replace ``md``'s signatures with one per signer, then check every delegator's threshold
    (for a new root: the previous root and itself). Raise RepoError when one is not met."""
    md.signatures.clear()
    role = md.signed.type
    for signer in signers:
        md.sign(signer, append=True)
    for delegator in delegators:
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoError(
                f"cannot sign {role} v{md.signed.version}: signature threshold of root "
                f"v{delegator.version} not met ({exc}); make the keys' references in the "
                "repository config reachable (files, token, $EDGEPKG_PKCS11_PIN)"
            ) from exc


def write_root(repo_dir: str | os.PathLike[str], md: Metadata[Root]) -> None:
    data = to_bytes(md)
    mdir = metadata_dir(repo_dir)
    atomic_write_bytes(mdir / f"{md.signed.version}.root.json", data)
    atomic_write_bytes(mdir / "root.json", data)


def write_versioned(repo_dir: str | os.PathLike[str], md: Metadata[Any]) -> MetaFile:
    data = to_bytes(md)
    atomic_write_bytes(metadata_dir(repo_dir) / f"{md.signed.version}.{md.signed.type}.json", data)
    return MetaFile(version=md.signed.version)


def write_timestamp(repo_dir: str | os.PathLike[str], md: Metadata[Timestamp]) -> None:
    atomic_write_bytes(metadata_dir(repo_dir) / "timestamp.json", to_bytes(md))


def new_expiry(now: datetime, lifetime: timedelta) -> datetime:
    return utc(now) + lifetime


@contextlib.contextmanager
def locked(repo_dir: str | os.PathLike[str]) -> Iterator[None]:
    """One writer at a time (publish from CI, refresh from cron)."""
    from ._config import config_path

    if not config_path(repo_dir).is_file():
        raise RepoError(f"{repo_dir} is not an edgepkg repository: run `edgepkg repo init` first")
    path = Path(repo_dir) / ".edgepkg-repo.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def verify_chain(
    repo_dir: str | os.PathLike[str],
) -> tuple[Metadata[Root], Metadata[Timestamp], Metadata[Snapshot], Metadata[Targets]]:
    """Load the current root, timestamp, snapshot and targets and check each one's signature
    threshold against the current root (not expiry: callers decide what to do about that)."""
    root = load_root(repo_dir)
    ts = load_timestamp(repo_dir)
    snap = load_snapshot(repo_dir, ts)
    tgt = load_targets(repo_dir, snap)
    for md in (ts, snap, tgt):
        try:
            root.signed.verify_delegate(md.signed.type, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise RepoError(
                f"current {md.signed.type} metadata is not validly signed: {exc}"
            ) from exc
    return root, ts, snap, tgt


def signers_for(
    role: str, root: Root, available: Mapping[str, SslibSigner]
) -> list[SslibSigner]:
    """The available signers whose keys the root authorises for ``role``."""
    return [available[k] for k in root.roles[role].keyids if k in available]
