"""Rollouts, persisted: the thin layer between the pure engine (:mod:`rollouts`) and the DB.

Called by the check-in and events endpoints (:func:`assignments_for_device`,
:func:`on_device_events`, :func:`rollout_status`) and by the operator API and dashboard
(:func:`create_rollout`, :func:`operator_action`, :func:`rollback`, :func:`list_rollouts`,
:func:`fleet_alerts`). Functions take the caller's session and never commit: the request
commits (so a check-in and the rollout rows it touches land together). Rollout state changes are
written with a compare-and-swap on ``revision``, so two app nodes evaluating the same rollout at
once cannot both advance it.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from flask import Flask
from sqlalchemy import Table, and_, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from update_server import alerts as al
from update_server import rollouts as eng
from update_server.errors import ConflictError, NotFoundError
from update_server.models import Device, DeviceModel, Event
from update_server.releases import Release
from update_server.rollout_models import DeviceLatencyBaseline, Rollout, RolloutDevice

ACTIVE = (eng.RUNNING, eng.PAUSED)
EVALUATE_EVERY_S = 10.0
"""How often (per process) a check-in may trigger a soak-time re-evaluation of a rollout."""

_last_eval: dict[str, float] = {}
_last_eval_lock = threading.Lock()


# --- conversions -----------------------------------------------------------------------------


def spec_of(r: Rollout) -> eng.RolloutSpec:
    return eng.RolloutSpec(
        rollout_id=r.id,
        model=r.model,
        version=r.version,
        selector=eng.Selector(frozenset(r.selector.get("tags", []))),
        stages=tuple(eng.Stage(float(s["percent"]), int(s["min_soak_seconds"])) for s in r.stages),
        success_share=r.success_share,
        failure_share=r.failure_share,
        min_devices=r.min_devices,
        on_failure="abort" if r.on_failure == "abort" else "pause",
        allow_downgrade=r.allow_downgrade,
        from_version=r.from_version,
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
    from sqlalchemy.orm.attributes import set_committed_value

    for k, v in values.items():
        set_committed_value(r, k, v)
    return True


# --- devices ---------------------------------------------------------------------------------


def _versions(session: Session, model: str) -> dict[str, str | None]:
    rows = session.execute(
        select(DeviceModel.device_id, DeviceModel.version).where(DeviceModel.model == model)
    )
    return {d: v for d, v in rows}


def candidate_ids(session: Session, spec: eng.RolloutSpec) -> list[str]:
    """Enabled devices the selector matches that still need the rollout's version."""
    versions = _versions(session, spec.model)
    out = []
    for dev_id, tags in session.execute(
        select(Device.id, Device.tags).where(Device.status == "enabled")
    ):
        if not spec.selector.matches(tags or []):
            continue
        current = versions.get(dev_id)
        if spec.from_version is not None:
            if current == spec.from_version:
                out.append(dev_id)
        elif current != spec.version:
            out.append(dev_id)
    return out


def _releases_by_target(releases: Sequence[Release]) -> dict[str, Release]:
    return {r.target_path: r for r in releases}


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
) -> Rollout:
    """Validate and start a rollout. 409 when one is already active for the model + selector."""
    spec = eng.parse_spec(_new_id(), body)
    if full_target(releases, spec.model, spec.version) is None:
        raise NotFoundError(
            f"{spec.model} {spec.version} is not a current release in the TUF repository",
            code="unknown_release",
        )
    return _insert(session, spec, now=now, created_by=created_by)


def _insert(
    session: Session,
    spec: eng.RolloutSpec,
    *,
    now: dt.datetime,
    created_by: str | None,
    rollback_of: str | None = None,
) -> Rollout:
    key = _active_key(spec)
    clash = session.scalar(select(Rollout.id).where(Rollout.active_key == key))
    if clash is not None:
        raise ConflictError(
            f"rollout {clash} is already active for {spec.model} with this selector; abort it first"
        )
    state = eng.start(spec, candidate_ids(session, spec), now)
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
        previous = max(lower, key=eng.parse_version) if lower else None
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
        return eng.parse_version(a) < eng.parse_version(b)
    except eng.RolloutSpecError:
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
    if decision.action == "none":
        return decision
    ids: list[str] = []
    if decision.action == "advance":
        ids = candidate_ids(session, spec)
        # devices already admitted count as candidates even if they now run the version
        ids += [
            d
            for d in session.scalars(
                select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == r.id)
            )
        ]
    new = eng.apply_decision(spec, state, decision, ids, now)
    if decision.action in ("pause", "abort"):
        new = eng.RolloutState(**{**_state_values(new), "reason": decision.reason})
    _save_state(session, r, new, now)
    return decision


def evaluate_all(session: Session, now: dt.datetime) -> dict[str, eng.Decision]:
    """Evaluate every running rollout (a cron or ``edgepkg-server`` command can call this)."""
    out = {}
    for r in session.scalars(select(Rollout).where(Rollout.status == eng.RUNNING)):
        out[r.id] = evaluate_rollout(session, r, now)
    return out


def _due(rollout_id: str, now: dt.datetime) -> bool:
    t = now.timestamp()
    with _last_eval_lock:
        last = _last_eval.get(rollout_id)
        if last is not None and t - last < EVALUATE_EVERY_S:
            return False
        _last_eval[rollout_id] = t
        return True


# --- the calls the device endpoints make -----------------------------------------------------


_rollouts = cast(Table, Rollout.__table__)


def _flush_pending(session: Session) -> None:
    """Core statements do not autoflush: flush ORM changes a caller made first (cheap no-op on
    the check-in path, whose session holds no ORM objects)."""
    if session.new or session.dirty or session.deleted:
        session.flush()


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
    session: Session, device: Device, releases: Sequence[Release], now: dt.datetime
) -> list[dict[str, Any]]:
    """What this device should install now, one entry per model at most (empty = stay).

    Only running rollouts whose selector matches and whose stage admits the device assign; only
    full targets present (unrevoked) in ``releases`` are named; the delta is offered when the
    repository has one from the device's current version. Also records the device's latency
    sample for the latency alert. The caller commits.
    """
    observe_health(session, device, now)
    _flush_pending(session)
    tags = tuple(device.tags or ())
    conn = session.connection()
    # Core rows (attribute access like the ORM object; spec_of/state_of accept them): a running
    # rollout is read on every check-in of every device it selects. The ORM object is loaded
    # only when the rollout is due for a (throttled) re-evaluation.
    running = [
        r
        for r in conn.execute(_SELECT_RUNNING)
        if eng.Selector(frozenset((r.selector or {}).get("tags", []))).matches(tags)
    ]
    if not running:
        return []
    versions = device.active_versions()
    mine: dict[str, Any] = {
        row.rollout_id: row
        for row in conn.execute(_SELECT_DEVICE_ROLLOUTS, {"device_id": device.id})
    }
    out: list[dict[str, Any]] = []
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
            {
                "action": "install",
                "model": a.model,
                "version": a.version,
                "target": full.target_path,
                "delta_target": delta.target_path if delta else None,
                "rollout_id": r.id,
                "allow_downgrade": a.allow_downgrade,
            }
        )
    return out


def _field(ev: Any, name: str) -> Any:
    if isinstance(ev, Mapping):
        return ev.get(name)
    return getattr(ev, name, None)


def on_device_events(
    session: Session, device: Device, events: Iterable[Any], now: dt.datetime
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
            selector = eng.Selector(frozenset((r.selector or {}).get("tags", [])))
            if not selector.matches(getattr(device, "tags", None) or []):
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


def rollout_status(session: Session, device: Device | str, rollout_id: str | None = None) -> Any:
    """The rollout's status for a device's pre-commit check.

    ``rollout_status(session, device, rollout_id)`` returns ``{"rollout_id", "status"}`` and
    raises NotFoundError; ``rollout_status(session, rollout_id)`` returns the status string or
    None (the form the device endpoint uses).
    """
    if rollout_id is None:
        assert isinstance(device, str)
        row = session.get(Rollout, device) if len(device) <= 40 else None
        return row.status if row is not None else None
    r = get_rollout(session, rollout_id)
    return {"rollout_id": r.id, "status": r.status}


# --- health and alerts -----------------------------------------------------------------------


_baselines = cast(Table, DeviceLatencyBaseline.__table__)
_SELECT_BASELINE = select(
    _baselines.c.p95_ms, _baselines.c.samples, _baselines.c.last_p95_ms
).where(_baselines.c.device_id == bindparam("device_id"))
_UPDATE_BASELINE = _baselines.update().where(_baselines.c.device_id == bindparam("_id"))


def observe_health(session: Session, device: Device, now: dt.datetime) -> None:
    """Fold the p95 latency of the device's last check-in into its baseline.

    Core statements (one SELECT; a write only when the baseline moves): this runs on every
    check-in. ORM objects the caller added are flushed first (the row references the device).
    """
    health = (device.last_checkin or {}).get("health") if device.last_checkin else None
    if not isinstance(health, Mapping):
        return
    p95 = health.get("latency_p95_ms")
    _flush_pending(session)
    conn = session.connection()
    row = conn.execute(_SELECT_BASELINE, {"device_id": device.id}).first()
    old = al.Baseline(row.p95_ms, row.samples) if row else None
    new = al.update_baseline(old, p95)
    if new is None:
        return
    if row is None:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(  # a concurrent first check-in of the same device may have won: fine
            insert(_baselines).on_conflict_do_nothing(index_elements=["device_id"]),
            {
                "device_id": device.id,
                "p95_ms": new.p95_ms,
                "samples": 1,
                "last_p95_ms": new.p95_ms,
                "updated_at": now,
            },
        )
        return
    last = float(p95) if isinstance(p95, int | float) and not isinstance(p95, bool) else None
    if (
        old is not None
        and old.samples >= al.BASELINE_MIN_SAMPLES
        and abs(new.p95_ms - old.p95_ms) <= 0.01 * old.p95_ms
        and row.last_p95_ms is not None
        and last is not None
        and abs(last - row.last_p95_ms) <= 0.05 * row.last_p95_ms
    ):
        return  # nothing worth a write on this check-in
    if new != old or row.last_p95_ms != last:
        conn.execute(
            _UPDATE_BASELINE,
            {
                "_id": device.id,
                "p95_ms": new.p95_ms,
                "samples": min(new.samples, 1_000_000),
                "last_p95_ms": last,
                "updated_at": now,
            },
        )


def fleet_alerts(
    session: Session,
    now: dt.datetime,
    *,
    poll_interval_s: int,
    silent_intervals: int = 3,
    latency_ratio: float = 2.0,
    validation_window: dt.timedelta = dt.timedelta(days=7),
    limit: int = 1000,
) -> list[al.Alert]:
    """Every current alert, critical first."""
    healths = []
    rows = session.execute(
        select(
            Device.id,
            Device.last_seen,
            Device.created_at,
            Device.status,
            DeviceLatencyBaseline.p95_ms,
            DeviceLatencyBaseline.samples,
            DeviceLatencyBaseline.last_p95_ms,
        ).outerjoin(DeviceLatencyBaseline, DeviceLatencyBaseline.device_id == Device.id)
    )
    for dev_id, last_seen, created, status, base, samples, last in rows:
        healths.append(
            al.DeviceHealth(
                dev_id, last_seen, created, status == "enabled", last, base, samples or 0
            )
        )
    out = al.silent_devices(healths, poll_interval_s, now, intervals=silent_intervals)
    out += al.latency_regressions(healths, ratio=latency_ratio)
    vals = [
        al.ValidationResult(e.device_id, e.model, e.version, e.time, e.details or {})
        for e in session.scalars(
            select(Event)
            .where(Event.type == "validation_result", Event.received_at >= now - validation_window)
            .order_by(Event.seq.desc())
            .limit(5000)
        )
    ]
    out += al.validation_alerts(vals)
    out += al.rollout_alerts(
        al.RolloutView(r.id, r.model, r.version, r.status, r.reason, r.updated_at)
        for r in session.scalars(select(Rollout).where(Rollout.status == eng.PAUSED))
    )
    return al.sort_alerts(out)[:limit]


# --- JSON views ------------------------------------------------------------------------------


def rollout_json(session: Session, r: Rollout) -> dict[str, Any]:
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


def init_app(app: Flask) -> None:
    """Register the rollout API and the dashboard blueprints (call from ``create_app``)."""
    from update_server import api_rollouts
    from update_server.dashboard import bp as dashboard_bp

    app.register_blueprint(api_rollouts.bp)
    app.register_blueprint(dashboard_bp)
    api_rollouts.register_metrics(app)
