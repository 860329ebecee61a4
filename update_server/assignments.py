"""The final safety filter on what a check-in reply may tell a device to install (pure).

Whatever the rollout service proposes, a device is only ever told to install a *full* release
target that is present and unrevoked in the current TUF targets, for the model and version
the target really carries, and never a version lower than (or equal to) what it runs unless
``allow_downgrade`` is set (operator rollback). A delta target is offered only when it exists
and its base is exactly the version the device runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgepkg.errors import Error as CoreError
from update_server.releases import Release

_SEMVER = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)


def parse_version(version: str) -> tuple[Any, ...]:
    """Semantic version key (pre-releases sort before the release). Raise ValueError."""
    try:
        from edgepkg.bundle import parse_version as core_parse  # type: ignore[attr-defined]
    except ImportError:
        core_parse = None  # type: ignore[assignment]
    if core_parse is not None:
        return tuple(core_parse(version))
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre = m.groups()
    pre_key: tuple[Any, ...]
    if pre is None:
        pre_key = (1,)
    else:
        parts: list[tuple[int, Any]] = []
        for p in pre.split("."):
            parts.append((0, int(p)) if p.isdigit() else (1, p))
        pre_key = (0, tuple(parts))
    return (int(major), int(minor), int(patch), pre_key)


def _newer(candidate: str, running: str | None) -> bool | None:
    """True if candidate > running; None when either cannot be compared."""
    if running is None:
        return True
    try:
        return parse_version(candidate) > parse_version(running)
    except (ValueError, TypeError, CoreError):
        return None


def safe_assignments(
    proposed: Iterable[Mapping[str, Any]],
    releases: Sequence[Release],
    running: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Keep only assignments that are safe to send; normalise their shape.

    ``running``: model name -> version in the device's active slot.
    """
    full = {r.target_path: r for r in releases if r.kind == "full"}
    deltas = {r.target_path: r for r in releases if r.kind == "delta"}
    out: list[dict[str, Any]] = []
    seen_models: set[str] = set()
    for a in proposed:
        if not isinstance(a, Mapping) or a.get("action", "install") != "install":
            continue
        target = a.get("target")
        release = full.get(target) if isinstance(target, str) else None
        if release is None:
            continue
        if a.get("model") not in (None, release.name) or a.get("version") not in (
            None,
            release.version,
        ):
            continue
        if release.name in seen_models:
            continue  # one assignment per model per reply
        allow_downgrade = a.get("allow_downgrade") is True
        current = running.get(release.name)
        newer = _newer(release.version, current)
        if current == release.version:
            continue
        if not newer and not allow_downgrade:
            continue
        delta_target = a.get("delta_target")
        delta = deltas.get(delta_target) if isinstance(delta_target, str) else None
        if (
            delta is None
            or delta.name != release.name
            or delta.version != release.version
            or current is None
            or delta.base_version != current
        ):
            delta_target = None
        if delta_target is None and current is not None:
            delta_target = next(
                (
                    d.target_path
                    for d in deltas.values()
                    if d.name == release.name
                    and d.version == release.version
                    and d.base_version == current
                ),
                None,
            )
        rollout_id = a.get("rollout_id")
        seen_models.add(release.name)
        out.append(
            {
                "action": "install",
                "model": release.name,
                "version": release.version,
                "target": release.target_path,
                "delta_target": delta_target,
                "rollout_id": str(rollout_id) if rollout_id is not None else None,
                "allow_downgrade": allow_downgrade,
            }
        )
    return out
