"""Rollout schedules on the server: a future start assigns nothing (status ``scheduled``), the
start rate limit is counted in the database, and the maintenance window travels with every
assignment. Real database (SQLite or PostgreSQL via ``db_url``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

from tests.update_server._rollout_fixtures import RELEASES, T0, migrated
from tests.update_server.test_rollouts_service import assigned, body, fleet
from update_server.db import Database
from update_server.errors import BadRequestError
from update_server.rollouts import service as svc
from update_server.rollouts.schedule import parse_schedule, take_start


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = migrated(db_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    s = database.new_session()
    try:
        yield s
    finally:
        s.close()


ALL = [{"percent": 100, "min_soak_seconds": 0}]
WINDOW = {"cron": "0 2 * * *", "duration": "2h", "tz": "Europe/Berlin"}


def create(s: Session, now: dt.datetime = T0, **kw: object) -> str:
    r = svc.create_rollout(s, body(stages=ALL, **kw), releases=RELEASES, now=now)
    s.commit()
    return r.id


def test_scheduled_rollout_assigns_nothing_before_its_start(session: Session) -> None:
    devices = fleet(session, 5)
    start = T0 + dt.timedelta(hours=3)
    rid = create(session, start_at=start.isoformat())
    r = svc.get_rollout(session, rid)
    assert r.stage_started_at == start  # the soak counts from the start
    assert assigned(session, devices, T0) == {}
    assert assigned(session, devices, start - dt.timedelta(seconds=1)) == {}
    got = assigned(session, devices, start)
    assert len(got) == 5 and all(a["rollout_id"] == rid for a in got.values())


def test_scheduled_status_is_shown_until_the_start(session: Session) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    rid = create(session, now=dt.datetime.now(dt.UTC), start_at=future.isoformat(),
                 max_starts_per_minute=7, maintenance_window=WINDOW)
    out = svc.rollout_json(session, svc.get_rollout(session, rid))
    assert out["status"] == "scheduled"
    assert out["max_starts_per_minute"] == 7 and out["maintenance_window"] == WINDOW
    rid2 = svc.create_rollout(session, body(stages=ALL, model="det", selector={"tags": ["b"]}),
                              releases=RELEASES, now=T0).id
    assert svc.rollout_json(session, svc.get_rollout(session, rid2))["status"] == "running"


def test_rate_limit_admits_at_most_n_new_devices_per_minute(session: Session) -> None:
    devices = fleet(session, 10)
    rid = create(session, max_starts_per_minute=3)
    first = assigned(session, devices, T0)
    assert len(first) == 3
    session.commit()
    # the same minute: no new starts, but started devices still get their assignment
    again = assigned(session, devices, T0 + dt.timedelta(seconds=30))
    assert set(again) == set(first)
    nxt = assigned(session, devices, T0 + dt.timedelta(seconds=60))
    assert len(nxt) == 6 and set(first) <= set(nxt)
    assert all(a["rollout_id"] == rid for a in nxt.values())


def test_rate_limit_is_shared_through_the_database(database: Database) -> None:
    """Two sessions (two app nodes) draw from one counter."""
    s1, s2 = database.new_session(), database.new_session()
    try:
        fleet(s1, 1)
        rid = create(s1, max_starts_per_minute=2)
        sched = parse_schedule({"max_starts_per_minute": 2}, T0)
        taken = []
        for s in (s1, s2, s1, s2):
            taken.append(take_start(s.connection(), rid, sched, T0))
            s.commit()
        assert taken == [True, True, False, False]
    finally:
        s1.close()
        s2.close()


def test_window_travels_with_every_assignment(session: Session) -> None:
    devices = fleet(session, 3)
    create(session, maintenance_window=WINDOW)
    got = assigned(session, devices, T0)
    assert len(got) == 3 and all(a["maintenance_window"] == WINDOW for a in got.values())


@pytest.mark.parametrize("bad", [
    {"start_at": "tomorrow"},
    {"start_at": (T0 + dt.timedelta(days=400)).isoformat()},
    {"max_starts_per_minute": 0},
    {"max_starts_per_minute": True},
    {"max_starts_per_minute": "5"},
    {"maintenance_window": {"cron": "0 2 * *", "duration": "1h"}},
    {"maintenance_window": {"cron": "0 2 * * *", "duration": "48h"}},
    {"maintenance_window": {"cron": "0 2 * * *", "duration": "1h", "tz": "Nowhere/City"}},
])
def test_bad_schedules_are_refused_with_the_field(session: Session, bad: dict[str, object]) -> None:
    with pytest.raises(BadRequestError) as info:
        create(session, **bad)
    assert next(iter(bad)) in str(info.value) or "maintenance_window" in str(info.value)


