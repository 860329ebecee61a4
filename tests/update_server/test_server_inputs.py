"""Hostile input gets a 4xx JSON error, never a 500 or a traceback; OpenAPI and metrics."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from update_server.db import get_db
from update_server.operators.auth import create_enrollment_token, create_operator_token
from update_server.testing import SoftwareDevice


@pytest.fixture
def app(server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]) -> Flask:
    return make_server_app(
        server_db_url, repo_dir=str(tmp_path), max_content_length=64 * 1024, testing=True
    )


def _enroll(app: Flask) -> SoftwareDevice:
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s)
    dev = SoftwareDevice()
    r = app.test_client().post(
        "/api/v1/enroll", data=dev.enroll_body(token), content_type="application/json"
    )
    assert r.status_code == 201
    return dev


def _assert_json_4xx(r: Any, what: object) -> None:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.data[:300])
    body = r.get_json()
    assert isinstance(body, dict) and "error" in body, (what, r.data[:300])
    assert b"Traceback" not in r.data


BAD_CHECKINS: list[Any] = [
    [],
    "string",
    {"models": []},
    {"models": {"../etc": {"active_slot": "a", "slots": {}}}},
    {"models": {"m": {"active_slot": "c", "slots": {}}}},
    {"models": {"m": {"active_slot": "a", "slots": {"a": {"version": 1}}}}},
    {"models": {"m": {"active_slot": "a", "slots": {"z": None}}}},
    {"models": {"m": {"active_slot": "a", "slots": {"a": {"version": "1.0.0", "sha256": "x"}}}}},
    {"models": {f"m{i}": {"active_slot": "a", "slots": {}} for i in range(100)}},
    {"state": 5},
    {"state": "x" * 100},
    {"free_disk_bytes": -1},
    {"free_disk_bytes": "lots"},
    {"free_disk_bytes": True},
    {"health": {"latency_p95_ms": "fast"}},
    {"health": []},
    {"last_error": ["a"]},
    {"facts": "linux"},
    {"facts": {"a": json.loads("[" * 30 + "1" + "]" * 30)}},
]

BAD_EVENTS: list[Any] = [
    {},
    {"events": []},
    {"events": {}},
    {"events": ["x"]},
    {"events": [{"id": "not-a-uuid", "type": "installed", "time": "2025-01-01T00:00:00Z"}]},
    {"events": [{"id": str(uuid.uuid4()), "type": "installed", "time": "yesterday"}]},
    {"events": [{"id": str(uuid.uuid4()), "type": "installed", "time": 5}]},
    {
        "events": [
            {
                "id": str(uuid.uuid4()),
                "type": "installed",
                "time": "2025-01-01T00:00:00Z",
                "details": "x",
            }
        ]
    },
    {
        "events": [
            {
                "id": str(uuid.uuid4()),
                "type": "installed",
                "time": "2025-01-01T00:00:00Z",
                "rollout_id": "../x",
            }
        ]
    },
    {
        "events": [{"id": str(uuid.uuid4()), "type": "installed", "time": "2025-01-01T00:00:00Z"}]
        * 501
    },
]


def test_bad_checkin_bodies_are_400(app: Flask) -> None:
    dev = _enroll(app)
    client = app.test_client()
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    for body in BAD_CHECKINS:
        data = json.dumps(body).encode()
        r = client.post(path, data=data, headers=dev.signed_headers("POST", path, data))
        _assert_json_4xx(r, body)
    for raw in (b"{not json", b"\xff\xfe", b"", b"[" * 5000 + b"]" * 5000, b"null"):
        r = client.post(path, data=raw, headers=dev.signed_headers("POST", path, raw))
        _assert_json_4xx(r, raw[:20])


def test_bad_event_bodies_are_400(app: Flask) -> None:
    dev = _enroll(app)
    client = app.test_client()
    path = f"/api/v1/devices/{dev.device_id}/events"
    for body in BAD_EVENTS:
        data = json.dumps(body).encode()
        r = client.post(path, data=data, headers=dev.signed_headers("POST", path, data))
        _assert_json_4xx(r, str(body)[:100])


def test_bad_headers_and_unknown_routes(app: Flask) -> None:
    dev = _enroll(app)
    client = app.test_client()
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    data = b"{}"
    good = dev.signed_headers("POST", path, data)
    variants = [
        {},
        {**good, "X-Edgepkg-Signature": "!!!notbase64"},
        {**good, "X-Edgepkg-Signature": "A" * 5000},
        {**good, "X-Edgepkg-Nonce": "short"},
        {**good, "X-Edgepkg-Timestamp": "-5"},
        {**good, "X-Edgepkg-Timestamp": "99999999999999999999"},
        {**good, "X-Edgepkg-Device": "ZZ"},
        {**good, "Content-Type": "text/plain"},
    ]
    for headers in variants:
        _assert_json_4xx(client.post(path, data=data, headers=headers), headers)
    for method, url in [
        ("GET", "/api/v1/nope"),
        ("DELETE", "/api/v1/enroll"),
        ("GET", f"/api/v1/devices/{'0' * 64}/rollouts/x"),
        ("POST", "/api/v1/devices/x/checkin"),
    ]:
        _assert_json_4xx(client.open(url, method=method), url)


def test_bad_enrollments_and_huge_bodies(app: Flask) -> None:
    client = app.test_client()
    for body in [
        {},
        {"enrollment_token": 5, "public_key_pem": "x"},
        {"enrollment_token": "t", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nxx"},
        {"enrollment_token": "t", "public_key_pem": "x" * 10000},
        {"enrollment_token": "t", "public_key_pem": "x", "tags": "a"},
        {"enrollment_token": "t", "public_key_pem": "x", "tags": ["bad tag"]},
    ]:
        _assert_json_4xx(client.post("/api/v1/enroll", json=body), body)
    huge = b'{"enrollment_token": "' + b"a" * 200_000 + b'"}'
    r = client.post("/api/v1/enroll", data=huge, content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]


def test_bad_operator_inputs(app: Flask) -> None:
    with get_db(app).session() as s:
        _, admin = create_operator_token(s, name="a", role="admin")
    client = app.test_client()
    h = {"Authorization": f"Bearer {admin}"}
    for body in [
        {"max_uses": 0},
        {"max_uses": "many"},
        {"expires_in_s": -5},
        {"expires_at": "someday"},
        {"tags": [1]},
    ]:
        _assert_json_4xx(client.post("/api/v1/enrollment-tokens", json=body, headers=h), body)
    for q in ("?limit=0", "?limit=x", "?offset=-1", "?status=weird"):
        _assert_json_4xx(client.get("/api/v1/devices" + q, headers=h), q)
    _assert_json_4xx(client.patch(f"/api/v1/devices/{'0' * 64}", json={}, headers=h), "patch")
    _assert_json_4xx(client.get("/api/v1/devices", headers={"Authorization": "Basic x"}), "b")


def test_openapi_documents_exactly_the_api_routes(app: Flask) -> None:
    import re

    spec = app.test_client().get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    documented = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops}
    routes: list[tuple[re.Pattern[str], str, str]] = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        # A route variable matches a documented {name} or a documented literal (an enum of
        # actions documented path by path).
        pattern = re.sub(r"<(?:[^:>]+:)?[^>]+>", "[^/]+", rule.rule)
        for m in rule.methods or ():
            if m not in ("HEAD", "OPTIONS"):
                routes.append((re.compile(f"^{pattern}$"), m, rule.rule))
    for rx, method, rule in routes:
        assert any(rx.match(p) and m == method for p, m in documented), (
            f"{method} {rule} is missing from the OpenAPI document"
        )
    for p, m in documented:
        assert any(rx.match(p) and m == method for rx, method, _ in routes), (
            f"OpenAPI documents {m} {p}, which does not exist"
        )


def test_metrics_need_a_token_and_count_requests_and_devices(app: Flask) -> None:
    client = app.test_client()
    dev = _enroll(app)
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    body = json.dumps(
        {
            "models": {
                "det": {
                    "active_slot": "a",
                    "slots": {"a": {"version": "1.2.0", "sha256": "a" * 64}},
                }
            }
        }
    ).encode()
    assert (
        client.post(path, data=body, headers=dev.signed_headers("POST", path, body)).status_code
        == 200
    )
    assert client.get("/metrics").status_code == 401
    with get_db(app).session() as s:
        _, viewer = create_operator_token(s, name="prom", role="viewer")
    r = client.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert 'edgepkg_devices_by_version{model="det",version="1.2.0"} 1.0' in text
    assert 'edgepkg_http_requests_total{endpoint="devices_api.checkin"' in text
    assert "edgepkg_http_request_duration_seconds_bucket" in text


def test_unexpected_errors_are_json_500_without_details(
    tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    app = make_server_app(f"sqlite:///{tmp_path / 'x.db'}")  # no schema: every DB query fails

    with get_db(app).session() as s:
        _ = s
    dev = SoftwareDevice()
    r = app.test_client().post(
        "/api/v1/enroll", data=dev.enroll_body("epe_x"), content_type="application/json"
    )
    assert r.status_code == 500
    assert r.get_json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    get_db(app).dispose()
