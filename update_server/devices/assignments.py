"""The final safety filter on what a check-in reply may tell a device to install (pure).

Whatever the rollout service proposes, a device is only ever told to install a *full* release
target that is present and unrevoked in the current TUF targets, for the model and version
the target really carries, and never a version lower than (or equal to) what it runs unless
``allow_downgrade`` is set (operator rollback). A delta target is offered only when it exists
and its base is exactly the version the device runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from edgepkg.protocol import Assignment, InvalidVersionError, Version
from update_server.tuf.releases import Release


def _newer(candidate: str, running: str | None) -> bool | None:
    """True if candidate > running; None when either cannot be compared."""
    if running is None:
        return True
    try:
        return Version.parse(candidate) > Version.parse(running)
    except InvalidVersionError:
        return None


def safe_assignments(
    proposed: Iterable[Assignment],
    releases: Sequence[Release],
    running: Mapping[str, str],
) -> list[Assignment]:
    """Keep only assignments that are safe to send; fill in the delta when one fits.

    ``running``: model name -> version in the device's active slot.
    """
    full = {r.target_path: r for r in releases if r.kind == "full"}
    deltas = {r.target_path: r for r in releases if r.kind == "delta"}
    out: list[Assignment] = []
    seen_models: set[str] = set()
    for a in proposed:
        if not isinstance(a, Assignment):
            continue  # defensive: only typed proposals are considered
        release = full.get(a.target)
        if release is None:
            continue
        if a.model != release.name or a.version != release.version:
            continue
        if release.name in seen_models:
            continue  # one assignment per model per reply
        current = running.get(release.name)
        if current == release.version:
            continue
        if not _newer(release.version, current) and not a.allow_downgrade:
            continue
        delta_target = a.delta_target
        delta = deltas.get(delta_target) if delta_target is not None else None
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
        seen_models.add(release.name)
        out.append(
            Assignment(
                model=release.name,
                version=release.version,
                target=release.target_path,
                delta_target=delta_target,
                rollout_id=a.rollout_id,
                allow_downgrade=a.allow_downgrade,
                maintenance_window=a.maintenance_window,  # the rollout's, already validated
            )
        )
    return out
