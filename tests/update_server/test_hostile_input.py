"""Issue 13 item 1: hostile input gets a 4xx JSON error naming the field, on SQLite and
PostgreSQL, never a 500; and a device cannot hide itself from operators with odd text."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from update_server.config import load_config
from update_server.db import get_db
from update_server.devices.models import Device, Event
from update_server.errors import ConfigError
from update_server.operators.auth import create_enrollment_token, create_operator_token
from update_server.testing import SoftwareDevice

SURROGATE = "\ud800"
BIG = 2**63


@pytest.fixture
def app(server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]) -> Flask:
    return make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True)


def _raw(obj: Any) -> bytes:
    # json.dumps writes lone surrogates as \ud800 escapes and NaN as NaN: what an attacker sends.
    return json.dumps(obj).encode()


def _enroll(app: Flask) -> SoftwareDevice:
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s, max_uses=10)
    dev = SoftwareDevice()
    r = app.test_client().post(
        "/api/v1/enroll", data=dev.enroll_body(token), content_type="application/json"
    )
    assert r.status_code == 201, r.data
    return dev


def _admin(app: Flask) -> dict[str, str]:
    with get_db(app).session() as s:
        _, token = create_operator_token(s, name="admin", role="admin")
    return {"Authorization": f"Bearer {token}"}


def _assert_4xx_json(r: Any, what: object, field: str | None = None) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.data[:300])
    body = r.get_json()
    assert isinstance(body, dict) and "error" in body, (what, r.data[:300])
    if field is not None:
        assert field in (body["error"].get("field") or body["error"]["message"]), (what, body)


def _event(**kw: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": "installed", "time": "2025-01-01T00:00:00Z", **kw}


CHECKINS: list[tuple[dict[str, Any], str]] = [
    ({"state": SURROGATE}, "state"),
    ({"last_error": "boom " + SURROGATE}, "last_error"),
    ({"last_error": "a\x00b"}, "last_error"),
    ({"free_disk_bytes": BIG}, "free_disk_bytes"),
    ({"free_disk_bytes": -BIG - 1}, "free_disk_bytes"),
    ({"health": {"temperature_c": float("nan")}}, "health"),
    ({"health": {"latency_p95_ms": float("inf")}}, "health"),
    ({"facts": {"os": SURROGATE}}, "facts"),
    ({"facts": {SURROGATE: "x"}}, "facts"),
    ({"facts": {"os": "a\x00b"}}, "facts"),
    ({"facts": {"load": float("-inf")}}, "facts"),
    ({"facts": {"n": BIG}}, "facts"),
]


def test_checkin_refuses_surrogates_nul_nonfinite_and_huge_ints(app: Flask) -> None:
    dev = _enroll(app)
    client = app.test_client()
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    for body, field in CHECKINS:
        data = _raw(body)
        r = client.post(path, data=data, headers=dev.signed_headers("POST", path, data))
        _assert_4xx_json(r, body, field)
    for raw, field in ((b'{"x": 1e999}', "body.x"), (b'{"n": ' + b"9" * 5000 + b"}", "body")):
        r = client.post(path, data=raw, headers=dev.signed_headers("POST", path, raw))
        _assert_4xx_json(r, raw[:30], field)
    # And the device is still fine: a clean check-in works, its page renders.
    data = _raw({"state": "idle", "facts": {"os": "linux"}})
    assert (
        client.post(path, data=data, headers=dev.signed_headers("POST", path, data)).status_code
        == 200
    )


def test_events_refuse_bad_details_times_and_offsets(app: Flask) -> None:
    dev = _enroll(app)
    client = app.test_client()
    path = f"/api/v1/devices/{dev.device_id}/events"
    for body, field in [
        ({"events": [_event(details={"x": float("nan")})]}, "details"),
        ({"events": [_event(details={"x": "a\x00b"})]}, "details"),
        ({"events": [_event(details={"x": SURROGATE})]}, "details"),
        ({"events": [_event(time="0001-01-01T00:00:00+01:00")]}, "time"),
        ({"events": [_event(time="9999-12-31T23:59:59-01:00")]}, "time"),
    ]:
        data = _raw(body)
        r = client.post(path, data=data, headers=dev.signed_headers("POST", path, data))
        _assert_4xx_json(r, body, field)
    with app.app_context(), get_db(app).session() as s:
        assert s.query(Event).count() == 0
    admin = _admin(app)
    for q in (f"?offset={BIG}", "?offset=" + "9" * 5000, f"?limit={BIG}", "?offset=1e3"):
        r = client.get(f"/api/v1/devices/{dev.device_id}/events{q}", headers=admin)
        _assert_4xx_json(r, q, "offset" if "offset" in q else "limit")


def test_enrollment_refuses_odd_tokens_pems_and_facts(app: Flask) -> None:
    client = app.test_client()
    dev = SoftwareDevice()
    pem = dev.public_key_pem
    for body, field in [
        ({"enrollment_token": "epe_" + SURROGATE, "public_key_pem": pem}, "enrollment_token"),
        ({"enrollment_token": "epe_x\x00", "public_key_pem": pem}, "enrollment_token"),
        (
            {"enrollment_token": "epe_x", "public_key_pem": SURROGATE + pem + SURROGATE},
            "public_key_pem",
        ),
        ({"enrollment_token": "epe_x", "public_key_pem": pem, "facts": {"a": SURROGATE}}, "facts"),
    ]:
        r = client.post("/api/v1/enroll", data=_raw(body), content_type="application/json")
        _assert_4xx_json(r, body, field)


def test_operator_inputs_refuse_odd_text_and_times(app: Flask) -> None:
    client = app.test_client()
    h = _admin(app)
    for body, field in [
        ({"note": SURROGATE}, "note"),
        ({"note": "a\x00"}, "note"),
        ({"expires_at": "0001-01-01T00:00:00+01:00"}, "expires_at"),
        ({"max_uses": BIG}, "max_uses"),
    ]:
        r = client.post(
            "/api/v1/enrollment-tokens", data=_raw(body), headers=h, content_type="application/json"
        )
        _assert_4xx_json(r, body, field)
    r = client.post(
        "/api/v1/rollouts/r-1/pause",
        data=_raw({"reason": SURROGATE}),
        headers=h,
        content_type="application/json",
    )
    _assert_4xx_json(r, "rollout reason", "reason")
    for path, field in (
        ("/api/v1/devices/a%00b", "path.device_id"),
        ("/api/v1/enrollment-tokens/a%00b", "path.token_id"),
        ("/api/v1/rollouts/a%00b", "path.rollout_id"),
        ("/api/v1/devices?tag=a%00b", "query.tag"),
    ):
        method = "DELETE" if "enrollment-tokens" in path else "GET"
        _assert_4xx_json(client.open(path, method=method, headers=h), path, field)
    _assert_4xx_json(client.get("/tuf/targets/a%00b"), "tuf target")
    _assert_4xx_json(client.get("/tuf/metadata/1.root%00.json"), "tuf metadata")


def test_login_form_refuses_nul_and_surrogates(app: Flask) -> None:
    client = app.test_client()
    r = client.post("/login", data={"username": "ad\x00min", "password": "x" * 12})
    _assert_4xx_json(r, "NUL in username", "form.username")
    # A surrogate cannot travel in a form: its UTF-8 bytes are invalid and decode to U+FFFD.
    raw = b"username=admin&password=%ED%A0%80xxxxxxxxxxxx"
    r = client.post("/login", data=raw, content_type="application/x-www-form-urlencoded")
    assert r.status_code in (400, 401), r.status_code


def test_toml_config_refuses_odd_values(tmp_path: Path) -> None:
    for text in (
        "poll_interval = 9223372036854775808\n",
        "poll_interval = nan\n",
        "max_content_length = -5\n",
        'database_url = "sqlite:///a\\u0000b"\n',
    ):
        f = tmp_path / "c.toml"
        f.write_text(text)
        with pytest.raises(ConfigError):
            load_config(f, env={})
    with pytest.raises(ConfigError):
        load_config(env={"EDGEPKG_SERVER_POLL_INTERVAL": "9" * 40})


def test_dashboard_renders_a_device_stored_with_odd_text(
    tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    # SQLite only: PostgreSQL would refuse to store this row at all (which is also fine).
    from update_server import schema

    url = f"sqlite:///{tmp_path / 'odd.db'}"
    schema.upgrade(url)
    app = make_server_app(url, repo_dir=str(tmp_path), testing=True)
    dev_id = "d" * 64
    with get_db(app).session() as s:
        s.add(
            Device(
                id=dev_id,
                public_key_pem="x",
                tags=["t"],
                facts={"os" + SURROGATE: "a" + SURROGATE, "nul": "a\x00b", "nan": float("nan")},
                state="idle\x00",
                last_error="boom\x00<script>",
                last_checkin={"state": SURROGATE, "health": {"x": float("inf")}},
            )
        )
        _, token = create_operator_token(s, name="v", role="viewer")
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    import re

    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    assert (
        client.post("/login", data={"token": token, "csrf_token": csrf.group(1)}).status_code == 302
    )
    for path in (f"/dashboard/devices/{dev_id}", "/dashboard/devices", "/dashboard/"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.data[:300])
    assert "\ufffd" in client.get(f"/dashboard/devices/{dev_id}").get_data(as_text=True)
    r = client.get(f"/api/v1/devices/{dev_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
