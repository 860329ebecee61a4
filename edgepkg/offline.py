"""Offline (USB) update packages: the signed TUF metadata, the release's target bundles and key
grants for named devices, in a directory or a tar archive.

Layout (the same names as the repository, so the device's TUF client reads it unchanged)::

    edgepkg-offline.json          what to install (model, version, targets) + key grants
    metadata/N.root.json          every root version: a device on an old root walks the chain
    metadata/timestamp.json, metadata/V.snapshot.json, metadata/V.targets.json
    targets/<dir>/<sha256>.<name> the hash-prefixed target files (consistent snapshots)

``edgepkg-offline.json`` is NOT signed and needs not be: it only *points* at a target. The device
verifies the metadata with the trust chain anchored in its token, the bundle bytes against the
signed target hashes, and the bundle signature; a grant only opens a data key for the device it
names. Changing anything but the pointer makes the install fail; changing the pointer can only
name another genuine, signed, non-revoked release (and a downgrade is refused as online).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepkg._atomic import atomic_write_bytes
from edgepkg.errors import FormatError, ProtocolError, UsageError
from edgepkg.keys._types import PublicKey, RecipientKey
from edgepkg.protocol import (
    DEVICE_ID_RE,
    MAX_KEY_GRANT_BYTES,
    check_target_model,
    check_target_version,
    full_target_name,
)

OFFLINE_FORMAT = "edgepkg-offline"
OFFLINE_VERSION = 1
MANIFEST_NAME = "edgepkg-offline.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_DEVICES = 10_000
MAX_DELTAS = 64
_TARGET_RE = re.compile(r"^models/[A-Za-z0-9._-]{1,128}/[0-9A-Za-z.+-]{1,64}/"
                        r"[A-Za-z0-9._+-]{1,200}\.edgepkg$")


class OfflinePackageError(FormatError):
    """The offline package is malformed (untrusted input): say what and where."""


@dataclass(frozen=True)
class OfflineManifest:
    model: str
    version: str
    target: str
    deltas: tuple[str, ...] = ()
    # device id -> target name -> key grant JSON object
    grants: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"format": OFFLINE_FORMAT, "version": OFFLINE_VERSION,
                           "model": self.model, "model_version": self.version,
                           "target": self.target, "deltas": list(self.deltas),
                           "grants": self.grants}, indent=1, sort_keys=True).encode() + b"\n"


def parse_manifest(raw: bytes) -> OfflineManifest:
    """Parse ``edgepkg-offline.json`` strictly (bounded sizes, known keys, target names)."""
    def bad(msg: str) -> OfflinePackageError:
        return OfflinePackageError(f"{MANIFEST_NAME}: {msg}")

    if len(raw) > MAX_MANIFEST_BYTES:
        raise bad(f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != OFFLINE_FORMAT:
        raise bad(f"not an offline update package (format must be {OFFLINE_FORMAT!r})")
    if doc.get("version") != OFFLINE_VERSION:
        raise bad(f"unsupported version {doc.get('version')!r}; this updater reads "
                  f"{OFFLINE_VERSION}")
    model, version, target = doc.get("model"), doc.get("model_version"), doc.get("target")
    if not isinstance(model, str) or not isinstance(version, str):
        raise bad("model and model_version must be strings")
    try:
        check_target_model(model)
        check_target_version(version)
    except ProtocolError as exc:
        raise bad(str(exc)) from None
    if target != full_target_name(model, version):
        raise bad(f"target must be {full_target_name(model, version)!r}")
    deltas = doc.get("deltas", [])
    if (not isinstance(deltas, list) or len(deltas) > MAX_DELTAS
            or not all(isinstance(d, str) and _TARGET_RE.match(d)
                       and d.startswith(f"models/{model}/{version}/") for d in deltas)):
        raise bad(f"deltas must be a list of at most {MAX_DELTAS} delta target names of "
                  f"{model} {version}")
    grants = doc.get("grants", {})
    if not isinstance(grants, dict) or len(grants) > MAX_DEVICES:
        raise bad(f"grants must be an object of at most {MAX_DEVICES} device id -> grants")
    names = {target, *deltas}
    for device_id, per in grants.items():
        if not DEVICE_ID_RE.match(device_id) or not isinstance(per, dict):
            raise bad(f"grants key {str(device_id)[:80]!r} is not a device id (64 hex)")
        for name, grant in per.items():
            if name not in names or not isinstance(grant, dict):
                raise bad(f"grants[{device_id[:16]}…] names {str(name)[:80]!r}, not a target "
                          "of this package")
            if len(json.dumps(grant)) > MAX_KEY_GRANT_BYTES:
                raise bad(f"a grant for {device_id[:16]}… is larger than {MAX_KEY_GRANT_BYTES} "
                          "bytes")
    return OfflineManifest(model, version, str(target), tuple(deltas), grants)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    model: str
    version: str
    files: list[str]
    devices: list[str]
    bytes: int


def _metadata_files(repo: Path) -> list[str]:
    """Every root version plus the current timestamp, snapshot and targets (by version)."""
    from edgepkg.repo import _tuf

    _tuf.verify_chain(repo)  # refuse to export a repository whose own chain does not verify
    ts = _tuf.load_timestamp(repo)
    snap = _tuf.load_snapshot(repo, ts)
    targets_meta = snap.signed.meta.get("targets.json")
    if targets_meta is None:
        raise UsageError(f"{repo}: snapshot does not list targets.json")
    roots = [f"{v}.root.json" for v in _tuf.root_versions(repo)]
    return [*roots, "timestamp.json", f"{ts.signed.snapshot_meta.version}.snapshot.json",
            f"{targets_meta.version}.targets.json"]


def export_offline(
    repo_dir: str | os.PathLike[str],
    model: str,
    version: str,
    output: str | os.PathLike[str],
    *,
    devices: Sequence[tuple[PublicKey, str]] = (),
    key_service: RecipientKey | None = None,
    include_deltas: bool = False,
    expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> ExportResult:
    """Write an offline update package for ``model`` ``version`` to ``output``: a directory, or
    a tar archive when the name ends in ``.tar``. ``devices`` (public key, device id) get key
    grants from ``key_service`` (needed for devices that are not direct recipients)."""
    from edgepkg.grants import make_grant
    from edgepkg.repo import _tuf, list_releases, target_file

    repo, out = Path(repo_dir), Path(output)
    if devices and key_service is None:
        raise UsageError("key grants for named devices need --key-service (the key the bundles "
                         "were packaged for)")
    releases = [r for r in list_releases(repo) if r.name == model and r.version == version]
    full = [r for r in releases if r.kind == "full"]
    if not full:
        raise UsageError(f"{model} {version} is not a current release of {repo} (not published, "
                         "or revoked): see 'edgepkg repo status'")
    chosen = full + ([r for r in releases if r.kind == "delta"] if include_deltas else [])
    now = now or dt.datetime.now(dt.UTC)
    expires_at = expires_at or now + dt.timedelta(days=30)
    files: dict[str, Path] = {f"metadata/{n}": _tuf.metadata_dir(repo) / n
                              for n in _metadata_files(repo)}
    for r in chosen:
        path = target_file(repo, r)
        files[str(path.relative_to(repo))] = path
    grants: dict[str, dict[str, dict[str, Any]]] = {}
    for pub, device_id in devices:
        assert key_service is not None
        for r in chosen:
            g = make_grant(target_file(repo, r), key_service, pub, device_id, expires_at, now)
            grants.setdefault(device_id, {})[r.target_path] = json.loads(g.to_json())
    manifest = OfflineManifest(model, version, full[0].target_path,
                               tuple(r.target_path for r in chosen if r.kind == "delta"),
                               grants).to_json()
    total = sum(p.stat().st_size for p in files.values()) + len(manifest)
    if out.suffix == ".tar":
        _write_tar(out, manifest, files)
    else:
        _write_dir(out, manifest, files)
    return ExportResult(out, model, version, sorted(files), sorted(grants), total)


def _write_dir(out: Path, manifest: bytes, files: Mapping[str, Path]) -> None:
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty: give a new directory or a .tar name")
    for rel, src in files.items():
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    # Written last: a half-copied directory has no manifest and is refused as a package.
    atomic_write_bytes(out / MANIFEST_NAME, manifest, 0o644)


def _write_tar(out: Path, manifest: bytes, files: Mapping[str, Path]) -> None:
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
        for rel, src in sorted(files.items()):
            tar.add(src, arcname=rel, recursive=False)
    os.replace(tmp, out)
