"""Issue 13 item 5: per-device quotas. A device posting 10,000 events is cut off at its quota
with 429 + Retry-After, and the database holds at most the quota."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from update_server.config import load_config
from update_server.db import get_db
from update_server.devices.models import Event
from update_server.errors import ConfigError
from update_server.operators.auth import create_enrollment_token
from update_server.services import services
from update_server.testing import SoftwareDevice

T0 = dt.datetime(2026, 3, 1, 23, 58, 30, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def _setup(app: Flask) -> SoftwareDevice:
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s)
    dev = SoftwareDevice()
    r = app.test_client().post(
        "/api/v1/enroll", data=dev.enroll_body(token), content_type="application/json"
    )
    assert r.status_code == 201
    return dev


def _batch(n: int, pad: int = 0) -> bytes:
    events = [
        {
            "id": str(uuid.uuid4()),
            "type": "installed",
            "time": "2026-03-01T00:00:00Z",
            "details": {"pad": "x" * pad},
        }
        for _ in range(n)
    ]
    return json.dumps({"events": events}).encode()


def _post(app: Flask, dev: SoftwareDevice, body: bytes) -> Any:
    path = f"/api/v1/devices/{dev.device_id}/events"
    now = services(app).now()  # signed at the app's (fixed) time, inside its window
    headers = dev.signed_headers("POST", path, body, timestamp=int(now.timestamp()))
    return app.test_client().post(path, data=body, headers=headers)


def _stored(app: Flask) -> int:
    with get_db(app).session() as s:
        return s.query(Event).count()


def test_ten_thousand_events_are_cut_off_at_the_daily_quota(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    clock = Clock()
    app = make_server_app(
        server_db_url,
        repo_dir=str(tmp_path),
        clock=clock,
        max_events_per_batch=100,
        device_events_per_minute=0,
        device_events_per_day=1000,
    )
    dev = _setup(app)
    codes = [_post(app, dev, _batch(100)).status_code for _ in range(100)]  # 10,000 events
    assert codes[:10] == [200] * 10 and set(codes[10:]) == {429}
    assert _stored(app) == 1000
    r = _post(app, dev, _batch(1))
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "quota_exceeded"
    assert int(r.headers["Retry-After"]) == 90  # until the next UTC day (23:58:30 + 90 s)
    # Another device has its own quota.
    other = _setup(app)
    assert _post(app, other, _batch(5)).status_code == 200
    # The next day the device may send again.
    clock.now += dt.timedelta(seconds=90)
    assert _post(app, dev, _batch(10)).status_code == 200
    assert _stored(app) == 1015


def test_per_minute_and_byte_quotas(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    clock = Clock()
    clock.now = T0.replace(hour=12)
    app = make_server_app(
        server_db_url,
        repo_dir=str(tmp_path),
        clock=clock,
        max_events_per_batch=10,
        device_events_per_minute=20,
        device_event_bytes_per_day=30_000,
    )
    dev = _setup(app)
    assert [_post(app, dev, _batch(10)).status_code for _ in range(3)] == [200, 200, 429]
    r = _post(app, dev, _batch(1))
    assert r.status_code == 429 and r.headers["Retry-After"] == "30"
    clock.now += dt.timedelta(seconds=30)
    assert _post(app, dev, _batch(1, pad=5000)).status_code == 200
    big = _batch(5, pad=5000)  # about 25 KB: over the 30 KB per day with what came before
    r = _post(app, dev, big)
    assert r.status_code == 429 and "bytes" in r.get_json()["error"]["message"]
    assert _stored(app) == 21


def test_quota_config_must_fit_a_batch() -> None:
    with pytest.raises(ConfigError):
        load_config(env={}, max_events_per_batch=500, device_events_per_minute=100)
    load_config(env={}, max_events_per_batch=500, device_events_per_minute=0)
