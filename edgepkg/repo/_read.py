"""Read-only views of a repository for the server, devices' tooling and `repo status`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets

from edgepkg.errors import RepoError

from . import _tuf
from ._config import RepoConfig, load_config
from ._policy import TOP_ROLES, ExpiryState, expiry_state, parse_duration

# Revocations are recorded in the signed targets metadata (written by _ops.revoke, read by
# publish and status); the reader lives here so that _ops depends on _read, never the reverse.
REVOKED_FIELD = "x-edgepkg-revoked"


@dataclass(frozen=True)
class ReleaseTarget:
    """One current, unrevoked target: a full release or a delta."""

    name: str
    version: str
    kind: str  # "full" | "delta"
    target_path: str  # TUF target name, e.g. models/<name>/<version>/<name>-<version>.edgepkg
    length: int  # of the target (bundle) file
    sha256: str  # of the target (bundle) file
    base_version: str | None
    custom: dict[str, Any]


def revoked_entries(targets: Targets) -> list[dict[str, Any]]:
    raw = targets.unrecognized_fields.get(REVOKED_FIELD, [])
    if not isinstance(raw, list):
        raise RepoError(f"targets field {REVOKED_FIELD} is malformed")
    return [e for e in raw if isinstance(e, dict)]


def targets_version(repo_dir: str | os.PathLike[str]) -> int:
    """The current targets version (cheap: reads timestamp + snapshot). Use it as a cache key
    for :func:`list_releases`."""
    snapshot = _tuf.load_snapshot(repo_dir)
    meta = snapshot.signed.meta.get("targets.json")
    if meta is None:
        raise RepoError("snapshot does not list targets.json")
    return meta.version


def releases_from_targets(targets: Targets) -> list[ReleaseTarget]:
    """Pure: the edgepkg targets of a Targets payload, sorted by name, then path."""
    out = []
    for path, tf in targets.targets.items():
        custom = tf.custom if isinstance(tf.custom, dict) else {}
        info = custom.get("edgepkg")
        if not isinstance(info, dict):
            continue
        name, version, kind = info.get("name"), info.get("version"), info.get("kind")
        if (
            not isinstance(name, str)
            or not isinstance(version, str)
            or kind not in ("full", "delta")
        ):
            continue
        delta = info.get("delta")
        base = delta.get("base_version") if isinstance(delta, dict) else None
        sha = tf.hashes.get("sha256")
        if sha is None:
            continue
        out.append(ReleaseTarget(name, version, kind, path, tf.length, sha, base, custom))
    out.sort(key=lambda r: (r.name, r.target_path))
    return out


def list_releases(repo_dir: str | os.PathLike[str]) -> list[ReleaseTarget]:
    """Current, unrevoked targets of the repository (signatures checked against the current
    root; expiry is the client's business)."""
    _, _, _, targets = _tuf.verify_chain(repo_dir)
    return releases_from_targets(targets.signed)


def target_file(repo_dir: str | os.PathLike[str], release: ReleaseTarget) -> Path:
    """The hash-prefixed file on disk holding ``release``."""
    parent, _, fname = release.target_path.rpartition("/")
    return _tuf.targets_dir(repo_dir) / parent / f"{release.sha256}.{fname}"


def expiry_report(
    repo_dir: str | os.PathLike[str], config: RepoConfig, now: datetime
) -> list[ExpiryState]:
    root = _tuf.load_root(repo_dir)
    ts = _tuf.load_timestamp(repo_dir)
    snap = _tuf.load_snapshot(repo_dir, ts)
    tgt = _tuf.load_targets(repo_dir, snap)
    mds: dict[str, Metadata[Any]] = {
        "root": root,
        "targets": tgt,
        "snapshot": snap,
        "timestamp": ts,
    }
    return [
        expiry_state(role, mds[role].signed.expires, parse_duration(config.role(role).expires), now)
        for role in TOP_ROLES
    ]


def status(repo_dir: str | os.PathLike[str], now: datetime | None = None) -> dict[str, Any]:
    """Models, versions, deltas, revocations, each role's version/expiry/keys, and warnings."""
    now = _tuf.utc(now)
    config = load_config(repo_dir)
    root, ts, snap, tgt = _tuf.verify_chain(repo_dir)
    mds: dict[str, Metadata[Any]] = {
        "root": root,
        "targets": tgt,
        "snapshot": snap,
        "timestamp": ts,
    }
    roles: dict[str, Any] = {}
    warnings: list[str] = []
    for state in expiry_report(repo_dir, config, now):
        md = mds[state.role]
        roles[state.role] = {
            "version": md.signed.version,
            "expires": state.expires.isoformat(),
            "expires_in_seconds": int(state.remaining.total_seconds()),
            "keyids": list(root.signed.roles[state.role].keyids),
            "threshold": root.signed.roles[state.role].threshold,
            "expired": state.expired,
            "warning": state.warning,
        }
        if state.expired:
            warnings.append(f"{state.role} metadata EXPIRED at {state.expires.isoformat()}")
        elif state.warning:
            warnings.append(f"{state.role} metadata expires soon ({state.expires.isoformat()})")
    models: dict[str, dict[str, Any]] = {}
    for rel in releases_from_targets(tgt.signed):
        entry = models.setdefault(rel.name, {}).setdefault(
            rel.version, {"full": None, "deltas": []}
        )
        if rel.kind == "full":
            entry["full"] = {"target": rel.target_path, "length": rel.length}
        else:
            entry["deltas"].append(
                {"target": rel.target_path, "base_version": rel.base_version, "length": rel.length,
                 "method": ((rel.custom.get("edgepkg") or {}).get("delta") or {}).get("method")}
            )
    return {
        "repo": str(repo_dir),
        "roles": roles,
        "models": models,
        "revoked": revoked_entries(tgt.signed),
        "release_keys": [k.keyid for k in config.release_keys],
        "archive_key": config.archive_key.keyid if config.archive_key else None,
        "deltas": {"k": config.delta_k, "margin": config.delta_margin},
        "warnings": warnings,
    }
