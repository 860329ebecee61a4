"""Issue 13 item 5, the device side: a 429 from the server (a quota) is a transport error that
keeps the data queued, and the client stays quiet on that endpoint for Retry-After seconds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_updater.errors import TransportError
from device_updater.http import (
    MAX_RETRY_AFTER_S,
    DeviceAuth,
    DeviceClient,
    RateLimitedError,
    enroll,
    retry_after_seconds,
)
from device_updater.keystore import FileKeystore, device_public_key_pem


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    from werkzeug.serving import make_server

    from update_server import schema
    from update_server.app import create_app
    from update_server.config import load_config
    from update_server.db import get_db

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    schema.upgrade(url)
    app = create_app(
        load_config(
            env={},
            database_url=url,
            testing=True,
            repo_dir=str(tmp_path),
            secret_key="s",
            max_events_per_batch=2,
            device_events_per_minute=0,
            device_events_per_day=3,
        )
    )
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", app
    httpd.shutdown()
    get_db(app).dispose()


def _event() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "download_started",
        "time": "2026-01-01T00:00:00.000Z",
        "model": "m",
        "version": "1.0.0",
        "rollout_id": None,
        "details": {},
    }


def test_a_quota_429_backs_off_for_retry_after_and_keeps_checkins_going(
    server: tuple[str, Any], tmp_path: Path
) -> None:
    from update_server.db import get_db
    from update_server.operators.auth import create_enrollment_token

    url, app = server
    with get_db(app).session() as s:
        token = create_enrollment_token(s)[1]
    ks = FileKeystore(tmp_path / "ks")
    ks.ensure_device_key()
    res = enroll(url, token, device_public_key_pem(ks), {"platform": "test"})
    clock = FakeClock()
    client = DeviceClient(url, DeviceAuth(res.device_id, ks.sign), clock=clock)
    assert client.post_events([_event(), _event()]) == (2, 0)
    with pytest.raises(RateLimitedError) as info:
        client.post_events([_event(), _event()])  # 4 > 3 per day
    assert isinstance(info.value, TransportError)  # so the agent keeps its queue
    wait = info.value.retry_after_s
    assert 1 <= wait <= MAX_RETRY_AFTER_S
    made = client.requests_made
    with pytest.raises(RateLimitedError):
        client.post_events([_event()])  # inside Retry-After: not even sent
    assert client.requests_made == made
    client.checkin({"models": {}, "state": "idle"})  # other endpoints are not held back
    assert client.requests_made == made + 1
    clock.t += wait
    assert client.post_events([_event()]) == (1, 0)  # sent again once the wait is over


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("30", 30.0),
        ("0", 1.0),
        ("999999999", MAX_RETRY_AFTER_S),
        (None, 60.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),
        ("-5", 60.0),
        ("1e9", 60.0),
    ],
)
def test_retry_after_is_clamped(header: str | None, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds
