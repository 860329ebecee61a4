"""Alerts, persisted: the per-device latency baseline (folded in at check-in) and the fleet's
current alerts, decided by the pure rules of :mod:`.rules` from rows read here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from update_server.alerts import rules as al
from update_server.alerts.models import DeviceLatencyBaseline
from update_server.db import flush_pending
from update_server.devices.auth import DeviceLike
from update_server.devices.models import Device, Event
from update_server.rollouts import engine as eng
from update_server.rollouts.models import Rollout
from update_server.telemetry.service import open_alerts as telemetry_alerts

_baselines = cast(Table, DeviceLatencyBaseline.__table__)
_SELECT_BASELINE = select(
    _baselines.c.p95_ms, _baselines.c.samples, _baselines.c.last_p95_ms
).where(_baselines.c.device_id == bindparam("device_id"))
_UPDATE_BASELINE = _baselines.update().where(_baselines.c.device_id == bindparam("_id"))


def observe_health(session: Session, device: DeviceLike, now: dt.datetime) -> None:
    """Fold the p95 latency of the device's last check-in into its baseline.

    Core statements (one SELECT; a write only when the baseline moves): this runs on every
    check-in. ORM objects the caller added are flushed first (the row references the device).
    """
    health = (device.last_checkin or {}).get("health") if device.last_checkin else None
    if not isinstance(health, Mapping):
        return
    p95 = health.get("latency_p95_ms")
    flush_pending(session)
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
    out += telemetry_alerts(session, limit=limit)  # persisted, with hysteresis
    return al.sort_alerts(out)[:limit]


