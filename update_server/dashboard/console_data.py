"""What the console pages show, computed from the database and the TUF releases (no Flask).

Kept apart from the views so the rollout page, the release page and their tests share one
reading of the data: a rollout's devices with state and reason, its whole population (for the
progress bar), a model's releases with deltas and revocations, the fleet's version counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgepkg.protocol import InvalidVersionError, version_key
from update_server.devices.models import Device, DeviceModel, Event
from update_server.rollouts import engine as eng, service as svc
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.tuf.releases import Release

MAX_ROLLOUT_ROWS = 2000
_RESULT_LABEL = {eng.PENDING: "pending", eng.SUCCEEDED: "committed", eng.FAILED: "failed"}


def pretty(value: Any) -> str:
    """A detail value as a person reads it: text as is, structures as indented JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def failed_checks(details: Mapping[str, Any]) -> list[str]:
    """The validation rules that failed, from a ``validation_result`` event's details."""
    reasons = details.get("reasons")
    if isinstance(reasons, list):
        return [str(r) for r in reasons if r][:20]
    return []


def _last_events(
    session: Session, rollout: Rollout, device_ids: Sequence[str]
) -> dict[tuple[str, str], Event]:
    """(device, type) -> the latest event of that type about this rollout's version."""
    if not device_ids:
        return {}
    q = (
        select(Event)
        .where(
            Event.device_id.in_(list(device_ids)),
            Event.type.in_(("validation_result", "rejected", "rolled_back",
                            "verification_failed")),
            Event.model == rollout.model,
        )
        .order_by(Event.seq)
    )
    out: dict[tuple[str, str], Event] = {}
    for e in session.scalars(q):
        if e.rollout_id in (None, rollout.id) and e.version in (None, rollout.version):
            out[(e.device_id, e.type)] = e
    return out


def rollout_devices(session: Session, r: Rollout) -> list[dict[str, Any]]:
    """Every admitted device of the rollout with its state and, when it failed, why."""
    rows = list(
        session.execute(
            select(RolloutDevice, Device.name)
            .join(Device, Device.id == RolloutDevice.device_id)
            .where(RolloutDevice.rollout_id == r.id)
            .order_by(RolloutDevice.result.desc(), RolloutDevice.stage_index, Device.id)
            .limit(MAX_ROLLOUT_ROWS)
        ).all()
    )
    failed_ids = [rd.device_id for rd, _ in rows if rd.result == eng.FAILED]
    events = _last_events(session, r, failed_ids)
    out = []
    for rd, name in rows:
        outcome = None
        checks: list[str] = []
        if rd.result == eng.FAILED:
            for kind in ("rejected", "rolled_back", "verification_failed"):
                if (rd.device_id, kind) in events:
                    outcome = kind
                    break
            v = events.get((rd.device_id, "validation_result"))
            if v is not None and outcome in (None, "rejected"):
                checks = failed_checks(v.details or {})
        out.append({
            "device_id": rd.device_id,
            "name": name,
            "stage": rd.stage_index + 1,
            "state": _RESULT_LABEL.get(rd.result, rd.result),
            "outcome": (outcome or "failed").replace("_", " ") if rd.result == eng.FAILED
            else None,
            "reason": rd.reason,
            "checks": checks,
            "from_version": rd.from_version,
            "assigned_at": rd.assigned_at,
            "finished_at": rd.finished_at,
        })
    return out


def population(session: Session, r: Rollout) -> int:
    """All devices this rollout concerns: those admitted so far plus those it still selects.

    The progress bar is drawn against this, so two failures among ten devices fill a fifth of
    the bar, not all of it.
    """
    admitted = set(session.scalars(
        select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id)
    ))
    if r.status not in (eng.RUNNING, eng.PAUSED):
        return len(admitted)
    return len(admitted | set(svc.candidate_ids(session, svc.spec_of(r))))


def progress(rj: Mapping[str, Any], total: int) -> dict[str, Any]:
    """Committed / failed / pending (admitted, not finished) / not yet reached, in percent."""
    t = rj["totals"]
    committed, failed, admitted = t["committed"], t["failed"], t["admitted"]
    total = max(total, admitted, 1)
    pending = max(admitted - committed - failed, 0)
    waiting = max(total - admitted, 0)

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1)

    return {
        "total": total, "committed": committed, "failed": failed, "pending": pending,
        "waiting": waiting, "committed_pct": pct(committed), "failed_pct": pct(failed),
        "pending_pct": pct(pending), "waiting_pct": pct(waiting),
    }


# --- releases ----------------------------------------------------------------------------------


def models_summary(releases: Sequence[Release], session: Session) -> list[dict[str, Any]]:
    """One row per model: newest release, number of releases, devices running it."""
    by_model: dict[str, list[Release]] = {}
    for rel in releases:
        if rel.kind == "full":
            by_model.setdefault(rel.name, []).append(rel)
    counts = dict(session.execute(
        select(DeviceModel.model, func.count()).group_by(DeviceModel.model)
    ).all())
    out = []
    for model, rels in sorted(by_model.items()):
        newest = max(rels, key=lambda x: version_key(x.version))
        out.append({"model": model, "newest": newest.version, "releases": len(rels),
                    "devices": counts.get(model, 0)})
    return out


def model_releases(
    releases: Sequence[Release], model: str, revoked: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """A model's releases, newest first, with format, requirements, policy and deltas."""
    fulls = [r for r in releases if r.name == model and r.kind == "full"]
    deltas = [r for r in releases if r.name == model and r.kind != "full"]
    out = []
    for rel in sorted(fulls, key=lambda x: version_key(x.version), reverse=True):
        raw: Any = rel.custom if isinstance(rel.custom, dict) else {}
        custom: dict[str, Any] = raw["edgepkg"] if isinstance(raw.get("edgepkg"), dict) else raw
        out.append({
            "version": rel.version,
            "format": custom.get("format") or "—",
            "requirements": custom.get("requirements") or {},
            "policy": custom.get("policy") or {},
            "length": rel.length,
            "sha256": rel.sha256,
            "target": rel.target_path,
            "revoked": False,
            "deltas": [
                {"from": d.base_version, "length": d.length, "target": d.target_path}
                for d in sorted(deltas, key=lambda d: version_key(d.base_version or "0.0.0"))
                if d.version == rel.version
            ],
        })
    for entry in revoked:
        if entry.get("name") == model:
            out.append({"version": str(entry.get("version")), "format": "—", "requirements": {},
                        "policy": {}, "length": None, "sha256": None, "target": None,
                        "revoked": True, "revoked_reason": entry.get("reason"), "deltas": []})
    return out


def version_distribution(session: Session, model: str) -> list[tuple[str, int]]:
    """(version, devices) for the model, newest version first; "none" for no active slot."""
    rows = session.execute(
        select(DeviceModel.version, func.count())
        .where(DeviceModel.model == model)
        .group_by(DeviceModel.version)
    ).all()
    counts = Counter({(v or "none"): n for v, n in rows})
    return sorted(counts.items(), key=lambda kv: (kv[0] != "none", _safe_key(kv[0])),
                  reverse=True)


def _safe_key(v: str) -> tuple[Any, ...]:
    try:
        return (1, version_key(v))
    except InvalidVersionError:  # a device may report anything: sort it last
        return (0, v)


def device_rollouts(session: Session, device_id: str) -> list[dict[str, Any]]:
    """The rollouts a device was admitted to, newest first, with its result and reason."""
    rows = session.execute(
        select(RolloutDevice, Rollout.model, Rollout.version)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id)
        .order_by(RolloutDevice.assigned_at.desc())
        .limit(50)
    ).all()
    return [
        {"rollout_id": rd.rollout_id, "model": model, "version": version,
         "state": _RESULT_LABEL.get(rd.result, rd.result), "reason": rd.reason}
        for rd, model, version in rows
    ]
