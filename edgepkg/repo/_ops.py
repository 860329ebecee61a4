"""Repository operations that write metadata: init, refresh, rotate, revoke, and the common
"new targets -> new snapshot -> new timestamp" commit used by publish and revoke."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer as SslibSigner
from tuf.api.metadata import Metadata, MetaFile, Role, Root, Snapshot, Targets, Timestamp

from edgepkg.errors import Error, RepoError, UsageError
from edgepkg.protocol import release_dir

from . import _keys, _tuf
from ._config import (
    KeyRef,
    PublicKeyEntry,
    RepoConfig,
    RoleConfig,
    config_path,
    default_expires,
    load_config,
    save_config,
)
from ._policy import ONLINE_ROLES, TOP_ROLES, needs_resign, parse_duration
from ._read import REVOKED_FIELD, expiry_report, revoked_entries

log = logging.getLogger(__name__)


class SignerPool:
    """Loads key references lazily, once; remembers why a reference could not be loaded."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._loaded: dict[str, SslibSigner] = {}
        self.failures: dict[str, str] = {}

    def load(self, refs: Sequence[KeyRef]) -> dict[str, SslibSigner]:
        for kr in refs:
            if kr.keyid in self._loaded or kr.keyid in self.failures:
                continue
            try:
                loaded = _keys.load_tuf_signer(kr.ref, self._env)
            except Error as exc:
                self.failures[kr.keyid] = f"{kr.ref}: {exc}"
                continue
            if loaded.keyid != kr.keyid:
                self.failures[kr.keyid] = f"{kr.ref} now holds key {loaded.keyid}, not {kr.keyid}"
                continue
            self._loaded[kr.keyid] = loaded.signer
        return dict(self._loaded)

    def for_role(self, config: RepoConfig, role: str, root: Root) -> list[SslibSigner]:
        available = self.load(config.role(role).keys)
        return _tuf.signers_for(role, root, available)


def _sign(
    md: Metadata[Any], signers: Sequence[SslibSigner], delegators: Sequence[Root], pool: SignerPool
) -> None:
    try:
        _tuf.sign(md, signers, delegators)
    except RepoError as exc:
        if pool.failures:
            details = "; ".join(pool.failures.values())
            raise RepoError(f"{exc} (unusable keys: {details})") from exc
        raise


def _lifetime(config: RepoConfig, role: str):  # type: ignore[no-untyped-def]
    return parse_duration(config.role(role).expires)


# --- init --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitResult:
    repo_dir: str
    root_keyids: list[str]
    keyids: dict[str, list[str]]


def init_repo(
    repo_dir: str | os.PathLike[str],
    keys: Mapping[str, Sequence[str]],
    *,
    thresholds: Mapping[str, int] | None = None,
    expires: Mapping[str, str] | None = None,
    release_keys: Sequence[str] = (),
    release_signer: str | None = None,
    archive_key: str | None = None,
    recipients: Sequence[str] = (),
    delta_k: int = 2,
    delta_margin: float = 0.9,
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> InitResult:
    """Create a new repository: root v1, empty targets v1, snapshot v1, timestamp v1."""
    repo = Path(repo_dir)
    now = _tuf.utc(now)
    thresholds = dict(thresholds or {})
    expires = dict(expires or {})
    for role in list(keys) + list(thresholds) + list(expires):
        if role not in TOP_ROLES:
            raise UsageError(f"unknown role {role!r}: roles are {', '.join(TOP_ROLES)}")
    missing = [r for r in TOP_ROLES if not keys.get(r)]
    if missing:
        raise UsageError(f"no key given for role(s) {', '.join(missing)} (use --key ROLE=REF)")
    if not 1 <= delta_k <= 16:
        raise UsageError("delta K must be between 1 and 16")
    if not 0 < delta_margin <= 1:
        raise UsageError("delta margin must be in (0, 1]")
    if repo.exists() and (config_path(repo).exists() or (_tuf.metadata_dir(repo)).exists()):
        raise RepoError(f"{repo} already holds a repository; refusing to overwrite it")

    for ref in [r for refs in keys.values() for r in refs] + [
        release_signer or "",
        archive_key or "",
    ]:
        if ref:
            _keys.check_storable_ref(ref)
    pool = SignerPool(env)
    roles: dict[str, RoleConfig] = {}
    root = Root(expires=now, consistent_snapshot=True)
    for role in TOP_ROLES:
        refs = []
        for ref in keys[role]:
            pub = _keys.public_key_from_ref(ref)
            tkey = _keys.tuf_key(pub)
            root.add_key(tkey, role)
            refs.append(KeyRef(tkey.keyid, ref))
        threshold = int(thresholds.get(role, 1))
        if not 1 <= threshold <= len(root.roles[role].keyids):
            raise UsageError(
                f"threshold {threshold} for {role} needs at least {threshold} distinct keys, "
                f"got {len(root.roles[role].keyids)}"
            )
        root.roles[role].threshold = threshold
        lifetime = expires.get(role, default_expires(role))
        parse_duration(lifetime)
        roles[role] = RoleConfig(keys=refs, threshold=threshold, expires=lifetime)

    config = RepoConfig(
        roles=roles,
        release_keys=[_public_entry(r) for r in release_keys],
        release_signer=release_signer,
        archive_key=None,
        recipients=[_public_entry(r) for r in recipients],
        delta_k=delta_k,
        delta_margin=delta_margin,
    )
    if release_signer is not None:
        signer = _keys.load_bundle_signer(release_signer, env)
        sid = _keys.key_id(signer.public_key())
        if sid not in {k.keyid for k in config.release_keys}:
            config.release_keys.append(PublicKeyEntry(sid, _keys.public_pem(signer.public_key())))
    if archive_key is not None:
        pub = _keys.public_key_from_ref(archive_key)
        config.archive_key = KeyRef(_keys.key_id(pub), archive_key)
        if config.archive_key.keyid not in {r.keyid for r in config.recipients}:
            config.recipients.append(
                PublicKeyEntry(config.archive_key.keyid, _keys.public_pem(pub))
            )

    root.expires = _tuf.new_expiry(now, _lifetime(config, "root"))
    root_md = Metadata(root)
    _sign(root_md, pool.for_role(config, "root", root), [root], pool)
    targets_md = Metadata(Targets(expires=_tuf.new_expiry(now, _lifetime(config, "targets"))))
    _sign(targets_md, pool.for_role(config, "targets", root), [root], pool)
    snapshot = Snapshot(expires=_tuf.new_expiry(now, _lifetime(config, "snapshot")))
    snapshot.meta["targets.json"] = MetaFile(version=1)
    snapshot_md = Metadata(snapshot)
    _sign(snapshot_md, pool.for_role(config, "snapshot", root), [root], pool)
    timestamp_md = Metadata(
        Timestamp(
            expires=_tuf.new_expiry(now, _lifetime(config, "timestamp")),
            snapshot_meta=MetaFile(version=1),
        )
    )
    _sign(timestamp_md, pool.for_role(config, "timestamp", root), [root], pool)

    _tuf.metadata_dir(repo).mkdir(parents=True, exist_ok=True)
    _tuf.targets_dir(repo).mkdir(parents=True, exist_ok=True)
    save_config(repo, config)
    _tuf.write_root(repo, root_md)
    _tuf.write_versioned(repo, targets_md)
    _tuf.write_versioned(repo, snapshot_md)
    _tuf.write_timestamp(repo, timestamp_md)
    return InitResult(
        str(repo),
        list(root.roles["root"].keyids),
        {r: list(root.roles[r].keyids) for r in TOP_ROLES},
    )


def _public_entry(ref: str) -> PublicKeyEntry:
    pub = _keys.public_key_from_ref(ref)
    return PublicKeyEntry(_keys.key_id(pub), _keys.public_pem(pub))


# --- the common commit -------------------------------------------------------------------------


def commit_targets(
    repo_dir: str | os.PathLike[str],
    config: RepoConfig,
    root: Root,
    targets_md: Metadata[Targets],
    snapshot_md: Metadata[Snapshot],
    timestamp_md: Metadata[Timestamp],
    now: datetime,
    pool: SignerPool,
) -> int:
    """Sign and write the next targets, snapshot and timestamp (timestamp last). Return the new
    targets version. ``targets_md`` is the edited copy of the current targets."""
    targets = targets_md.signed
    targets.version += 1
    targets.expires = _tuf.new_expiry(now, _lifetime(config, "targets"))
    _sign(targets_md, pool.for_role(config, "targets", root), [root], pool)
    snapshot_md = copy.deepcopy(snapshot_md)
    snapshot_md.signed.meta["targets.json"] = MetaFile(version=targets.version)
    snapshot_md.signed.version += 1
    snapshot_md.signed.expires = _tuf.new_expiry(now, _lifetime(config, "snapshot"))
    _sign(snapshot_md, pool.for_role(config, "snapshot", root), [root], pool)
    timestamp_md = copy.deepcopy(timestamp_md)
    _bump_timestamp(config, root, timestamp_md, snapshot_md.signed.version, now, pool)
    _tuf.write_versioned(repo_dir, targets_md)
    _tuf.write_versioned(repo_dir, snapshot_md)
    _tuf.write_timestamp(repo_dir, timestamp_md)
    return targets.version


def _bump_timestamp(
    config: RepoConfig,
    root: Root,
    md: Metadata[Timestamp],
    snapshot_version: int,
    now: datetime,
    pool: SignerPool,
) -> None:
    md.signed.snapshot_meta = MetaFile(version=snapshot_version)
    md.signed.version += 1
    md.signed.expires = _tuf.new_expiry(now, _lifetime(config, "timestamp"))
    _sign(md, pool.for_role(config, "timestamp", root), [root], pool)


# --- refresh -----------------------------------------------------------------------------------

REFRESH_OK = 0
REFRESH_WARNING = 3   # root or targets (offline keys) expire soon: a person must act
REFRESH_CRITICAL = 4  # something is expired and could not be re-signed: clients fail now


@dataclass
class RefreshResult:
    resigned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.expired:
            return REFRESH_CRITICAL
        if self.warnings:
            return REFRESH_WARNING
        return REFRESH_OK

    def to_dict(self) -> dict[str, Any]:
        return {"resigned": self.resigned, "warnings": self.warnings, "expired": self.expired,
                "exit_code": self.exit_code}


def refresh(
    repo_dir: str | os.PathLike[str],
    *,
    roles: Sequence[str] = ONLINE_ROLES,
    force: bool = False,
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> RefreshResult:
    """Re-sign snapshot and/or timestamp when less than half their lifetime remains (or always
    with ``force``). Idempotent: a second call right after the first changes nothing."""
    for role in roles:
        if role not in ONLINE_ROLES:
            raise UsageError(f"refresh re-signs snapshot and timestamp only, not {role!r}")
    now = _tuf.utc(now)
    result = RefreshResult()
    with _tuf.locked(repo_dir):
        config = load_config(repo_dir)
        root_md, ts_md, snap_md, _ = _tuf.verify_chain(repo_dir)
        root = root_md.signed
        pool = SignerPool(env)
        new_snapshot: Metadata[Snapshot] | None = None
        if "snapshot" in roles and (
            force or needs_resign(snap_md.signed.expires, _lifetime(config, "snapshot"), now)
        ):
            new_snapshot = copy.deepcopy(snap_md)
            new_snapshot.signed.version += 1
            new_snapshot.signed.expires = _tuf.new_expiry(now, _lifetime(config, "snapshot"))
            _sign(new_snapshot, pool.for_role(config, "snapshot", root), [root], pool)
        need_ts = new_snapshot is not None or (
            "timestamp" in roles
            and (force or needs_resign(ts_md.signed.expires, _lifetime(config, "timestamp"), now))
        )
        if need_ts:
            new_ts = copy.deepcopy(ts_md)
            snap_version = (new_snapshot or snap_md).signed.version
            _bump_timestamp(config, root, new_ts, snap_version, now, pool)
            if new_snapshot is not None:
                _tuf.write_versioned(repo_dir, new_snapshot)
                result.resigned.append("snapshot")
            _tuf.write_timestamp(repo_dir, new_ts)
            result.resigned.append("timestamp")
        for state in expiry_report(repo_dir, config, now):
            if state.expired:
                result.expired.append(f"{state.role} expired at {state.expires.isoformat()}")
            elif state.warning:
                result.warnings.append(f"{state.role} expires at {state.expires.isoformat()}")
    return result


# --- rotate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotateResult:
    role: str
    root_version: int
    keyids: list[str]
    threshold: int


def rotate(
    repo_dir: str | os.PathLike[str],
    role: str,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    threshold: int | None = None,
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> RotateResult:
    """Change a role's keys and/or threshold in a new root version.

    The new root is signed by a threshold of the *old* root keys and a threshold of the *new*
    ones, so clients on the old root follow the chain. Then the rotated role (and what depends on
    it) is re-signed with its new keys, so metadata from a removed key is no longer current.
    """
    if role not in TOP_ROLES:
        raise UsageError(f"unknown role {role!r}: roles are {', '.join(TOP_ROLES)}")
    if not add and not remove and threshold is None:
        raise UsageError("nothing to do: give --add, --remove and/or --threshold")
    now = _tuf.utc(now)
    with _tuf.locked(repo_dir):
        config = load_config(repo_dir)
        old_root_md, ts_md, snap_md, tgt_md = _tuf.verify_chain(repo_dir)
        old_root = old_root_md.signed
        new_root_md = copy.deepcopy(old_root_md)
        new_root = new_root_md.signed
        role_cfg = config.role(role)
        refs = list(role_cfg.keys)
        for keyid in remove:
            if keyid not in new_root.roles[role].keyids:
                raise UsageError(f"key {keyid} is not a {role} key")
            new_root.revoke_key(keyid, role)
            refs = [r for r in refs if r.keyid != keyid]
        for ref in add:
            _keys.check_storable_ref(ref)
            tkey = _keys.tuf_key(_keys.public_key_from_ref(ref))
            if tkey.keyid in new_root.roles[role].keyids:
                raise UsageError(f"key {tkey.keyid} ({ref}) is already a {role} key")
            new_root.add_key(tkey, role)
            refs.append(KeyRef(tkey.keyid, ref))
        new_threshold = threshold if threshold is not None else new_root.roles[role].threshold
        if not 1 <= new_threshold <= len(new_root.roles[role].keyids):
            raise UsageError(
                f"{role} would have {len(new_root.roles[role].keyids)} key(s) and threshold "
                f"{new_threshold}: the threshold must be between 1 and the number of keys"
            )
        new_root.roles[role] = Role(list(new_root.roles[role].keyids), new_threshold)
        new_root.version += 1
        new_root.expires = _tuf.new_expiry(now, _lifetime(config, "root"))

        pool = SignerPool(env)
        old_available = pool.load(config.role("root").keys)
        new_config = copy.deepcopy(config)
        new_config.roles[role] = RoleConfig(
            keys=refs, threshold=new_threshold, expires=role_cfg.expires
        )
        new_available = pool.load(new_config.role("root").keys)
        root_signers = {**old_available, **new_available}
        wanted = set(old_root.roles["root"].keyids) | set(new_root.roles["root"].keyids)
        _sign(
            new_root_md,
            [s for k, s in root_signers.items() if k in wanted],
            [old_root, new_root],
            pool,
        )

        # Re-sign what the rotated role covers, with the new root's keys.
        pending: list[Metadata[Any]] = []
        new_tgt, new_snap, new_ts = (
            copy.deepcopy(tgt_md),
            copy.deepcopy(snap_md),
            copy.deepcopy(ts_md),
        )
        if role == "targets":
            new_tgt.signed.version += 1
            new_tgt.signed.expires = _tuf.new_expiry(now, _lifetime(new_config, "targets"))
            _sign(new_tgt, pool.for_role(new_config, "targets", new_root), [new_root], pool)
            new_snap.signed.meta["targets.json"] = MetaFile(version=new_tgt.signed.version)
            pending.append(new_tgt)
        if role in ("targets", "snapshot"):
            new_snap.signed.version += 1
            new_snap.signed.expires = _tuf.new_expiry(now, _lifetime(new_config, "snapshot"))
            _sign(new_snap, pool.for_role(new_config, "snapshot", new_root), [new_root], pool)
            pending.append(new_snap)
        if role != "root":
            _bump_timestamp(new_config, new_root, new_ts, new_snap.signed.version, now, pool)

        _tuf.write_root(repo_dir, new_root_md)
        for md in pending:
            _tuf.write_versioned(repo_dir, md)
        if role != "root":
            _tuf.write_timestamp(repo_dir, new_ts)
        save_config(repo_dir, new_config)
    return RotateResult(role, new_root.version, list(new_root.roles[role].keyids), new_threshold)


# --- revoke ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokeResult:
    name: str
    version: str
    removed_targets: list[str]
    targets_version: int


def revoke(
    repo_dir: str | os.PathLike[str],
    name: str,
    version: str,
    *,
    reason: str = "",
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
) -> RevokeResult:
    """Remove a release (and every delta to or from it) from the signed targets, and record the
    revocation in the signed targets metadata so the version can never be published again."""
    now = _tuf.utc(now)
    with _tuf.locked(repo_dir):
        config = load_config(repo_dir)
        root_md, ts_md, snap_md, tgt_md = _tuf.verify_chain(repo_dir)
        targets = tgt_md.signed
        entries = revoked_entries(targets)
        if any(e.get("name") == name and e.get("version") == version for e in entries):
            raise RepoError(f"{name} {version} is already revoked")
        removed = []
        for path, tf in list(targets.targets.items()):
            info = (tf.custom or {}).get("edgepkg") if isinstance(tf.custom, dict) else None
            if not isinstance(info, dict) or info.get("name") != name:
                continue
            base = (
                (info.get("delta") or {}).get("base_version")
                if isinstance(info.get("delta"), dict)
                else None
            )
            if info.get("version") == version or base == version:
                removed.append(path)
                del targets.targets[path]
        if not any(p.startswith(release_dir(name, version)) for p in removed):
            raise RepoError(f"{name} {version} is not a published release")
        entries.append(
            {"name": name, "version": version, "revoked_at": now.isoformat(), "reason": reason}
        )
        targets.unrecognized_fields[REVOKED_FIELD] = entries
        new_version = commit_targets(
            repo_dir, config, root_md.signed, tgt_md, snap_md, ts_md, now, SignerPool(env)
        )
    return RevokeResult(name, version, sorted(removed), new_version)
