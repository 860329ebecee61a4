"""``publish``: add signed bundles as TUF targets, with delta targets from earlier releases.

Delta bases: the last K releases, plus (with a fleet distribution, ``--delta-from-fleet``) the
N versions most devices run (``_fleet.choose_delta_bases``).

Release archive: every published bundle stays in the repository (it is a target anyway) and must
also be encrypted to the repository's *release-archive* recipient key. To make a delta against
an earlier release, publish decrypts that release's own target with the archive key (the
plaintext lives only in a private temporary directory for the duration of the call). So the
pipeline needs no old model files, and no plaintext model is ever stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from edgepkg._atomic import atomic_output
from edgepkg.bundle import (
    BundleInfo,
    Manifest,
    open_plaintext,
    parse_version,
    verify_bundle,
    write_bundle,
)
from edgepkg.errors import BundleError, Error, RepoError, UsageError

from . import _keys, _tuf
from ._config import PublicKeyEntry, RepoConfig, load_config, save_config
from ._fleet import DEFAULT_MAX_BASES, choose_delta_bases
from ._fleet_source import FleetLookup
from ._ops import SignerPool, commit_targets
from ._policy import (
    check_model_name,
    check_newer,
    check_version_text,
    delta_target_name,
    full_target_name,
)
from ._read import ReleaseTarget, releases_from_targets, revoked_entries

log = logging.getLogger(__name__)

DeltaMaker = Callable[[str, str, str], Any]  # (old_path, new_path, out_path) -> DeltaResult
_COPY_BLOCK = 4 << 20


class PublishRefusedError(RepoError):
    """A bundle cannot be published (unknown signer, version not newer, not archivable...)."""


@dataclass(frozen=True)
class PublishedTarget:
    target_path: str
    kind: str
    name: str
    version: str
    length: int
    base_version: str | None = None
    method: str | None = None


@dataclass
class PublishResult:
    targets_version: int
    published: list[PublishedTarget] = field(default_factory=list)
    skipped_deltas: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets_version": self.targets_version,
            "published": [vars(p) for p in self.published],
            "skipped_deltas": self.skipped_deltas,
        }


def _default_delta_maker(old: str, new: str, out: str) -> Any:
    from edgepkg.delta import make_delta

    return make_delta(old, new, out)


def _copy_hashed(
    src: str | os.PathLike[str], repo_dir: str | os.PathLike[str], target_path: str
) -> TargetFile:
    """Copy a bundle into ``targets/`` under its hash-prefixed name; return its TargetFile."""
    digest = hashlib.sha256()
    parent, _, fname = target_path.rpartition("/")
    dest_dir = _tuf.targets_dir(repo_dir) / parent
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".incoming-{fname}"
    length = 0
    with open(src, "rb") as fin, atomic_output(tmp) as out:
        while block := fin.read(_COPY_BLOCK):
            digest.update(block)
            length += len(block)
            out.write(block)
    sha = digest.hexdigest()
    os.replace(tmp, dest_dir / f"{sha}.{fname}")
    return TargetFile(length, {"sha256": sha}, target_path)


def _verify_release_bundle(path: str, release_keys: Sequence[Any]) -> BundleInfo:
    try:
        info = verify_bundle(path, release_keys)
    except BundleError as exc:
        raise PublishRefusedError(
            f"{path}: not signed by a configured release key or not a valid bundle ({exc})"
        ) from exc
    if info.manifest.delta is not None:
        raise PublishRefusedError(
            f"{path} is a delta bundle: publish full releases; deltas are made here"
        )
    return info


def publish(
    repo_dir: str | os.PathLike[str],
    bundles: Sequence[str | os.PathLike[str]],
    *,
    deltas: int | None = None,
    delta_margin: float | None = None,
    recipients: Sequence[str] = (),
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
    delta_maker: DeltaMaker | None = None,
    workdir: str | os.PathLike[str] | None = None,
    fleet: FleetLookup | None = None,
    delta_max_bases: int | None = None,
) -> PublishResult:
    """Publish full-release bundles as targets (all or nothing), make delta targets against the
    last ``deltas`` releases of each model, and sign new targets, snapshot and timestamp.

    ``recipients`` are public-key references to add to the repository's known recipients (a
    delta is encrypted to the same recipients as its full release, so their public keys must be
    known). ``delta_maker`` is ``edgepkg.delta.make_delta`` unless given. ``fleet`` (see
    ``fleet_lookup``) adds deltas from the ``delta_max_bases`` (default 4) versions most devices
    run; it is asked once per model, after every bundle has been checked.
    """
    if not bundles:
        raise UsageError("give at least one bundle to publish")
    now = _tuf.utc(now)
    make = delta_maker or _default_delta_maker
    with _tuf.locked(repo_dir):
        config = load_config(repo_dir)
        k, margin, max_bases = delta_settings(config, deltas, delta_margin, delta_max_bases)
        remember_recipients(config, recipients)
        if not config.release_keys:
            raise RepoError("no release keys configured: `edgepkg repo init --release-key PUB`")
        release_pubs = [_keys.public_from_pem(e.pem) for e in config.release_keys]
        root_md, ts_md, snap_md, tgt_md = _tuf.verify_chain(repo_dir)
        targets = tgt_md.signed

        # 1. Check every bundle before writing anything.
        infos = [_verify_release_bundle(os.fspath(b), release_pubs) for b in bundles]
        current = releases_from_targets(targets)
        revoked = revoked_entries(targets)
        seen: dict[str, list[str]] = {}
        for rel in current:
            if rel.kind == "full":
                seen.setdefault(rel.name, []).append(rel.version)
        for entry in revoked:
            if isinstance(entry.get("name"), str) and isinstance(entry.get("version"), str):
                seen.setdefault(entry["name"], []).append(entry["version"])
        order = sorted(
            range(len(infos)),
            key=lambda i: (infos[i].manifest.name, parse_version(infos[i].manifest.version)),
        )
        for i in order:
            m = infos[i].manifest
            check_model_name(m.name)
            check_version_text(m.version)
            if any(e.get("name") == m.name and e.get("version") == m.version for e in revoked):
                raise PublishRefusedError(
                    f"{m.name} {m.version} was revoked and cannot be published again"
                )
            try:
                check_newer(m.name, m.version, seen.get(m.name, []), parse_version)
            except RepoError as exc:
                raise PublishRefusedError(str(exc)) from None
            seen.setdefault(m.name, []).append(m.version)
            if config.archive_key and config.archive_key.keyid not in infos[i].recipient_key_ids:
                raise PublishRefusedError(
                    f"{bundles[i]} is not encrypted to the release-archive key "
                    f"{config.archive_key.keyid[:16]}…: package it with that recipient too, so "
                    "later releases can be published as deltas against it"
                )

        # The fleet's distribution is read only once every bundle is known to be publishable.
        fleet_counts = _fleet_counts(fleet, sorted({info.manifest.name for info in infos}))

        # 2. Full targets, then deltas.
        result = PublishResult(targets_version=targets.version)
        archive = None
        for i in order:
            info, path = infos[i], os.fspath(bundles[i])
            m = info.manifest
            tpath = full_target_name(m.name, m.version)
            tf = _copy_hashed(path, repo_dir, tpath)
            tf.unrecognized_fields["custom"] = {"edgepkg": m.tuf_custom()}
            targets.targets[tpath] = tf
            result.published.append(PublishedTarget(tpath, "full", m.name, m.version, tf.length))
            bases = delta_bases(releases_from_targets(targets), m.name, m.version, k,
                                fleet_counts.get(m.name), max_bases)
            if not bases:
                continue
            why_not = _delta_prerequisites(config, m)
            if why_not:
                result.skipped_deltas.append(f"{m.name} {m.version}: {why_not}")
                continue
            if archive is None:
                archive = _keys.load_recipient(config.archive_key.ref, env)  # type: ignore[union-attr]
            _make_deltas(repo_dir, config, targets, path, info, bases, archive, release_pubs,
                         make, margin, env, workdir, result)

        result.targets_version = commit_targets(
            repo_dir, config, root_md.signed, tgt_md, snap_md, ts_md, now, SignerPool(env)
        )
        save_config(repo_dir, config)
    return result


def delta_settings(
    config: RepoConfig, deltas: int | None, margin: float | None, max_bases: int | None
) -> tuple[int, float, int]:
    """(last K, size margin, fleet bases) from the call, else the repository configuration."""
    k = config.delta_k if deltas is None else deltas
    margin = config.delta_margin if margin is None else margin
    max_bases = DEFAULT_MAX_BASES if max_bases is None else max_bases
    if not 0 <= k <= 16:
        raise UsageError("--deltas must be between 0 and 16")
    if not 0 < margin <= 1:
        raise UsageError("--delta-margin must be in (0, 1]")
    if not 0 <= max_bases <= 16:
        raise UsageError("--delta-max-bases must be between 0 and 16")
    return k, margin, max_bases


def remember_recipients(config: RepoConfig, recipients: Sequence[str]) -> None:
    for ref in recipients:
        pub = _keys.public_key_from_ref(ref)
        kid = _keys.key_id(pub)
        if kid not in {r.keyid for r in config.recipients}:
            config.recipients.append(PublicKeyEntry(kid, _keys.public_pem(pub)))


def _fleet_counts(fleet: FleetLookup | None, models: Sequence[str]) -> dict[str, Mapping[str, int]]:
    if fleet is None:
        return {}
    return {name: fleet(name).versions for name in models}


def delta_bases(
    current: list[ReleaseTarget],
    name: str,
    version: str,
    k: int,
    fleet: Mapping[str, int] | None,
    max_bases: int,
) -> list[ReleaseTarget]:
    """The current full releases of ``name`` to diff ``version`` against (see
    ``choose_delta_bases``; revoked releases are not current, so never chosen)."""
    full = {r.version: r for r in current if r.kind == "full" and r.name == name}
    chosen = choose_delta_bases(version, full, last_k=k, fleet=fleet, max_bases=max_bases)
    return [full[v] for v in chosen]


def _delta_prerequisites(config: RepoConfig, m: Manifest) -> str | None:
    if config.archive_key is None:
        return "no release-archive key configured (repo init --archive-key): deltas disabled"
    if config.release_signer is None:
        return "no release signer configured (repo init --release-signer): deltas disabled"
    known = {r.keyid for r in config.recipients}
    unknown = [r for r in m.recipients if r not in known]
    if unknown:
        return (f"recipient key(s) {', '.join(u[:16] for u in unknown)} unknown to the repository "
                "(publish --recipient PUB): cannot encrypt a delta to them")
    return None


def _make_deltas(
    repo_dir: str | os.PathLike[str],
    config: RepoConfig,
    targets: Any,
    new_bundle: str,
    info: BundleInfo,
    bases: list[ReleaseTarget],
    archive: Any,
    release_pubs: Sequence[Any],
    make: DeltaMaker,
    margin: float,
    env: Mapping[str, str] | None,
    workdir: str | os.PathLike[str] | None,
    result: PublishResult,
) -> None:
    from ._read import target_file

    m = info.manifest
    full_size = os.path.getsize(new_bundle)
    pem_by_id = {r.keyid: r.pem for r in config.recipients}
    recipients = [_keys.public_from_pem(pem_by_id[r]) for r in m.recipients]
    signer = _keys.load_bundle_signer(config.release_signer, env)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="edgepkg-publish-", dir=workdir) as tmp:
        os.chmod(tmp, 0o700)
        new_plain = Path(tmp) / "new.bin"
        _decrypt(new_bundle, new_plain, archive, release_pubs)
        for base in bases:
            base_info = (base.custom.get("edgepkg") or {})
            label = f"{m.name} {base.version}->{m.version}"
            old_plain = Path(tmp) / "old.bin"
            patch = Path(tmp) / "patch.bin"
            out = Path(tmp) / "delta.edgepkg"
            try:
                _decrypt(target_file(repo_dir, base), old_plain, archive, release_pubs)
                dres = make(os.fspath(old_plain), os.fspath(new_plain), os.fspath(patch))
                delta_fields = {
                    "base_version": base.version,
                    "base_sha256": base_info.get("sha256"),
                    "target_sha256": m.plaintext_sha256,
                    "target_length": m.plaintext_length,
                    "method": str(dres.method),
                }
                write_bundle(
                    patch, out,
                    manifest_fields={
                        "name": m.name, "version": m.version, "format": m.format,
                        "requirements": m.requirements, "details": m.details,
                        "policy": m.policy, "delta": delta_fields,
                    },
                    signer=signer, recipients=recipients,
                )
            except Error as exc:
                result.skipped_deltas.append(f"{label}: delta failed: {exc}")
                continue
            finally:
                old_plain.unlink(missing_ok=True)
                patch.unlink(missing_ok=True)
            size = os.path.getsize(out)
            if size > margin * full_size:
                result.skipped_deltas.append(
                    f"{label}: delta {size} B is not below {margin:g} x full bundle {full_size} B"
                )
                out.unlink()
                continue
            dm = verify_bundle(out, release_pubs).manifest
            tpath = delta_target_name(m.name, m.version, base.version)
            tf = _copy_hashed(out, repo_dir, tpath)
            tf.unrecognized_fields["custom"] = {"edgepkg": dm.tuf_custom()}
            targets.targets[tpath] = tf
            out.unlink()
            result.published.append(PublishedTarget(tpath, "delta", m.name, m.version, tf.length,
                                                    base.version, str(dres.method)))


def _decrypt(
    bundle: str | os.PathLike[str], out: Path, archive: Any, release_pubs: Sequence[Any]
) -> None:
    with open(out, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.writelines(open_plaintext(bundle, keys=[archive], trusted_keys=release_pubs))


__all__ = ["PublishRefusedError", "PublishResult", "PublishedTarget", "publish"]
