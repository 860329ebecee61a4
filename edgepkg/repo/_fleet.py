"""Pure rules for fleet-aware deltas: the fleet's version distribution and the delta bases.

A delta only saves bytes for devices that run its base version, so the bases worth building
are the versions the fleet actually runs. The update server knows that distribution
(``GET /api/v1/fleet/versions?model=NAME``); a release pipeline may also pass it as a JSON file.
Both give the same document::

    {"model": "det", "versions": {"1.0.0": 412, "4.0.0": 37}}

Nothing here touches files, sockets or clocks (loading lives in ``_fleet_source``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgepkg.errors import ProtocolError, UntrustedInputError
from edgepkg.protocol import check_target_model, is_version, version_key

__all__ = [
    "DEFAULT_MAX_BASES",
    "MAX_FLEET_VERSIONS",
    "FleetDocumentError",
    "FleetVersions",
    "choose_delta_bases",
    "parse_fleet_versions",
]

DEFAULT_MAX_BASES = 4
# A fleet reports at most a few dozen versions of a model; the bound keeps a hostile or broken
# server from making publish sort millions of entries.
MAX_FLEET_VERSIONS = 10_000
MAX_DEVICE_COUNT = 10**12


class FleetDocumentError(UntrustedInputError):
    """A fleet version distribution (file or server answer) is malformed."""


@dataclass(frozen=True)
class FleetVersions:
    """How many devices run each version of ``model`` (active slot)."""

    model: str
    versions: Mapping[str, int]


def parse_fleet_versions(
    doc: object, model: str, *, source: str = "fleet document"
) -> FleetVersions:
    """Check a fleet document for ``model``; raise :class:`FleetDocumentError` naming the fault.

    Version strings that are not semantic versions are ignored rather than refused: devices
    report what their slots hold, and such a version can never be a published delta base.
    """
    if not isinstance(doc, dict):
        raise FleetDocumentError(f"{source}: expected a JSON object with 'model' and 'versions'")
    name = doc.get("model")
    if name != model:
        raise FleetDocumentError(
            f"{source}: describes model {name!r}, not {model!r}: give the distribution of the "
            "model being published"
        )
    try:
        check_target_model(model)
    except ProtocolError as exc:
        raise FleetDocumentError(f"{source}: {exc}") from None
    raw = doc.get("versions")
    if not isinstance(raw, dict):
        raise FleetDocumentError(f"{source}: 'versions' must be an object of version -> count")
    if len(raw) > MAX_FLEET_VERSIONS:
        raise FleetDocumentError(f"{source}: more than {MAX_FLEET_VERSIONS} versions listed")
    versions: dict[str, int] = {}
    for version, count in raw.items():
        bad = isinstance(count, bool) or not isinstance(count, int)
        if bad or not 0 <= count <= MAX_DEVICE_COUNT:
            raise FleetDocumentError(
                f"{source}: device count of version {str(version)[:100]!r} must be a "
                f"non-negative integer, not {count!r}"
            )
        if is_version(version) and count > 0:
            versions[version] = count
    return FleetVersions(model, versions)


def choose_delta_bases(
    new_version: str,
    published: Iterable[str],
    *,
    last_k: int,
    fleet: Mapping[str, int] | None = None,
    max_bases: int = DEFAULT_MAX_BASES,
) -> list[str]:
    """The base versions to make deltas from, for a release ``new_version`` of one model.

    ``published`` are the model's current (so unrevoked) full releases. Only those lower than
    ``new_version`` qualify. The result is the ``max_bases`` most-run versions of ``fleet``
    (ties: the higher version first, its delta is usually smaller), then the ``last_k`` newest
    releases not already chosen: these cover a release the fleet is only now moving to, before
    its devices have checked in. Without a fleet the rule is the last ``last_k`` releases.
    """
    new_key = version_key(new_version)
    older = sorted(
        {v for v in published if version_key(v) < new_key}, key=version_key, reverse=True
    )
    chosen: list[str] = []
    if fleet:
        by_count = sorted(
            (v for v in older if fleet.get(v, 0) > 0),
            key=lambda v: (fleet[v], version_key(v)),
            reverse=True,
        )
        chosen.extend(by_count[: max(0, max_bases)])
    chosen.extend(v for v in older[: max(0, last_k)] if v not in chosen)
    return chosen
