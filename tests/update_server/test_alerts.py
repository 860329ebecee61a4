"""Fleet alerts: pure decisions, and the persisted baseline/events they are computed from."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from tests.update_server._rollout_fixtures import RELEASES, T0, add_device, migrated
from update_server.alerts import rules as al, service as alert_service
from update_server.devices.models import Event
from update_server.rollouts import service as svc


def health(dev: str, **kw: object) -> al.DeviceHealth:
    base: dict[str, object] = {"device_id": dev, "last_seen": T0, "enrolled_at": T0}
    base.update(kw)
    return al.DeviceHealth(**base)  # type: ignore[arg-type]


def test_silent_after_n_poll_intervals_only() -> None:
    devices = [
        health("fresh", last_seen=T0 - dt.timedelta(seconds=179)),
        health("silent", last_seen=T0 - dt.timedelta(seconds=181)),
        health("never", last_seen=None, enrolled_at=T0 - dt.timedelta(hours=1)),
        health("off", last_seen=T0 - dt.timedelta(days=9), enabled=False),
    ]
    got = al.silent_devices(devices, 60, T0, intervals=3)
    assert [a.subject for a in got] == ["silent", "never"]
    assert "never checked in" in got[1].message


def test_latency_baseline_learns_normal_samples_and_ignores_regressions() -> None:
    b = None
    for v in (10, 11, 9, 10):
        b = al.update_baseline(b, v)
    assert b is not None and 9 < b.p95_ms < 11 and b.samples == 4
    assert al.update_baseline(b, 50) == b, "a regression must not become the new normal"
    assert al.update_baseline(b, float("nan")) == b
    assert al.update_baseline(b, True) == b
    assert al.update_baseline(None, -1) is None


def test_latency_alert_above_twice_the_baseline_after_min_samples() -> None:
    d = [
        health("slow", p95_ms=25.0, baseline_p95_ms=10.0, baseline_samples=5),
        health("ok", p95_ms=19.0, baseline_p95_ms=10.0, baseline_samples=5),
        health("young", p95_ms=90.0, baseline_p95_ms=10.0, baseline_samples=1),
    ]
    got = al.latency_regressions(d)
    assert [a.subject for a in got] == ["slow"]
    assert "2.5x" in got[0].message


def test_validation_alert_uses_the_latest_result_per_device_and_model() -> None:
    def vr(dev: str, minutes: int, **details: object) -> al.ValidationResult:
        return al.ValidationResult(dev, "det", "1.1.0", T0 + dt.timedelta(minutes=minutes), details)

    got = al.validation_alerts(
        [
            vr("a", 0, metric="accuracy", value=0.7, min=0.9),
            vr("b", 0, metric="accuracy", value=0.7, min=0.9),
            vr("b", 5, metric="accuracy", value=0.95, min=0.9),  # recovered
            vr("c", 0, passed=False),
            vr("d", 0, metric="accuracy", value="high", min=0.9),  # unknown: no alert
        ]
    )
    assert sorted(a.subject for a in got) == ["a", "c"]
    assert al.validation_failed({"value": 0.5, "min": 0.9}) is True
    assert al.validation_failed({"value": 0.95, "min": 0.9, "passed": True}) is False


def test_fleet_alerts_from_the_database(db_url: str) -> None:
    db = migrated(db_url)
    try:
        with db.session() as s:
            _fill(s)
        with db.session() as s:
            got = alert_service.fleet_alerts(s, T0, poll_interval_s=60)
        kinds = [(a.kind, a.subject) for a in got]
        assert ("device_silent", "quiet") in kinds
        assert ("latency_regression", "slow") in kinds
        assert ("validation_below_policy", "picky") in kinds
        assert any(k == "rollout_paused" for k, _ in kinds)
        assert got[0].severity == al.CRITICAL
        assert all(a.to_json()["key"] for a in got)
    finally:
        db.dispose()


def _fill(s: Session) -> None:
    add_device(s, "quiet", last_seen=T0 - dt.timedelta(hours=1))
    slow = add_device(s, "slow")
    for p95 in (10.0, 10.0, 10.0, 10.0):
        slow.last_checkin = {"health": {"latency_p95_ms": p95}}
        alert_service.observe_health(s, slow, T0)
        s.flush()
    slow.last_checkin = {"health": {"latency_p95_ms": 30.0}}
    alert_service.observe_health(s, slow, T0)
    add_device(s, "picky")
    s.add(
        Event(
            id="e1",
            device_id="picky",
            type="validation_result",
            time=T0,
            received_at=T0,
            model="det",
            version="1.1.0",
            details={"metric": "accuracy", "value": 0.61, "min": 0.9, "passed": False},
        )
    )
    r = svc.create_rollout(s, {"model": "det", "version": "1.1.0"}, releases=RELEASES, now=T0)
    svc.operator_action(s, r.id, "pause", now=T0, reason="waiting for QA")
