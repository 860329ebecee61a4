"""What the device endpoints ask of rollouts: assignments at check-in, outcomes from events,
a rollout's status before commit. Thin I/O over the pure engine; the caller commits.

Core statements on the hot path (a check-in of every device reads the running rollouts), ORM
objects only when a rollout is due for re-evaluation.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from edgepkg.protocol import Assignment
from update_server.alerts.service import observe_health
from update_server.db import flush_pending
from update_server.devices.auth import DeviceLike
from update_server.groups.service import selector_admits
from update_server.rollouts import engine as eng
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.rollouts.service import (
    delta_target,
    evaluate_rollout,
    full_target,
    get_rollout,
    spec_of,
    state_of,
)
from update_server.tuf.releases import Release

EVALUATE_EVERY_S = 10.0
"""How often (per process) a check-in may trigger a soak-time re-evaluation of a rollout."""

_last_eval: dict[str, float] = {}
_last_eval_lock = threading.Lock()


def _due(rollout_id: str, now: dt.datetime) -> bool:
    t = now.timestamp()
    with _last_eval_lock:
        last = _last_eval.get(rollout_id)
        if last is not None and t - last < EVALUATE_EVERY_S:
            return False
        _last_eval[rollout_id] = t
        return True


_rollouts = cast(Table, Rollout.__table__)
_rollout_devices = cast(Table, RolloutDevice.__table__)
_SELECT_RUNNING = (
    select(_rollouts)
    .where(_rollouts.c.status == eng.RUNNING)
    .order_by(_rollouts.c.created_at.desc())
)
_SELECT_DEVICE_ROLLOUTS = select(_rollout_devices.c.rollout_id, _rollout_devices.c.result).where(
    _rollout_devices.c.device_id == bindparam("device_id")
)
_UPDATE_ROLLOUT_DEVICE = (
    _rollout_devices.update()
    .where(
        _rollout_devices.c.rollout_id == bindparam("_rid"),
        _rollout_devices.c.device_id == bindparam("_did"),
    )
    .values(result=bindparam("result"), finished_at=bindparam("finished_at"))
)


def assignments_for_device(
    session: Session, device: DeviceLike, releases: Sequence[Release], now: dt.datetime
) -> list[Assignment]:
    """What this device should install now, one entry per model at most (empty = stay).

    Only running rollouts whose selector matches and whose stage admits the device assign; only
    full targets present (unrevoked) in ``releases`` are named; the delta is offered when the
    repository has one from the device's current version. Also records the device's latency
    sample for the latency alert. The caller commits.
    """
    observe_health(session, device, now)
    flush_pending(session)
    tags = tuple(device.tags or ())
    facts = getattr(device, "facts", None) or {}
    groups: dict[str, Any] = {}
    conn = session.connection()
    # Core rows (attribute access like the ORM object; spec_of/state_of accept them): a running
    # rollout is read on every check-in of every device it selects. The ORM object is loaded
    # only when the rollout is due for a (throttled) re-evaluation.
    running = [
        r
        for r in conn.execute(_SELECT_RUNNING)
        if selector_admits(session, r.selector, tags, facts, groups)
    ]
    if not running:
        return []
    versions = device.active_versions()
    mine: dict[str, Any] = {
        row.rollout_id: row
        for row in conn.execute(_SELECT_DEVICE_ROLLOUTS, {"device_id": device.id})
    }
    out: list[Assignment] = []
    seen_models: set[str] = set()
    for r in running:
        if r.model in seen_models:
            continue
        spec, state = spec_of(r), state_of(r)  # type: ignore[arg-type]
        if not spec.selector.matches(tags):
            continue
        seen_models.add(r.model)
        current = versions.get(r.model)
        row = mine.get(r.id)
        result = row.result if row is not None else None
        if row is not None and result == eng.PENDING and current == r.version:
            # the device runs the version: success even if its committed event got lost
            result = eng.SUCCEEDED
            conn.execute(
                _UPDATE_ROLLOUT_DEVICE,
                {"_rid": r.id, "_did": device.id, "result": result, "finished_at": now},
            )
        view = eng.DeviceView(device.id, tags, current, device.enabled, result)
        a = eng.assignment_for(spec, state, view)
        if (
            _due(r.id, now)
            and r.stage_index < len(r.stages)
            and (
                (now - r.stage_started_at).total_seconds()
                >= spec.stages[r.stage_index].min_soak_seconds
            )
        ):
            orm_rollout = session.get(Rollout, r.id)
            if orm_rollout is not None:
                evaluate_rollout(session, orm_rollout, now)
        if a is None:
            continue
        full = full_target(releases, a.model, a.version)
        if full is None:
            continue  # revoked or not (yet) in the TUF targets: never assign it
        if row is None:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(  # a racing check-in of the same device may have inserted it: fine
                insert(_rollout_devices).on_conflict_do_nothing(
                    index_elements=["rollout_id", "device_id"]
                ),
                {
                    "rollout_id": r.id,
                    "device_id": device.id,
                    "stage_index": a.stage_index,
                    "result": eng.PENDING,
                    "from_version": current,
                    "assigned_at": now,
                },
            )
        delta = delta_target(releases, a.model, a.version, current)
        out.append(
            Assignment(
                model=a.model,
                version=a.version,
                target=full.target_path,
                delta_target=delta.target_path if delta else None,
                rollout_id=r.id,
                allow_downgrade=a.allow_downgrade,
            )
        )
    return out


def _field(ev: Any, name: str) -> Any:
    if isinstance(ev, Mapping):
        return ev.get(name)
    return getattr(ev, name, None)


def on_device_events(
    session: Session, device: DeviceLike, events: Iterable[Any], now: dt.datetime
) -> None:
    """Record install outcomes from a batch of events (dicts or ``Event`` rows) and re-evaluate
    the rollouts they belong to (which may advance, pause or abort them). The caller commits."""
    touched: dict[str, Rollout] = {}
    for ev in events:
        rid = _field(ev, "rollout_id")
        result = eng.outcome_of_event(str(_field(ev, "type")))
        if not isinstance(rid, str) or result is None or len(rid) > 40:
            continue
        r = touched.get(rid) or session.get(Rollout, rid)
        if r is None:
            continue
        if _field(ev, "version") not in (None, r.version):
            continue  # an outcome about another version is not this rollout's
        row = session.get(RolloutDevice, (rid, device.id))
        if row is None:
            state = state_of(r)
            h = eng.stage_of(device.id, rid)
            if not selector_admits(
                session, r.selector, getattr(device, "tags", None) or [],
                getattr(device, "facts", None) or {},
            ):
                continue  # outside the selector: its outcomes must not move this rollout
            if not eng.in_stage(device.id, rid, state.cutoff):
                continue  # not admitted: the device cannot report for this rollout
            row = RolloutDevice(
                rollout_id=rid,
                device_id=device.id,
                stage_index=eng.stage_group(state, h),
                result=eng.PENDING,
                assigned_at=now,
            )
            session.add(row)
        if row.result == eng.FAILED:
            continue  # a failure stands (a later commit of a retry does not undo it)
        if row.result == eng.SUCCEEDED and result == eng.SUCCEEDED:
            continue
        row.result = result
        row.finished_at = now
        details = _field(ev, "details")
        if result == eng.FAILED and isinstance(details, Mapping):
            reason = details.get("reason")
            row.reason = str(reason)[:500] if reason is not None else str(_field(ev, "type"))
        elif result == eng.FAILED:
            row.reason = str(_field(ev, "type"))
        touched[rid] = r
    if touched:
        session.flush()
        for r in touched.values():
            evaluate_rollout(session, r, now)


def rollout_status(session: Session, rollout_id: str) -> str | None:
    """The rollout's status for a device's pre-commit check (None: no such rollout)."""
    row = session.get(Rollout, rollout_id) if len(rollout_id) <= 40 else None
    return row.status if row is not None else None


def rollout_status_json(session: Session, rollout_id: str) -> dict[str, str]:
    """``{"rollout_id", "status"}`` of a rollout; raise NotFoundError."""
    r = get_rollout(session, rollout_id)
    return {"rollout_id": r.id, "status": r.status}
