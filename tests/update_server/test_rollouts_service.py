"""Rollouts persisted on a real database (SQLite and PostgreSQL): the calls the check-in and
events endpoints make, operator actions, automatic advance / pause / abort, rollback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.update_server._rollout_fixtures import (
    RELEASES,
    T0,
    add_device,
    dev_ids,
    full,
    migrated,
    set_version,
)
from update_server.db import Database
from update_server.devices.models import Device
from update_server.errors import BadRequestError, ConflictError, NotFoundError
from update_server.rollouts import device_path, service as svc
from update_server.rollouts.models import Rollout, RolloutDevice


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


def body(**kw: object) -> dict[str, object]:
    b: dict[str, object] = {
        "model": "det",
        "version": "1.1.0",
        "selector": {"tags": ["site:a"]},
        "stages": [
            {"percent": 10, "min_soak_seconds": 600},
            {"percent": 50, "min_soak_seconds": 600},
            {"percent": 100, "min_soak_seconds": 0},
        ],
        "success_share": 1.0,
        "failure_share": 0.5,
        "min_devices": 2,
    }
    b.update(kw)
    return b


def fleet(s: Session, n: int = 20, **kw: object) -> list[Device]:
    return [add_device(s, i, **kw) for i in dev_ids(n)]  # type: ignore[arg-type]


def assigned(s: Session, devices: list[Device], now: dt.datetime = T0) -> dict[str, dict]:
    out = {}
    for d in devices:
        a = device_path.assignments_for_device(s, d, RELEASES, now)
        if a:
            out[d.id] = a[0].to_json()
    return out


def ev(kind: str, rollout_id: str, version: str = "1.1.0", **details: object) -> dict:
    return {
        "type": kind,
        "rollout_id": rollout_id,
        "model": "det",
        "version": version,
        "details": details,
    }


def test_first_stage_assigns_exactly_its_share_with_delta(session: Session) -> None:
    devices = fleet(session)
    fleet_b = [add_device(session, f"b{i}", tags=("site:b",)) for i in range(5)]
    r = svc.create_rollout(session, body(), releases=RELEASES, now=T0)
    got = assigned(session, devices + fleet_b)
    assert len(got) == 2  # 10 % of the 20 matching devices; site:b never
    a = next(iter(got.values()))
    assert a == {
        "action": "install",
        "model": "det",
        "version": "1.1.0",
        "target": "models/det/1.1.0/det-1.1.0.edgepkg",
        "delta_target": "models/det/1.1.0/delta-from-1.0.0.edgepkg",
        "rollout_id": r.id,
        "allow_downgrade": False,
    }
    # deterministic: asking again gives the same devices
    assert set(assigned(session, devices)) == set(got)


def test_a_revoked_release_is_never_assigned(session: Session) -> None:
    devices = fleet(session, 5)
    svc.create_rollout(session, body(stages=[{"percent": 100}]), releases=RELEASES, now=T0)
    revoked = [t for t in RELEASES if t.version != "1.1.0"]
    assert all(device_path.assignments_for_device(session, d, revoked, T0) == [] for d in devices)


def test_create_refuses_duplicates_bad_specs_and_unknown_releases(session: Session) -> None:
    fleet(session, 3)
    svc.create_rollout(session, body(), releases=RELEASES, now=T0)
    with pytest.raises(ConflictError):
        svc.create_rollout(session, body(version="1.2.0"), releases=RELEASES, now=T0)
    # another selector is another rollout
    svc.create_rollout(session, body(selector={"tags": ["site:b"]}), releases=RELEASES, now=T0)
    with pytest.raises(NotFoundError):
        svc.create_rollout(session, body(version="9.0.0", selector=None), releases=RELEASES, now=T0)
    with pytest.raises(BadRequestError):
        svc.create_rollout(session, body(stages=[{"percent": 50}]), releases=RELEASES, now=T0)


def test_commits_advance_stages_after_soak_and_complete(session: Session) -> None:
    devices = fleet(session)
    r = svc.create_rollout(session, body(), releases=RELEASES, now=T0)
    now = T0
    for stage in (1, 2, 3):
        got = assigned(session, devices, now)
        for dev_id in got:
            d = session.get(Device, dev_id)
            assert d is not None
            device_path.on_device_events(session, d, [ev("committed", r.id)], now)
            set_version(session, d, "1.1.0")
        session.refresh(r)
        if stage < 3:
            assert (r.status, r.stage_index) == ("running", stage - 1), "soak not over yet"
            now += dt.timedelta(seconds=600)
            svc.evaluate_rollout(session, r, now)
            assert (r.status, r.stage_index) == ("running", stage)
    assert r.status == "completed"
    assert r.active_key is None
    counts = svc.rollout_json(session, r)["totals"]
    assert counts == {"admitted": 20, "committed": 20, "failed": 0}


def test_failures_pause_with_reason_and_stop_assignments(session: Session) -> None:
    devices = fleet(session, 40)
    r = svc.create_rollout(
        session, body(stages=[{"percent": 50}, {"percent": 100}]), releases=RELEASES, now=T0
    )
    got = list(assigned(session, devices))
    first = session.get(Device, got[0])
    assert first is not None
    rejected = ev("rejected", r.id, reason="accuracy 0.71 < 0.9")
    device_path.on_device_events(session, first, [rejected], T0)
    session.refresh(r)
    assert r.status == "running", "one failure is below min_devices=2"
    second = session.get(Device, got[1])
    assert second is not None
    device_path.on_device_events(session, second, [ev("rolled_back", r.id, reason="crash")], T0)
    session.refresh(r)
    assert r.status == "paused"
    assert "2 of 2" in (r.reason or "")
    status = device_path.rollout_status_json(session, r.id)
    assert status == {"rollout_id": r.id, "status": "paused"}
    assert device_path.rollout_status(session, r.id) == "paused"
    assert assigned(session, devices) == {}
    row = session.get(RolloutDevice, (r.id, first.id))
    assert row is not None and row.result == "failed" and row.reason == "accuracy 0.71 < 0.9"
    # operator resumes: a new failure window; devices that failed are not asked again
    svc.operator_action(session, r.id, "resume", now=T0 + dt.timedelta(minutes=5), actor="ops")
    assert r.status == "running" and r.reason is None
    again = assigned(session, devices, T0 + dt.timedelta(minutes=5))
    assert first.id not in again and second.id not in again and again


def test_devices_outside_the_selector_cannot_push_a_rollout_into_pause(session: Session) -> None:
    fleet(session, 10)
    outsiders = [add_device(session, i, tags=("site:b",)) for i in dev_ids(30)[20:]]
    r = svc.create_rollout(
        session, body(stages=[{"percent": 100}]), releases=RELEASES, now=T0
    )
    for d in outsiders:  # they learned the rollout id, but the selector never chose them
        device_path.on_device_events(session, d, [ev("rejected", r.id, reason="forged")], T0)
    session.refresh(r)
    assert r.status == "running"
    assert session.scalars(
        select(RolloutDevice).where(RolloutDevice.device_id.in_([d.id for d in outsiders]))
    ).all() == []


def test_failure_can_abort(session: Session) -> None:
    devices = fleet(session, 10)
    r = svc.create_rollout(
        session, body(stages=[{"percent": 100}], on_failure="abort"), releases=RELEASES, now=T0
    )
    for d in devices[:2]:
        assigned(session, [d])
        device_path.on_device_events(session, d, [ev("verification_failed", r.id)], T0)
    session.refresh(r)
    assert r.status == "aborted" and r.active_key is None
    assert assigned(session, devices) == {}


def test_operator_transitions_and_conflicts(session: Session) -> None:
    fleet(session, 3)
    r = svc.create_rollout(session, body(), releases=RELEASES, now=T0)
    with pytest.raises(ConflictError):
        svc.operator_action(session, r.id, "resume", now=T0)
    svc.operator_action(session, r.id, "pause", now=T0, actor="alice")
    assert r.reason == "paused by alice"
    svc.operator_action(session, r.id, "abort", now=T0)
    with pytest.raises(ConflictError):
        svc.operator_action(session, r.id, "pause", now=T0)
    with pytest.raises(NotFoundError):
        svc.operator_action(session, "ro-nope", "pause", now=T0)


def test_rollback_moves_devices_back_with_downgrade_allowed(session: Session) -> None:
    devices = fleet(session, 6)
    r = svc.create_rollout(session, body(stages=[{"percent": 100}]), releases=RELEASES, now=T0)
    for dev_id in assigned(session, devices[:4]):
        d = session.get(Device, dev_id)
        assert d is not None
        set_version(session, d, "1.1.0")
    back = svc.rollback(session, r.id, releases=RELEASES, now=T0, actor="ops")
    session.refresh(r)
    assert r.status == "aborted" and "rolled back to 1.0.0" in (r.reason or "")
    assert back.version == "1.0.0" and back.allow_downgrade and back.rollback_of == r.id
    got = assigned(session, devices)
    assert set(got) == {d.id for d in devices[:4]}
    assert all(a["allow_downgrade"] and a["version"] == "1.0.0" for a in got.values())
    assert all(a["delta_target"] is None for a in got.values())


def test_device_enrolled_later_joins_the_current_stage(session: Session) -> None:
    fleet(session, 10)
    r = svc.create_rollout(session, body(stages=[{"percent": 100}]), releases=RELEASES, now=T0)
    late = add_device(session, "late-device")
    assert device_path.assignments_for_device(session, late, RELEASES, T0)[0].rollout_id == r.id


def test_device_on_a_higher_version_is_not_downgraded(session: Session) -> None:
    d = add_device(session, "ahead", version="1.2.0")
    svc.create_rollout(session, body(stages=[{"percent": 100}]), releases=RELEASES, now=T0)
    assert device_path.assignments_for_device(session, d, RELEASES, T0) == []


def test_events_for_unknown_rollouts_or_other_versions_are_ignored(session: Session) -> None:
    devices = fleet(session, 4)
    r = svc.create_rollout(
        session, body(stages=[{"percent": 100}], min_devices=1), releases=RELEASES, now=T0
    )
    device_path.on_device_events(
        session,
        devices[0],
        [
            ev("rejected", "ro-unknown"),
            ev("rejected", r.id, version="0.9.0"),
            {"type": "rejected", "rollout_id": 12},
            ev("download_started", r.id),
        ],
        T0,
    )
    session.refresh(r)
    assert r.status == "running"
    assert session.scalars(select(RolloutDevice)).all() == []


def test_two_nodes_cannot_both_advance(session: Session, database: Database) -> None:
    devices = fleet(session, 10)
    r = svc.create_rollout(
        session,
        body(stages=[{"percent": 50, "min_soak_seconds": 0}, {"percent": 100}]),
        releases=RELEASES,
        now=T0,
    )
    session.commit()
    other = database.new_session()  # another app node, holding the rollout as it was
    try:
        stale = other.get(Rollout, r.id)
        assert stale is not None and stale.stage_index == 0
        other.commit()
        for dev_id in assigned(session, devices):
            d = session.get(Device, dev_id)
            assert d is not None
            device_path.on_device_events(session, d, [ev("committed", r.id)], T0)
        session.commit()
        assert r.stage_index == 1
        advanced = svc.eng.advance(svc.spec_of(stale), svc.state_of(stale), [], T0)
        assert not svc._save_state(other, stale, advanced, T0)
        other.commit()
    finally:
        other.close()
    session.refresh(r)
    assert r.stage_index == 1 and r.status == "running"


def test_full_target_name_follows_repo_layout() -> None:
    assert full("det", "2.0.0").target_path == "models/det/2.0.0/det-2.0.0.edgepkg"
