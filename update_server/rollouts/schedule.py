"""Rollout schedules: a start time, a start rate limit, a maintenance window (issue 14 item 5).

* ``start_at``: before it the rollout is ``scheduled`` (shown so in its JSON) and hands out no
  assignment; its first stage's soak time counts from ``start_at``.
* ``max_starts_per_minute``: how many devices may *start* this rollout (receive their first
  assignment of it) per UTC minute, to protect the CDN. The count is kept in the database
  (``rollout_start_buckets``): a slot is taken by one conditional ``UPDATE ... WHERE starts <
  limit``, atomic on SQLite and PostgreSQL, so several app nodes share one limit. A device
  refused a slot simply gets no assignment this check-in and asks again at its next poll.
  Devices that already started keep receiving their assignment (it is not a new start).
* ``maintenance_window``: sent with every assignment of the rollout
  (:class:`edgepkg.protocol.Assignment`); the device downloads and validates at any time and
  switches only inside it, evaluated offline with its own clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from edgepkg.errors import ProtocolError
from edgepkg.protocol import MaintenanceWindow, parse_maintenance_window, parse_time
from update_server.rollouts.engine import RolloutSpecError
from update_server.rollouts.models import Rollout
from update_server.rollouts.schedule_models import RolloutSchedule, RolloutStartBucket

FIELDS = ("start_at", "max_starts_per_minute", "maintenance_window")
MAX_STARTS_PER_MINUTE = 1_000_000
MAX_START_AHEAD = dt.timedelta(days=366)
SCHEDULED = "scheduled"  # the status shown while now < start_at (stored status: running)

_schedules = cast(Table, RolloutSchedule.__table__)
_buckets = cast(Table, RolloutStartBucket.__table__)

SCHEMA_PROPERTIES: dict[str, Any] = {
    "start_at": {"type": "string", "format": "date-time",
                 "description": "start time (ISO 8601, UTC if no offset); scheduled until then"},
    "max_starts_per_minute": {"type": "integer", "minimum": 1,
                              "description": "devices that may start per minute (all nodes)"},
    "maintenance_window": {
        "type": "object", "additionalProperties": False, "required": ["cron", "duration"],
        "description": "when devices may switch: a 5-field cron for the opening time, a "
                       "duration (2h, 90m, 1h30m, at most 24h) and an IANA time zone",
        "properties": {"cron": {"type": "string"}, "duration": {"type": "string"},
                       "tz": {"type": "string", "default": "UTC"}},
    },
}


@dataclass(frozen=True)
class Schedule:
    start_at: dt.datetime | None = None
    max_starts_per_minute: int | None = None
    window: MaintenanceWindow | None = None

    def is_empty(self) -> bool:
        return self.start_at is None and self.max_starts_per_minute is None and not self.window


def parse_schedule(body: Mapping[str, Any], now: dt.datetime) -> Schedule:
    """The schedule fields of a rollout request (pure); :class:`RolloutSpecError` names the
    field."""
    start_at = None
    if body.get("start_at") is not None:
        try:
            start_at = parse_time(body["start_at"], "start_at")
        except ProtocolError as exc:
            raise RolloutSpecError(str(exc)) from None
        if start_at > now + MAX_START_AHEAD:
            raise RolloutSpecError("start_at must be within a year from now")
    rate = body.get("max_starts_per_minute")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)
                             or not 1 <= rate <= MAX_STARTS_PER_MINUTE):
        raise RolloutSpecError(
            f"max_starts_per_minute must be an integer from 1 to {MAX_STARTS_PER_MINUTE}")
    window = None
    if body.get("maintenance_window") is not None:
        try:
            window = parse_maintenance_window(body["maintenance_window"])
        except ProtocolError as exc:
            raise RolloutSpecError(f"{exc.field}: {exc}") from None
    return Schedule(start_at, rate, window)


def save_schedule(session: Session, r: Rollout, schedule: Schedule, now: dt.datetime) -> None:
    """Store the schedule of the new rollout ``r``; a future start moves the first stage's
    soak and failure window to the start time."""
    if schedule.is_empty():
        return
    session.add(RolloutSchedule(
        rollout_id=r.id, start_at=schedule.start_at,
        max_starts_per_minute=schedule.max_starts_per_minute,
        maintenance_window=schedule.window.to_json() if schedule.window else None))
    if schedule.start_at is not None and schedule.start_at > now:
        r.stage_started_at = r.failure_window_start = schedule.start_at
    session.flush()


def schedules_for(conn: Connection, rollout_ids: Iterable[str]) -> dict[str, Schedule]:
    """The schedules of these rollouts (one query; rollouts without one are absent)."""
    ids = list(rollout_ids)
    if not ids:
        return {}
    out = {}
    for row in conn.execute(select(_schedules).where(_schedules.c.rollout_id.in_(ids))):
        window = row.maintenance_window
        out[row.rollout_id] = Schedule(
            row.start_at, row.max_starts_per_minute,
            parse_maintenance_window(window) if window else None)
    return out


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def take_start(conn: Connection, rollout_id: str, schedule: Schedule, now: dt.datetime) -> bool:
    """May one more device start ``rollout_id`` now? Takes a slot of this minute's limit."""
    if schedule.start_at is not None and now < _aware(schedule.start_at):
        return False
    limit = schedule.max_starts_per_minute
    if limit is None:
        return True
    minute = int(now.timestamp() // 60)
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    created = conn.execute(
        insert(_buckets).on_conflict_do_nothing(index_elements=["rollout_id", "minute"]),
        {"rollout_id": rollout_id, "minute": minute, "starts": 0})
    if created.rowcount == 1:  # a new minute: drop the old counters of this rollout
        conn.execute(delete(_buckets).where(_buckets.c.rollout_id == rollout_id,
                                            _buckets.c.minute < minute - 5))
    taken = conn.execute(
        update(_buckets)
        .where(_buckets.c.rollout_id == rollout_id, _buckets.c.minute == minute,
               _buckets.c.starts < limit)
        .values(starts=_buckets.c.starts + 1))
    return taken.rowcount == 1


def schedule_json(session: Session, r: Rollout, now: dt.datetime) -> dict[str, Any]:
    """The schedule fields of a rollout's JSON, and ``status: scheduled`` before the start."""
    s = session.get(RolloutSchedule, r.id)
    if s is None:
        return {"start_at": None, "max_starts_per_minute": None, "maintenance_window": None}
    out: dict[str, Any] = {
        "start_at": _aware(s.start_at).isoformat() if s.start_at else None,
        "max_starts_per_minute": s.max_starts_per_minute,
        "maintenance_window": s.maintenance_window,
    }
    if r.status == "running" and s.start_at is not None and now < _aware(s.start_at):
        out["status"] = SCHEDULED
    return out
