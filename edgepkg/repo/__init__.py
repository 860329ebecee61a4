"""The release repository: TUF metadata (python-tuf) over edgepkg bundles.

Write side (the release pipeline): :func:`init_repo`, :func:`publish`, :func:`refresh`,
:func:`rotate`, :func:`revoke`. Read side (update server, tooling): :func:`list_releases`,
:func:`targets_version`, :func:`status`, :func:`target_file`.
"""

from __future__ import annotations

from ._config import RepoConfig, load_config
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
from ._publish import PublishedTarget, PublishRefusedError, PublishResult, publish
from ._read import ReleaseTarget, list_releases, status, target_file, targets_version

__all__ = [
    "REFRESH_CRITICAL",
    "REFRESH_OK",
    "REFRESH_WARNING",
    "InitResult",
    "PublishRefusedError",
    "PublishResult",
    "PublishedTarget",
    "RefreshResult",
    "ReleaseTarget",
    "RepoConfig",
    "RevokeResult",
    "RotateResult",
    "init_repo",
    "list_releases",
    "load_config",
    "publish",
    "refresh",
    "revoke",
    "rotate",
    "status",
    "target_file",
    "targets_version",
]
