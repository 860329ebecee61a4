"""The check-in safety filter: only current full targets, never down unless allowed (pure)."""

from __future__ import annotations

from typing import Any

from edgepkg.protocol import Assignment, Version
from update_server.devices.assignments import safe_assignments
from update_server.tuf.releases import ReleaseTarget


def rel(name: str, version: str, kind: str = "full", base: str | None = None) -> ReleaseTarget:
    path = (
        f"models/{name}/{version}/{name}-{version}.edgepkg"
        if kind == "full"
        else f"models/{name}/{version}/delta-from-{base}.edgepkg"
    )
    return ReleaseTarget(name, version, kind, path, 1, "0" * 64, base, {})


RELEASES = [
    rel("m", "1.0.0"),
    rel("m", "2.0.0"),
    rel("m", "2.0.0", "delta", "1.0.0"),
    rel("other", "3.0.0"),
]


def ask(version: str, **kw: Any) -> Assignment:
    fields: dict[str, Any] = {
        "model": "m",
        "version": version,
        "target": f"models/m/{version}/m-{version}.edgepkg",
        "rollout_id": "r1",
        **kw,
    }
    return Assignment(**fields)


def safe(proposed: list[Any], releases: Any, running: dict[str, str]) -> list[dict[str, Any]]:
    """The filter's answer as it goes on the wire."""
    return [a.to_json() for a in safe_assignments(proposed, releases, running)]


def test_upgrade_passes_and_gets_the_delta_from_the_running_version() -> None:
    out = safe([ask("2.0.0")], RELEASES, {"m": "1.0.0"})
    assert out == [
        {
            "action": "install",
            "model": "m",
            "version": "2.0.0",
            "target": "models/m/2.0.0/m-2.0.0.edgepkg",
            "delta_target": "models/m/2.0.0/delta-from-1.0.0.edgepkg",
            "rollout_id": "r1",
            "allow_downgrade": False,
        }
    ]


def test_delta_for_another_base_is_dropped_but_full_target_kept() -> None:
    out = safe(
        [ask("2.0.0", delta_target="models/m/2.0.0/delta-from-1.0.0.edgepkg")],
        RELEASES,
        {"m": "1.5.0"},
    )
    assert out[0]["delta_target"] is None and out[0]["version"] == "2.0.0"


def test_targets_not_in_current_metadata_are_never_assigned() -> None:
    assert safe([ask("9.9.9")], RELEASES, {"m": "1.0.0"}) == []
    forged = ask("2.0.0", target="models/m/2.0.0/delta-from-1.0.0.edgepkg")
    assert safe([forged], RELEASES, {"m": "1.0.0"}) == []  # a delta is not a full
    mismatch = ask("2.0.0", model="other")
    assert safe([mismatch], RELEASES, {"m": "1.0.0"}) == []


def test_no_downgrade_unless_operator_rollback() -> None:
    assert safe([ask("1.0.0")], RELEASES, {"m": "2.0.0"}) == []
    assert safe([ask("2.0.0")], RELEASES, {"m": "2.0.0"}) == []  # same version
    back = safe([ask("1.0.0", allow_downgrade=True)], RELEASES, {"m": "2.0.0"})
    assert back[0]["version"] == "1.0.0" and back[0]["allow_downgrade"] is True
    # An unparseable running version is not "lower": stay unless it is a rollback.
    assert safe([ask("2.0.0")], RELEASES, {"m": "garbage"}) == []


def test_one_assignment_per_model_and_junk_ignored() -> None:
    out = safe(
        [ask("2.0.0"), ask("2.0.0"), "junk", {"action": "dance"}],
        RELEASES,
        {},
    )
    assert len(out) == 1 and out[0]["delta_target"] is None


def test_semantic_version_order() -> None:
    assert Version.parse("1.10.0") > Version.parse("1.9.9")
    assert Version.parse("2.0.0") > Version.parse("2.0.0-rc.1")
