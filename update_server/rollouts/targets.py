"""Finding a rollout's full and delta targets among the current TUF releases (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from update_server.tuf.releases import Release


def full_target(releases: Sequence[Release], model: str, version: str) -> Release | None:
    for r in releases:
        if r.kind == "full" and r.name == model and r.version == version:
            return r
    return None


def delta_target(
    releases: Sequence[Release], model: str, version: str, base: str | None
) -> Release | None:
    if base is None:
        return None
    for r in releases:
        if (
            r.kind == "delta"
            and r.name == model
            and r.version == version
            and (r.base_version == base)
        ):
            return r
    return None
