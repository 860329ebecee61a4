"""Reads the field telemetry the server stored (``telemetry_intervals`` joined with
``telemetry_reports`` for the interval start and hardware) as :class:`series.Point` rows.

The tables belong to the telemetry room (``update_server/telemetry/models.py``, migration
0005). This module names only the columns it reads, through lightweight SQLAlchemy Core
references, so the charts do not own or redefine the schema; queries go through the room's
indexes: ``(device_id, interval_end)`` for one device, ``(model, version, interval_end)`` for a
cohort. Time columns are typed as the room's ``UTCDateTime`` so binds and results match
what its models store on SQLite and PostgreSQL alike. Drift is the PSI the device computed
against its reference profile (JS where PSI is missing, as the rollout field gate does).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import and_, column, inspect, select, table
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from update_server.dashboard.series import Point
from update_server.db import UTCDateTime
from update_server.devices.models import Device

MAX_ROWS = 200_000
"""A chart query never reads more rows than this (a wide window on a big fleet): the newest win."""

_TI = table(
    "telemetry_intervals",
    column("device_id"), column("seq"), column("model"), column("version"),
    column("interval_end", UTCDateTime()), column("inferences"), column("errors"),
    column("latency_p95_ms"),
    column("psi"), column("js"), column("confidence_mean"), column("feedback_labelled"),
    column("feedback_correct"),
)
_TR = table(
    "telemetry_reports",
    column("device_id"), column("seq"), column("interval_start", UTCDateTime()),
    column("cpu_temp_c"),
    column("gpu_temp_c"),
)


def _select() -> Select[tuple[object, ...]]:
    return select(
        _TI.c.device_id, _TI.c.model, _TI.c.version, _TR.c.interval_start, _TI.c.interval_end,
        _TI.c.inferences, _TI.c.errors, _TI.c.latency_p95_ms, _TI.c.psi, _TI.c.js,
        _TI.c.confidence_mean, _TI.c.feedback_labelled, _TI.c.feedback_correct,
        _TR.c.cpu_temp_c, _TR.c.gpu_temp_c,
    ).join(_TR, and_(_TR.c.device_id == _TI.c.device_id, _TR.c.seq == _TI.c.seq))


def _points(session: Session, q: Select[tuple[object, ...]]) -> list[Point]:
    # A server whose schema has no telemetry room yet (or a database not yet migrated to it)
    # has no field data: empty charts, not a 500. One catalogue lookup per chart request.
    if not inspect(session.connection()).has_table("telemetry_intervals"):
        return []
    rows = session.execute(q.order_by(_TI.c.interval_end.desc()).limit(MAX_ROWS)).all()
    out = []
    for r in reversed(rows):
        temps = [x for x in (r.cpu_temp_c, r.gpu_temp_c) if x is not None]
        out.append(Point(
            device_id=r.device_id, model=r.model, version=r.version,
            start=_naive(r.interval_start), end=_naive(r.interval_end),
            inferences=int(r.inferences or 0), errors=int(r.errors or 0),
            p95_ms=r.latency_p95_ms, drift=r.psi if r.psi is not None else r.js,
            confidence=r.confidence_mean, labelled=int(r.feedback_labelled or 0),
            correct=int(r.feedback_correct or 0), temp_c=max(temps) if temps else None,
        ))
    return out


def _naive(t: dt.datetime) -> dt.datetime:
    # Typed as the room's UTCDateTime (aware UTC on every backend); series work in naive UTC.
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def fleet_points(session: Session, since: dt.datetime, model: str | None = None) -> list[Point]:
    q = _select().where(_TI.c.interval_end >= since)
    if model is not None:
        q = q.where(_TI.c.model == model)
    return _points(session, q)


def cohort_points(session: Session, model: str, versions: Collection[str] | None,
                  since: dt.datetime) -> list[Point]:
    """One model's intervals since ``since``, of the given versions (all when ``None``)."""
    q = _select().where(_TI.c.model == model, _TI.c.interval_end >= since)
    if versions is not None:
        q = q.where(_TI.c.version.in_(list(versions)))
    return _points(session, q)


def device_points(session: Session, device_id: str, since: dt.datetime) -> list[Point]:
    return _points(session, _select().where(_TI.c.device_id == device_id,
                                            _TI.c.interval_end >= since))


def device_tags(session: Session, ids: Collection[str]) -> dict[str, list[str]]:
    """Tags of the given devices (the cohort's third key)."""
    if not ids:
        return {}
    out: dict[str, list[str]] = {}
    wanted = list(ids)
    for i in range(0, len(wanted), 500):
        for d in session.execute(select(Device.id, Device.tags)
                                 .where(Device.id.in_(wanted[i:i + 500]))):
            out[d.id] = list(d.tags or [])
    return out
