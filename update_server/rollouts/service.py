"""Rollouts, persisted: the thin layer between the pure engine (:mod:`rollouts`) and the DB.

Called by the operator API and dashboard (:func:`create_rollout`, :func:`operator_action`,
:func:`rollback`, :func:`list_rollouts`, :func:`rollout_json`) and by
:mod:`.device_path` (what the check-in and events endpoints call). Functions take the caller's
session and never commit: the request commits (so a check-in and the rollout rows it touches
land together). Rollout state changes are written with a compare-and-swap on ``revision``, so
two app nodes evaluating the same rollout at once cannot both advance it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import Counter
from collections.abc import Sequence
from typing import Any

from flask import has_app_context
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from edgepkg.protocol import InvalidVersionError, Version, version_key
from update_server.db import utcnow
from update_server.devices.models import Device, DeviceModel
from update_server.errors import ConflictError, NotFoundError
from update_server.groups.service import group_node, selector_admits
from update_server.rollouts import engine as eng, field_gate as fg
from update_server.rollouts.field_check import field_gate_result, with_field_gate
from update_server.rollouts.models import Rollout, RolloutDevice
from update_server.rollouts.schedule import parse_schedule, save_schedule, schedule_json
from update_server.rollouts.spec import parse_spec
from update_server.rollouts.targets import (  # re-exported: the device path uses them
    delta_target as delta_target,
    full_target as full_target,
)
from update_server.services import services
from update_server.tuf.releases import Release
from update_server.webhooks import service as webhooks

ACTIVE = (eng.RUNNING, eng.PAUSED, eng.AWAITING_APPROVAL)
"""States that hold the model + selector's ``active_key`` (awaiting approval included, so a
second rollout cannot sneak past one waiting for its approver)."""


# --- conversions -----------------------------------------------------------------------------


def spec_of(r: Rollout) -> eng.RolloutSpec:
    return eng.RolloutSpec(
        rollout_id=r.id,
        model=r.model,
        version=r.version,
        selector=eng.Selector(frozenset(r.selector.get("tags", [])), r.selector.get("group")),
        stages=tuple(eng.Stage(float(s["percent"]), int(s["min_soak_seconds"])) for s in r.stages),
        success_share=r.success_share,
        failure_share=r.failure_share,
        min_devices=r.min_devices,
        on_failure="abort" if r.on_failure == "abort" else "pause",
        allow_downgrade=r.allow_downgrade,
        from_version=r.from_version,
        field_gate=fg.FieldGate(**r.field_gate) if r.field_gate else None,
    )


def state_of(r: Rollout) -> eng.RolloutState:
    return eng.RolloutState(
        status=r.status,
        stage_index=r.stage_index,
        stage_started_at=r.stage_started_at,
        failure_window_start=r.failure_window_start,
        cutoffs=tuple(float(c) for c in r.cutoffs),
        stage_sizes=tuple(int(s) for s in r.stage_sizes),
        reason=r.reason,
    )


def _state_values(s: eng.RolloutState) -> dict[str, Any]:
    return {
        "status": s.status,
        "stage_index": s.stage_index,
        "stage_started_at": s.stage_started_at,
        "failure_window_start": s.failure_window_start,
        "cutoffs": list(s.cutoffs),
        "stage_sizes": list(s.stage_sizes),
        "reason": s.reason,
    }


def _active_key(spec: eng.RolloutSpec) -> str:
    return f"{spec.model}|{spec.selector.key()}"


def _save_state(session: Session, r: Rollout, new: eng.RolloutState, now: dt.datetime) -> bool:
    """Compare-and-swap the rollout's state; False if another node changed it first."""
    values = _state_values(new)
    values["active_key"] = _active_key(spec_of(r)) if new.status in ACTIVE else None
    values["updated_at"] = now
    values["revision"] = r.revision + 1
    res = session.execute(
        update(Rollout)
        .where(Rollout.id == r.id, Rollout.revision == r.revision)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        session.expire(r)
        return False
    for k, v in values.items():
        setattr(r, k, v)
    # The row was written with an UPDATE statement; keep the ORM from writing it again.
    for k, v in values.items():
        set_committed_value(r, k, v)
    return True


# --- devices ---------------------------------------------------------------------------------


def _versions(session: Session, model: str) -> dict[str, str | None]:
    rows = session.execute(
        select(DeviceModel.device_id, DeviceModel.version).where(DeviceModel.model == model)
    )
    return {d: v for d, v in rows.all()}  # noqa: C416 - rows are Row objects, not pairs


def candidate_ids(session: Session, spec: eng.RolloutSpec) -> list[str]:
    """Enabled devices the selector matches that still need the rollout's version."""
    versions = _versions(session, spec.model)
    out = []
    sj = spec.selector.to_json()
    cache: dict[str, Any] = {}
    for dev_id, tags, facts in session.execute(
        select(Device.id, Device.tags, Device.facts).where(Device.status == "enabled")
    ):
        if not selector_admits(session, sj, tags or [], facts, cache):
            continue
        current = versions.get(dev_id)
        if spec.from_version is not None:
            if current == spec.from_version:
                out.append(dev_id)
        elif current != spec.version:
            out.append(dev_id)
    return out


# --- operator actions ------------------------------------------------------------------------


def _new_id() -> str:
    return "ro-" + secrets.token_hex(8)


def create_rollout(
    session: Session,
    body: Any,
    *,
    releases: Sequence[Release],
    now: dt.datetime,
    created_by: str | None = None,
    awaiting_approval: bool = False,
) -> Rollout:
    """Validate and start a rollout. 409 when one is already active for the model + selector.

    ``awaiting_approval``: store it unstarted until :func:`start_approved` (four-eyes rule)."""
    spec = parse_spec(_new_id(), body)
    if spec.selector.group is not None and group_node(session, spec.selector.group) is None:
        raise NotFoundError(
            f"no group {spec.selector.group!r}: save it first (POST /api/v1/groups)",
            code="unknown_group",
        )


    schedule = parse_schedule(body, now)
    if full_target(releases, spec.model, spec.version) is None:
        raise NotFoundError(
            f"{spec.model} {spec.version} is not a current release in the TUF repository",
            code="unknown_release",
        )
    row = _insert(
        session, spec, now=now, created_by=created_by, awaiting_approval=awaiting_approval
    )
    save_schedule(session, row, schedule, now)
    return row


def start_approved(session: Session, r: Rollout, now: dt.datetime) -> Rollout:
    """Start a rollout that was awaiting approval (409 when it is not, or changed meanwhile)."""
    spec = spec_of(r)
    new = eng.approve(spec, state_of(r), candidate_ids(session, spec), now)
    if not _save_state(session, r, new, now):
        raise ConflictError("the rollout changed meanwhile; reload and try again")
    return r


def _insert(
    session: Session,
    spec: eng.RolloutSpec,
    *,
    now: dt.datetime,
    created_by: str | None,
    rollback_of: str | None = None,
    awaiting_approval: bool = False,
) -> Rollout:
    key = _active_key(spec)
    clash = session.scalar(select(Rollout.id).where(Rollout.active_key == key))
    if clash is not None:
        raise ConflictError(
            f"rollout {clash} is already active for {spec.model} with this selector; abort it first"
        )
    state = eng.start(spec, candidate_ids(session, spec), now)
    if awaiting_approval:
        state = eng.RolloutState(**{**_state_values(state), "status": eng.AWAITING_APPROVAL})
    row = Rollout(
        id=spec.rollout_id,
        model=spec.model,
        version=spec.version,
        selector=spec.selector.to_json(),
        stages=[
            {"percent": s.percent, "min_soak_seconds": s.min_soak_seconds} for s in spec.stages
        ],
        success_share=spec.success_share,
        failure_share=spec.failure_share,
        min_devices=spec.min_devices,
        on_failure=spec.on_failure,
        allow_downgrade=spec.allow_downgrade,
        from_version=spec.from_version,
        field_gate=spec.field_gate.to_json() if spec.field_gate else None,
        rollback_of=rollback_of,
        active_key=key,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        revision=1,
        **_state_values(state),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ConflictError(
            f"a rollout is already active for {spec.model} with this selector"
        ) from None
    return row


def get_rollout(session: Session, rollout_id: str) -> Rollout:
    row = session.get(Rollout, rollout_id) if len(rollout_id) <= 40 else None
    if row is None:
        raise NotFoundError(f"no rollout {rollout_id!r}")
    return row


def list_rollouts(session: Session, *, limit: int = 200) -> list[Rollout]:
    return list(session.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(limit)))


def operator_action(
    session: Session,
    rollout_id: str,
    action: str,
    *,
    now: dt.datetime,
    actor: str | None = None,
    reason: str | None = None,
) -> Rollout:
    """pause / resume / abort (409 when the rollout is not in a state that allows it)."""
    r = get_rollout(session, rollout_id)
    who = f" by {actor}" if actor else ""
    default = {"pause": f"paused{who}", "abort": f"aborted{who}"}.get(action)
    if action == "resume":
        clash = session.scalar(
            select(Rollout.id).where(
                Rollout.active_key == _active_key(spec_of(r)), Rollout.id != r.id
            )
        )
        if clash is not None:
            raise ConflictError(f"rollout {clash} is active for the same model and selector")
    new = eng.operator_action(state_of(r), action, now, reason or default)
    if not _save_state(session, r, new, now):
        raise ConflictError("the rollout changed meanwhile; reload and try again")
    if action == "pause":
        _notify(session, r, eng.Decision("pause", new.reason or ""), now)
    elif action == "abort":
        _notify(session, r, eng.Decision("abort", new.reason or ""), now)
    return r


def rollback(
    session: Session,
    rollout_id: str,
    *,
    releases: Sequence[Release],
    now: dt.datetime,
    actor: str | None = None,
) -> Rollout:
    """Abort the rollout and start one moving its devices back to the version they ran before.

    The previous version is the one most devices of the rollout ran before it (recorded when
    they were admitted), else the highest current release below the rollout's version. It must
    be a current, unrevoked release.
    """
    r = get_rollout(session, rollout_id)
    if r.from_version is not None:
        raise ConflictError("this rollout is itself a rollback")
    before = Counter(
        v
        for v in session.scalars(
            select(RolloutDevice.from_version).where(RolloutDevice.rollout_id == r.id)
        )
        if v and v != r.version and full_target(releases, r.model, v) is not None
    )
    previous = before.most_common(1)[0][0] if before else None
    if previous is None:
        lower = [
            x.version
            for x in releases
            if x.kind == "full" and x.name == r.model and _lt(x.version, r.version)
        ]
        previous = max(lower, key=version_key) if lower else None
    if previous is None:
        raise NotFoundError(
            f"no earlier release of {r.model} to roll back to", code="no_previous_release"
        )
    who = f" by {actor}" if actor else ""
    if r.status in ACTIVE:
        new = eng.operator_action(state_of(r), "abort", now, f"rolled back to {previous}{who}")
        if not _save_state(session, r, new, now):
            raise ConflictError("the rollout changed meanwhile; reload and try again")
    spec = eng.rollback_spec(spec_of(r), _new_id(), previous)
    return _insert(session, spec, now=now, created_by=actor, rollback_of=r.id)


def _lt(a: str, b: str) -> bool:
    try:
        return Version.parse(a) < Version.parse(b)
    except InvalidVersionError:
        return False


# --- evaluation ------------------------------------------------------------------------------


def tallies(session: Session, r: Rollout) -> list[eng.GroupTally]:
    """Per-stage-group counts in one aggregate query."""
    state = state_of(r)
    in_window = case(
        (
            and_(
                RolloutDevice.finished_at.is_not(None),
                RolloutDevice.finished_at >= r.failure_window_start,
            ),
            1,
        ),
        else_=0,
    )
    rows = session.execute(
        select(RolloutDevice.stage_index, RolloutDevice.result, in_window, func.count())
        .where(RolloutDevice.rollout_id == r.id)
        .group_by(RolloutDevice.stage_index, RolloutDevice.result, in_window)
    )
    n = max(state.stage_index + 1, len(r.stages) if r.status == eng.COMPLETED else 0)
    acc = [[0, 0, 0, 0, 0] for _ in range(n)]  # admitted, ok, bad, bad_w, fin_w
    for stage, result, win, count in rows:
        if not 0 <= stage < n:
            continue
        a = acc[stage]
        a[0] += count
        if result == eng.SUCCEEDED:
            a[1] += count
        elif result == eng.FAILED:
            a[2] += count
        if win and result in (eng.SUCCEEDED, eng.FAILED):
            a[4] += count
            if result == eng.FAILED:
                a[3] += count
    sizes = list(state.stage_sizes) + [0] * n
    return [eng.GroupTally(i, sizes[i], *acc[i]) for i in range(n)]


def evaluate_rollout(session: Session, r: Rollout, now: dt.datetime) -> eng.Decision:
    """Decide and apply (advance / complete / pause / abort) for one rollout."""
    if r.status != eng.RUNNING:
        return eng.Decision("none", f"rollout is {r.status}")
    spec, state = spec_of(r), state_of(r)
    decision = eng.decide(spec, state, tallies(session, r), now)
    if spec.field_gate is not None and decision.action in ("none", "advance", "complete"):
        result = field_gate_result(session, r, spec, state, _versions(session, r.model), now)
        decision = with_field_gate(spec, decision, result)
    if decision.action == "none":
        return decision
    ids: list[str] = []
    if decision.action == "advance":
        ids = candidate_ids(session, spec)
        # devices already admitted count as candidates even if they now run the version
        ids += list(
            session.scalars(select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id))
        )
    new = eng.apply_decision(spec, state, decision, ids, now)
    if decision.action in ("pause", "abort"):
        new = eng.RolloutState(**{**_state_values(new), "reason": decision.reason})
    if _save_state(session, r, new, now):
        _notify(session, r, decision, now)
    return decision


def _notify(session: Session, r: Rollout, decision: eng.Decision, now: dt.datetime) -> None:
    """Queue the rollout.paused / .completed / .aborted webhook (no-op without endpoints)."""
    event = {"pause": "rollout.paused", "complete": "rollout.completed",
             "abort": "rollout.aborted"}.get(decision.action)
    if event is None:
        return
    if not has_app_context():
        return  # a job outside the app (tests, scripts) has no webhook configuration
    webhooks.enqueue(session, services().config, event, {
        "rollout_id": r.id, "model": r.model, "version": r.version, "status": r.status,
        "stage": r.stage_index + 1, "reason": decision.reason}, now)


def evaluate_all(session: Session, now: dt.datetime) -> dict[str, eng.Decision]:
    """Evaluate every running rollout (a cron or ``edgepkg-server`` command can call this)."""
    out = {}
    for r in session.scalars(select(Rollout).where(Rollout.status == eng.RUNNING)):
        out[r.id] = evaluate_rollout(session, r, now)
    return out



# --- JSON views ------------------------------------------------------------------------------


def rollout_json(session: Session, r: Rollout) -> dict[str, Any]:
    out = _rollout_json(session, r)
    out.update(schedule_json(session, r, utcnow()))  # may say status "scheduled"
    return out


def _rollout_json(session: Session, r: Rollout) -> dict[str, Any]:
    groups = tallies(session, r)
    return {
        "id": r.id,
        "model": r.model,
        "version": r.version,
        "selector": r.selector,
        "stages": r.stages,
        "success_share": r.success_share,
        "failure_share": r.failure_share,
        "min_devices": r.min_devices,
        "on_failure": r.on_failure,
        "allow_downgrade": r.allow_downgrade,
        "from_version": r.from_version,
        "rollback_of": r.rollback_of,
        "field_gate": r.field_gate,
        "status": r.status,
        "reason": r.reason,
        "stage": r.stage_index + 1,
        "stage_percent": r.stages[r.stage_index]["percent"] if r.stages else None,
        "stage_started_at": r.stage_started_at.isoformat(),
        "created_by": r.created_by,
        "created_at": r.created_at.isoformat(),
        "updated_at": r.updated_at.isoformat(),
        "groups": [
            {
                "stage": g.stage_index + 1,
                "expected": max(g.expected, g.admitted),
                "admitted": g.admitted,
                "committed": g.succeeded,
                "failed": g.failed,
                "pending": g.pending,
            }
            for g in groups
        ],
        "totals": {
            "admitted": sum(g.admitted for g in groups),
            "committed": sum(g.succeeded for g in groups),
            "failed": sum(g.failed for g in groups),
        },
    }
