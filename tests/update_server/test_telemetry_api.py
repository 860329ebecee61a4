"""The telemetry endpoint end to end through the real app (SQLite): signed device requests,
idempotency, rate bound, alerts with hysteresis in /api/v1/alerts, signed webhooks delivered to
a real local receiver with retries, the delivery log, and the Prometheus gauges."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from edgepkg.protocol import HardwareHealth
from tests.update_server._telemetry_fixtures import (
    Clock,
    Receiver,
    TelemetryServer,
    report,
)
from update_server import schema
from update_server.services import services
from update_server.telemetry import service as telemetry
from update_server.telemetry.models import TelemetryInterval, TelemetryReport
from update_server.webhooks import service as webhooks

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def make(tmp_path: Path, make_server_app: Callable[..., Flask]) -> Callable[..., TelemetryServer]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    schema.upgrade(url)

    def build(**settings: Any) -> TelemetryServer:
        clock = Clock()
        app = make_server_app(url, clock=clock, testing=True, **settings)
        return TelemetryServer(app, clock)

    return build


def test_a_report_is_stored_once_and_a_resend_is_a_duplicate(
    make: Callable[..., TelemetryServer],
) -> None:
    srv = make()
    dev = srv.enroll()
    rep = report(1)
    r = srv.send(dev, rep)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"accepted": True, "duplicate": False}
    again = srv.send(dev, rep)  # same seq, new nonce: a resend after a lost reply
    assert again.get_json() == {"accepted": True, "duplicate": True}
    with srv.db.session() as s:
        assert s.scalar(select(func.count()).select_from(TelemetryReport)) == 1
        row = s.scalars(select(TelemetryInterval)).one()
        assert (row.model, row.version, row.latency_p95_ms, row.psi) == ("det", "1.0.0", 10.0, 0.02)
        assert row.summaries["latency_ms"]["counts"] == [10, 500, 90, 0]


def test_a_malformed_report_is_400_naming_the_field(make: Callable[..., TelemetryServer]) -> None:
    srv = make()
    dev = srv.enroll()
    body = report(1).to_json()
    body["models"]["det"]["latency_p95_ms"] = "fast"
    r = srv.post(dev, body)
    assert r.status_code == 400
    assert "latency_p95_ms" in r.get_json()["error"]["message"]


def test_unsigned_and_foreign_device_requests_are_refused(
    make: Callable[..., TelemetryServer],
) -> None:
    srv = make()
    a, b = srv.enroll(), srv.enroll()
    path = f"/api/v1/devices/{a.device_id}/telemetry"
    assert srv.client.post(path, json=report(1).to_json()).status_code == 401
    r = srv.post(b, report(1).to_json(), as_device=a.device_id)
    assert r.status_code == 403  # b signed it: b may not write a's telemetry


def test_reports_beyond_the_per_minute_bound_get_429(make: Callable[..., TelemetryServer]) -> None:
    srv = make(telemetry_max_per_minute=3)
    dev = srv.enroll()
    for seq in range(3):
        assert srv.post(dev, report(seq).to_json()).status_code == 200
    r = srv.post(dev, report(9).to_json())
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    srv.clock.now += dt.timedelta(minutes=1)
    assert srv.post(dev, report(9).to_json()).status_code == 200


def _kinds(srv: TelemetryServer) -> set[str]:
    return {a["kind"] for a in srv.alerts()}


def test_drift_alert_opens_after_three_bad_intervals_resolves_after_three_good_and_webhooks(
    make: Callable[..., TelemetryServer],
) -> None:
    with Receiver().running() as rx:
        srv = make(webhooks=json.dumps([{"url": rx.url, "secret": SECRET}]))
        dev, calm = srv.enroll(), srv.enroll()
        seq = 0
        for psi in (0.4, 0.5):
            seq += 1
            srv.send(dev, report(seq, psi=psi))
            srv.send(calm, report(seq, psi=0.01))
        assert "drift" not in _kinds(srv), "two bad intervals must not open the alert"
        seq += 1
        srv.send(dev, report(seq, psi=0.6))
        drift = srv.alerts("drift")
        assert [a["subject"] for a in drift] == [dev.device_id], "only the shifted device"
        assert "PSI 0.600" in drift[0]["message"] and drift[0]["details"]["model"] == "det"
        for _ in range(2):
            seq += 1
            srv.send(dev, report(seq, psi=0.01))
        assert "drift" in _kinds(srv), "two good intervals must not resolve it"
        seq += 1
        srv.send(dev, report(seq, psi=0.01))
        assert "drift" not in _kinds(srv)

        cfg = services(srv.app).config
        assert webhooks.deliver_due(srv.db, cfg, srv.clock.now) == 2
    events = []
    for headers, body in rx.got:
        assert webhooks.verify(SECRET, headers[webhooks.HEADER_TIMESTAMP], body,
                               headers[webhooks.HEADER_SIGNATURE])
        assert not webhooks.verify(SECRET, headers[webhooks.HEADER_TIMESTAMP], body + b" ",
                                   headers[webhooks.HEADER_SIGNATURE])
        events.append(json.loads(body)["event"])
    assert events == ["alert.opened", "alert.resolved"]
    log = srv.client.get("/api/v1/webhooks/deliveries",
                         headers={"Authorization": f"Bearer {srv.token('admin')}"})
    assert log.status_code == 200
    assert [d["status"] for d in log.get_json()["deliveries"]] == ["delivered", "delivered"]
    viewer = srv.client.get("/api/v1/webhooks/deliveries",
                            headers={"Authorization": f"Bearer {srv.token('viewer')}"})
    assert viewer.status_code == 403


def test_webhook_retries_with_exponential_backoff_until_delivered(
    make: Callable[..., TelemetryServer],
) -> None:
    with Receiver(codes=[500, 503]).running() as rx:
        srv = make(webhooks=json.dumps([{"url": rx.url, "secret": SECRET}]))
        cfg = services(srv.app).config
        with srv.db.session() as s:
            webhooks.enqueue(s, cfg, "rollout.paused", {"rollout_id": "ro-1"}, srv.clock.now)
        t = srv.clock.now
        assert webhooks.deliver_due(srv.db, cfg, t) == 0
        assert webhooks.deliver_due(srv.db, cfg, t + dt.timedelta(seconds=10)) == 0  # not due
        assert webhooks.deliver_due(srv.db, cfg, t + dt.timedelta(seconds=31)) == 0  # 503
        assert len(rx.got) == 2
        assert webhooks.deliver_due(srv.db, cfg, t + dt.timedelta(seconds=60)) == 0  # not due
        assert webhooks.deliver_due(srv.db, cfg, t + dt.timedelta(seconds=92)) == 1
    ids = {h[webhooks.HEADER_ID] for h, _ in rx.got}
    assert len(rx.got) == 3 and len(ids) == 1, "retries carry the same event id"
    log = srv.client.get("/api/v1/webhooks/deliveries",
                         headers={"Authorization": f"Bearer {srv.token('admin')}"}).get_json()
    d = log["deliveries"][0]
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("delivered", 3, 200)


def test_hardware_and_latency_alerts(make: Callable[..., TelemetryServer]) -> None:
    srv = make()
    dev = srv.enroll()
    hot = HardwareHealth(cpu_temp_c=91.0, disk_free_bytes=1e8, disk_total_bytes=16e9,
                         mem_used_bytes=3.9e9, mem_total_bytes=4e9)
    seq = 0
    for _ in range(5):  # the device's own latency baseline: 10 ms
        seq += 1
        srv.send(dev, report(seq, p95=10.0))
    for _ in range(3):
        seq += 1
        srv.send(dev, report(seq, p95=30.0, hardware=hot))
    kinds = _kinds(srv)
    assert {"hardware_temperature", "disk_nearly_full", "memory_high", "field_latency"} <= kinds
    latency = srv.alerts("field_latency")[0]
    assert "3.0x its baseline" in latency["message"]


def test_error_rate_and_field_accuracy_alerts(make: Callable[..., TelemetryServer]) -> None:
    srv = make()
    dev = srv.enroll()
    for seq in range(1, 4):
        srv.send(dev, report(seq, inferences=100, errors=20, labelled=50, correct=30))
    assert {"error_rate", "field_accuracy"} <= _kinds(srv)
    acc = srv.alerts("field_accuracy")[0]
    assert acc["severity"] == "critical" and "60.0%" in acc["message"]


def test_a_device_that_goes_dark_alerts_and_its_next_report_resolves_it(
    make: Callable[..., TelemetryServer],
) -> None:
    srv = make(telemetry_dark_after_s=3600)
    dev = srv.enroll()
    srv.send(dev, report(1))
    cfg = services(srv.app).config
    telemetry.maintain(srv.db, cfg, srv.clock.now + dt.timedelta(minutes=30))
    assert "device_dark" not in _kinds(srv)
    srv.clock.now += dt.timedelta(hours=2)
    assert telemetry.maintain(srv.db, cfg, srv.clock.now)["dark"] == 1
    assert [a["subject"] for a in srv.alerts("device_dark")] == [dev.device_id]
    srv.send(dev, report(2, end=srv.clock.now))
    assert "device_dark" not in _kinds(srv)


def test_prometheus_gauges_are_per_cohort_never_per_device(
    make: Callable[..., TelemetryServer],
) -> None:
    srv = make()
    dev = srv.enroll(tags=["site:a"])
    srv.send(dev, report(1, p95=12.0))
    telemetry.maintain(srv.db, services(srv.app).config, srv.clock.now)
    text = srv.client.get("/metrics",
                          headers={"Authorization": f"Bearer {srv.token('viewer')}"}).text
    assert 'edgepkg_field_latency_p95_ms{model="det",tag="site:a",version="1.0.0"} 12.0' in text
    assert 'edgepkg_field_devices{model="det",tag="*",version="1.0.0"} 1.0' in text
    assert dev.device_id not in text


def test_report_with_a_later_model_version_is_stored_under_that_version(
    make: Callable[..., TelemetryServer],
) -> None:
    srv = make()
    dev = srv.enroll()
    rep = report(1)
    rep = dataclasses.replace(rep, models={"det": dataclasses.replace(rep.models["det"],
                                                                      version="1.1.0")})
    assert srv.send(dev, rep).status_code == 200
    with srv.db.session() as s:
        assert s.scalars(select(TelemetryInterval.version)).all() == ["1.1.0"]
