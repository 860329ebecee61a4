"""Gather the results (server events and rollouts, ``edge-updater status --json``) and check
every expectation of the demo explicitly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from edgepkg.demo import _devices, _release
from edgepkg.demo._report import DemoReport, DeviceResult, RolloutResult
from edgepkg.demo._rollouts import Tracker
from edgepkg.demo._server import Server
from edgepkg.demo._workspace import Workspace
from edgepkg.repo import list_releases, target_file

if TYPE_CHECKING:
    from edgepkg.demo._late import LateDevice

ROLES = {
    "1.0.0": "v1 baseline",
    "2.0.0": "v2 head retrained (better)",
    "3.0.0": "v3 corrupted labels (worse)",
}


def _events_for(
    events: list[dict[str, Any]], version: str, type_: str | None = None
) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("version") == version and (type_ is None or e.get("type") == type_)
    ]


def _route(events: list[dict[str, Any]], version: str) -> str | None:
    installed = _events_for(events, version, "installed")
    if not installed:
        return None
    return str(installed[0].get("details", {}).get("method") or "full")


def _bytes(events: list[dict[str, Any]], version: str | None = None) -> int:
    return sum(
        int(e.get("details", {}).get("bytes") or 0)
        for e in events
        if e.get("type") == "download_finished" and (version is None or e.get("version") == version)
    )


def _metric(events: list[dict[str, Any]], version: str) -> float | None:
    for e in _events_for(events, version, "validation_result"):
        details = e.get("details", {})
        # The gate reports the policy metric as "value" (older devices: values.candidate).
        value = details.get("value", (details.get("values") or {}).get("candidate"))
        if isinstance(value, int | float):
            return float(value)
    return None


def _v3_outcome(events: list[dict[str, Any]]) -> str:
    mine = _events_for(events, "3.0.0")
    if not mine:
        return "not offered (rollout paused)"
    rejected = [e for e in mine if e.get("type") == "rejected"]
    if rejected:
        reason = str(rejected[0].get("details", {}).get("reason") or "")
        first = reason.replace("holdout validation failed: ", "").split(";")[0]
        return "REJECTED: " + first[:80]
    return "in progress: " + ", ".join(sorted({str(e.get("type")) for e in mine}))


def summarize(
    report: DemoReport,
    server: Server,
    devices: list[_devices.Device],
    trackers: dict[str, Tracker],
    models: _release.TrainedModels,
    ws: Workspace,
    pool: ThreadPoolExecutor,
    *,
    late: LateDevice | None = None,
) -> None:
    releases = list_releases(ws.repo)
    full = {r.version: r.length for r in releases if r.kind == "full"}
    deltas: dict[str, list[str]] = {}
    for r in releases:
        if r.kind == "delta":
            deltas.setdefault(r.version, []).append(
                f"from {r.base_version} {r.length / 1024:.1f} KB "
                f"({100 * r.length / full[r.version]:.0f} %)"
            )
    for v, acc in models.accuracy.items():
        report.models[v] = {
            "role": ROLES.get(v, v),
            "accuracy": acc,
            "bundle_size": full.get(v),
            "deltas": "; ".join(deltas.get(v, [])),
        }

    statuses = list(pool.map(_devices.status, devices))
    events = {d.device_id: server.events(d.device_id) for d in devices}
    model = _release.MODEL_NAME
    for d, st in zip(devices, statuses, strict=True):
        ev = events[d.device_id]
        m = (st.get("models") or {}).get(model) or {}
        slots = m.get("slots") or {}
        active = slots.get(m.get("active_slot") or "") or {}
        installed = [v for v in ("1.0.0", "2.0.0", "3.0.0") if _events_for(ev, v, "installed")]
        report.devices.append(
            DeviceResult(
                name=d.name,
                device_id=d.device_id,
                keystore=d.keystore,
                version=active.get("version"),
                phase=m.get("phase"),
                v2_route=_route(ev, "2.0.0"),
                v2_bytes=_bytes(ev, "2.0.0") or None,
                v2_full_size=full.get("2.0.0"),
                downloaded_bytes=_bytes(ev),
                full_sizes=sum(full.get(v, 0) for v in installed),
                metric=_metric(ev, "2.0.0"),
                v3=_v3_outcome(ev),
            )
        )

    for label, t in trackers.items():
        ro = t.last
        report.rollouts.append(
            RolloutResult(
                label,
                t.rollout_id,
                t.version,
                t.stages,
                str(ro.get("status")),
                t.stages_seen,
                ro.get("reason"),
                dict(ro.get("totals") or {}),
            )
        )
    _checks(report, devices, events, trackers, deltas)
    if late is not None:
        _late_check(report, server, ws, late)


def _late_check(report: DemoReport, server: Server, ws: Workspace, late: LateDevice) -> None:
    """The device enrolled after v2 was published runs v2 through an audited key grant, and the
    v2 bundle is the one published before it enrolled (no repackaging, no republishing)."""
    from edgepkg.bundle import read_bundle_info

    did = late.device.device_id
    result = next(d for d in report.devices if d.device_id == did)
    result.note = "enrolled after v2 was published: key grant"
    grants = server.api.get(f"/api/v1/grants?device_id={did}")["grants"]
    v2_grants = [g for g in grants if g.get("version") == "2.0.0"]
    v2 = next(r for r in list_releases(ws.repo) if r.kind == "full" and r.version == "2.0.0")
    recipients = read_bundle_info(target_file(ws.repo, v2)).recipient_key_ids
    report.check(
        f"{late.device.name} enrolled after v2 was published and reached v2 through a key grant "
        "(no repackaging)",
        result.version == "2.0.0" and bool(v2_grants) and did not in recipients
        and v2.sha256 == late.v2_target_sha256,
        f"active {result.version}, {len(v2_grants)} v2 grant(s) audited by the server, "
        f"{'not ' if did not in recipients else ''}a bundle recipient, v2 bundle "
        f"{'unchanged' if v2.sha256 == late.v2_target_sha256 else 'CHANGED'}",
    )


def _checks(
    report: DemoReport,
    devices: list[_devices.Device],
    events: dict[str, list[dict[str, Any]]],
    trackers: dict[str, Tracker],
    deltas: dict[str, list[str]],
) -> None:
    n = len(devices)
    c = report.check
    boot = trackers["bootstrap v1"].last
    c(
        "v1 bootstrap rollout completed",
        boot.get("status") == "completed",
        f"status {boot.get('status')}",
    )
    c("v2 was published with a delta from v1", bool(deltas.get("2.0.0")))
    v2 = trackers["staged v2"]
    c(
        "v2 rollout went through its stages (20 % then 100 %) and completed",
        v2.last.get("status") == "completed" and v2.stages_seen[-1:] == [2],
        f"stages seen {v2.stages_seen}, status {v2.last.get('status')}",
    )
    on_v2 = [d for d in report.devices if d.version == "2.0.0"]
    c("every device ends on v2", len(on_v2) == n, f"{len(on_v2)} of {n}")
    via_delta = [d for d in report.devices if d.v2_route == "delta"]
    c(
        "most devices got v2 through a delta",
        len(via_delta) * 2 > n,
        f"{len(via_delta)} of {n} via delta",
    )
    v3 = trackers["staged v3"].last
    c(
        "v3 rollout paused itself at its first stage",
        v3.get("status") == "paused" and int(v3.get("stage", 0)) == 1,
        f"status {v3.get('status')} at stage {v3.get('stage')}, reason: {v3.get('reason')}",
    )
    rejected = {did for did, ev in events.items() if _events_for(ev, "3.0.0", "rejected")}
    with_reason = {
        did
        for did, ev in events.items()
        for e in _events_for(ev, "3.0.0", "rejected")
        if "holdout validation failed" in str(e.get("details", {}).get("reason"))
    }
    admitted = int((v3.get("totals") or {}).get("admitted", 0))
    c(
        "the v3 canaries rejected it on holdout validation, reasons on the server",
        admitted >= 1 and len(with_reason) == admitted == len(rejected),
        f"{len(with_reason)} rejected with validation reasons, {admitted} admitted",
    )
    ran_v3 = [
        did
        for did, ev in events.items()
        if _events_for(ev, "3.0.0", "trial_started") or _events_for(ev, "3.0.0", "committed")
    ]
    active_v3 = [d.name for d in report.devices if d.version == "3.0.0"]
    c(
        "no device ever ran v3 (not even in a trial)",
        not ran_v3 and not active_v3,
        f"trial/commit events {len(ran_v3)}, active {active_v3}",
    )
    offered = {did for did, ev in events.items() if _events_for(ev, "3.0.0")}
    c(
        "devices outside the canary stage were never offered v3",
        offered <= rejected,
        f"{len(offered)} devices saw v3",
    )
