"""``repo deltas``: make the missing deltas to an already-published release.

A delta can be skipped at publish time (a recipient the repository did not know yet, a base the
fleet did not run then) and publish never comes back to it. This builds the deltas a release
should have now (same base rule as publish: last K plus the fleet's most-run versions), skips
those that exist, and commits them like publish does: under the repository lock, targets,
snapshot and timestamp re-signed, timestamp last.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime

from edgepkg.errors import RepoError

from . import _keys, _tuf
from ._config import load_config, save_config
from ._fleet_source import FleetLookup
from ._ops import SignerPool, commit_targets
from ._publish import (
    DeltaMaker,
    PublishResult,
    _default_delta_maker,
    _delta_prerequisites,
    _make_deltas,
    _verify_release_bundle,
    delta_bases,
    delta_settings,
    remember_recipients,
)
from ._read import releases_from_targets, revoked_entries, target_file

__all__ = ["make_missing_deltas"]


def make_missing_deltas(
    repo_dir: str | os.PathLike[str],
    name: str,
    version: str,
    *,
    fleet: FleetLookup | None = None,
    deltas: int | None = None,
    delta_max_bases: int | None = None,
    delta_margin: float | None = None,
    recipients: Sequence[str] = (),
    now: datetime | None = None,
    env: Mapping[str, str] | None = None,
    delta_maker: DeltaMaker | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> PublishResult:
    """Add the delta targets ``name`` ``version`` lacks; ``published`` lists only new ones.

    Metadata is re-signed only when a delta was added (or new recipients were remembered, which
    changes only the configuration file).
    """
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
        current = releases_from_targets(targets)
        full = next(
            (r for r in current if r.kind == "full" and r.name == name and r.version == version),
            None,
        )
        if full is None:
            if any(e.get("name") == name and e.get("version") == version
                   for e in revoked_entries(targets)):
                raise RepoError(f"{name} {version} was revoked: it gets no deltas")
            raise RepoError(
                f"{name} {version} is not published in {os.fspath(repo_dir)}: publish it first"
            )
        have = {r.base_version for r in current
                if r.kind == "delta" and r.name == name and r.version == version}
        counts = fleet(name).versions if fleet is not None else None
        wanted = delta_bases(current, name, version, k, counts, max_bases)
        missing = [b for b in wanted if b.version not in have]

        result = PublishResult(targets_version=targets.version)
        if missing:
            path = os.fspath(target_file(repo_dir, full))
            info = _verify_release_bundle(path, release_pubs)
            why_not = _delta_prerequisites(config, info.manifest)
            if why_not:
                result.skipped_deltas.append(f"{name} {version}: {why_not}")
            else:
                archive = _keys.load_recipient(config.archive_key.ref, env)  # type: ignore[union-attr]
                _make_deltas(repo_dir, config, targets, path, info, missing, archive,
                             release_pubs, make, margin, env, workdir, result)
        if result.published:
            result.targets_version = commit_targets(
                repo_dir, config, root_md.signed, tgt_md, snap_md, ts_md, now, SignerPool(env)
            )
        save_config(repo_dir, config)
    return result
