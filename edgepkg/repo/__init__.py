"""The release repository: TUF metadata (python-tuf) over edgepkg bundles.

Write side (the release pipeline): :func:`init_repo`, :func:`publish`, :func:`refresh`,
:func:`rotate`, :func:`revoke`, :func:`make_missing_deltas` (deltas for a published release;
fleet-aware bases with :func:`fleet_lookup`). Read side (update server, tooling):
:func:`list_releases`, :func:`targets_version`, :func:`status`, :func:`target_file`.

The package imports lazily: ``edgepkg.repo._policy`` (pure rules: durations, expiry, names)
must stay importable without tuf and securesystemslib, and Python imports a package's
``__init__`` before any of its modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers and readers; loaded on first use below
    from ._backfill import make_missing_deltas
    from ._config import (
        RepoConfig,
        load_config,
    )
    from ._fleet import FleetDocumentError, FleetVersions, choose_delta_bases, parse_fleet_versions
    from ._fleet_source import FleetLookup, fleet_lookup
    from ._ops import (
        REFRESH_CRITICAL,
        REFRESH_OK,
        REFRESH_WARNING,
        InitResult,
        RefreshResult,
        RevokeResult,
        RotateResult,
        init_repo,
        refresh,
        revoke,
        rotate,
    )
    from ._publish import (
        PublishedTarget,
        PublishRefusedError,
        PublishResult,
        publish,
    )
    from ._read import (
        ReleaseTarget,
        list_releases,
        status,
        target_file,
        targets_version,
    )

_WHERE = {
    "FleetDocumentError": "_fleet",
    "FleetLookup": "_fleet_source",
    "FleetVersions": "_fleet",
    "choose_delta_bases": "_fleet",
    "fleet_lookup": "_fleet_source",
    "make_missing_deltas": "_backfill",
    "parse_fleet_versions": "_fleet",
    "REFRESH_CRITICAL": "_ops",
    "REFRESH_OK": "_ops",
    "REFRESH_WARNING": "_ops",
    "InitResult": "_ops",
    "PublishRefusedError": "_publish",
    "PublishResult": "_publish",
    "PublishedTarget": "_publish",
    "RefreshResult": "_ops",
    "ReleaseTarget": "_read",
    "RepoConfig": "_config",
    "RevokeResult": "_ops",
    "RotateResult": "_ops",
    "init_repo": "_ops",
    "list_releases": "_read",
    "load_config": "_config",
    "publish": "_publish",
    "refresh": "_ops",
    "revoke": "_ops",
    "rotate": "_ops",
    "status": "_read",
    "target_file": "_read",
    "targets_version": "_read",
}

__all__ = [
    "REFRESH_CRITICAL",
    "REFRESH_OK",
    "REFRESH_WARNING",
    "FleetDocumentError",
    "FleetLookup",
    "FleetVersions",
    "InitResult",
    "PublishRefusedError",
    "PublishResult",
    "PublishedTarget",
    "RefreshResult",
    "ReleaseTarget",
    "RepoConfig",
    "RevokeResult",
    "RotateResult",
    "choose_delta_bases",
    "fleet_lookup",
    "init_repo",
    "list_releases",
    "load_config",
    "make_missing_deltas",
    "parse_fleet_versions",
    "publish",
    "refresh",
    "revoke",
    "rotate",
    "status",
    "target_file",
    "targets_version",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
