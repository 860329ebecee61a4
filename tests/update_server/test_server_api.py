"""Update server device + operator API, on SQLite and on a real PostgreSQL (``server_db_url``)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from update_server.db import get_db
from update_server.operators.auth import create_enrollment_token, create_operator_token
from update_server.testing import SoftwareDevice
from update_server.tuf.releases import ReleaseTarget

MODEL = "detector"


def _release(version: str, kind: str = "full", base: str | None = None) -> ReleaseTarget:
    name = (
        f"models/{MODEL}/{version}/{MODEL}-{version}.edgepkg"
        if kind == "full"
        else f"models/{MODEL}/{version}/delta-from-{base}.edgepkg"
    )
    return ReleaseTarget(
        name=MODEL,
        version=version,
        kind=kind,
        target_path=name,
        length=10,
        sha256="0" * 64,
        base_version=base,
        custom={},
    )


RELEASES = [_release("1.0.0"), _release("1.1.0"), _release("1.1.0", "delta", "1.0.0")]


class Server:
    """The app plus helpers to mint credentials and make signed device calls."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.db = get_db(app)

    def operator_token(self, role: str) -> str:
        with self.db.session() as s:
            _, token = create_operator_token(s, name=f"test-{role}", role=role)
        return token

    def enrollment_token(self, **kw: Any) -> str:
        with self.db.session() as s:
            _, token = create_enrollment_token(s, **kw)
        return token

    def enroll(self, device: SoftwareDevice | None = None, **kw: Any) -> SoftwareDevice:
        device = device or SoftwareDevice()
        token = self.enrollment_token(**kw)
        r = self.client.post(
            "/api/v1/enroll",
            data=device.enroll_body(token, facts={"platform": "jetson"}),
            content_type="application/json",
        )
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["device_id"] == device.device_id
        return device

    def signed(
        self, device: SoftwareDevice, method: str, path: str, body: Any = None, **kw: Any
    ) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        headers = device.signed_headers(method, path, data, **kw)
        return self.client.open(path, method=method, data=data, headers=headers)

    def checkin(self, device: SoftwareDevice, version: str | None = "1.0.0") -> Any:
        slots = {"a": {"version": version, "sha256": "a" * 64} if version else None, "b": None}
        body = {
            "models": {MODEL: {"active_slot": "a", "slots": slots}},
            "state": "IDLE",
            "health": {
                "latency_p50_ms": 3.5,
                "latency_p95_ms": 7.0,
                "errors": 0,
                "last_metric": 0.91,
            },
            "free_disk_bytes": 10**9,
            "last_error": None,
        }
        return self.signed(device, "POST", f"/api/v1/devices/{device.device_id}/checkin", body)


@pytest.fixture
def server(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> Server:
    app = make_server_app(
        server_db_url,
        release_reader=lambda _d: RELEASES,
        poll_interval=120,
        testing=True,
        repo_dir=str(tmp_path),
    )
    return Server(app)


def _event(etype: str = "download_started", **kw: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": etype,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "model": MODEL,
        "version": "1.1.0",
        "rollout_id": None,
        "details": {"bytes": 10},
        **kw,
    }


# --- enrollment ------------------------------------------------------------------------------


def test_enroll_gives_key_id_and_poll_interval_and_token_tags(server: Server) -> None:
    dev = SoftwareDevice()
    token = server.enrollment_token(tags=["site:berlin"])
    r = server.client.post(
        "/api/v1/enroll", data=dev.enroll_body(token, tags=["cam"]), content_type="application/json"
    )
    assert r.status_code == 201
    assert r.get_json() == {"device_id": dev.device_id, "poll_interval": 120}
    admin = server.operator_token("admin")
    got = server.client.get(
        f"/api/v1/devices/{dev.device_id}", headers={"Authorization": f"Bearer {admin}"}
    ).get_json()
    # A device cannot put itself into rollout groups: only the token's tags apply.
    assert got["tags"] == ["site:berlin"]
    assert got["facts"]["requested_tags"] == ["cam"]
    assert got["status"] == "enabled"


def test_single_use_enrollment_token_refuses_second_device(server: Server) -> None:
    token = server.enrollment_token()
    first, second = SoftwareDevice(), SoftwareDevice()
    r1 = server.client.post(
        "/api/v1/enroll", data=first.enroll_body(token), content_type="application/json"
    )
    assert r1.status_code == 201
    # The same device retrying after a lost reply gets the same answer without a second use.
    retry = server.client.post(
        "/api/v1/enroll", data=first.enroll_body(token), content_type="application/json"
    )
    assert retry.status_code == 200
    r2 = server.client.post(
        "/api/v1/enroll", data=second.enroll_body(token), content_type="application/json"
    )
    assert r2.status_code == 401
    assert r2.get_json()["error"]["code"] == "enrollment_token_used_up"


def test_fleet_token_quota_and_expiry(server: Server) -> None:
    token = server.enrollment_token(max_uses=2)
    codes = [
        server.client.post(
            "/api/v1/enroll",
            data=SoftwareDevice().enroll_body(token),
            content_type="application/json",
        ).status_code
        for _ in range(3)
    ]
    assert codes == [201, 201, 401]
    expired = server.enrollment_token(
        max_uses=10, expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    r = server.client.post(
        "/api/v1/enroll",
        data=SoftwareDevice().enroll_body(expired),
        content_type="application/json",
    )
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "enrollment_token_expired"


def test_enroll_refuses_non_p256_key_and_unknown_token(server: Server) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    token = server.enrollment_token()
    r = server.client.post(
        "/api/v1/enroll", json={"enrollment_token": token, "public_key_pem": pem}
    )
    assert r.status_code == 400
    r = server.client.post(
        "/api/v1/enroll",
        data=SoftwareDevice().enroll_body("epe_not-a-real-token"),
        content_type="application/json",
    )
    assert r.status_code == 401


# --- signed requests -------------------------------------------------------------------------


def test_checkin_stores_state_and_offers_newer_release_with_delta(server: Server) -> None:
    dev = server.enroll()
    r = server.checkin(dev, "1.0.0")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"poll_interval": 120, "assignments": []}  # no rollout: stay
    admin = server.operator_token("admin")
    got = server.client.get(
        f"/api/v1/devices/{dev.device_id}", headers={"Authorization": f"Bearer {admin}"}
    ).get_json()
    assert got["models"] == {MODEL: "1.0.0"}
    assert got["state"] == "IDLE"
    assert got["last_checkin"]["health"]["latency_p95_ms"] == 7.0
    # An operator starts a 100 % rollout of 1.1.0: the device is told to install it.
    release = server.operator_token("release")
    r = server.client.post(
        "/api/v1/rollouts",
        headers={"Authorization": f"Bearer {release}"},
        json={
            "model": MODEL,
            "version": "1.1.0",
            "stages": [{"percent": 100, "min_soak_seconds": 0}],
        },
    )
    assert r.status_code == 201, r.get_json()
    rollout_id = r.get_json()["id"] if "id" in r.get_json() else r.get_json()["rollout_id"]
    reply = server.checkin(dev, "1.0.0").get_json()
    assert reply["assignments"] == [
        {
            "action": "install",
            "model": MODEL,
            "version": "1.1.0",
            "target": f"models/{MODEL}/1.1.0/{MODEL}-1.1.0.edgepkg",
            "delta_target": f"models/{MODEL}/1.1.0/delta-from-1.0.0.edgepkg",
            "rollout_id": rollout_id,
            "allow_downgrade": False,
        }
    ]
    status = server.signed(dev, "GET", f"/api/v1/devices/{dev.device_id}/rollouts/{rollout_id}")
    assert status.status_code == 200
    assert status.get_json() == {"rollout_id": rollout_id, "status": "running"}
    # A device already on a newer version is never told to go down.
    assert server.checkin(dev, "2.0.0").get_json()["assignments"] == []


def test_replayed_request_is_refused(server: Server) -> None:
    dev = server.enroll()
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    data = json.dumps({"state": "IDLE"}).encode()
    headers = dev.signed_headers("POST", path, data)
    assert server.client.post(path, data=data, headers=headers).status_code == 200
    again = server.client.post(path, data=data, headers=headers)
    assert again.status_code == 401
    assert again.get_json()["error"]["code"] == "replay"


def test_stale_or_future_timestamp_is_refused(server: Server) -> None:
    dev = server.enroll()
    for skew in (-301, 301):
        r = server.signed(
            dev,
            "POST",
            f"/api/v1/devices/{dev.device_id}/checkin",
            {"state": "IDLE"},
            timestamp=int(time.time()) + skew,
        )
        assert r.status_code == 401
        assert r.get_json()["error"]["code"] == "bad_timestamp"


def test_tampered_body_path_or_method_breaks_the_signature(server: Server) -> None:
    dev = server.enroll()
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    data = json.dumps({"state": "IDLE"}).encode()
    headers = dev.signed_headers("POST", path, data)
    r = server.client.post(path, data=data.replace(b"IDLE", b"EVIL"), headers=headers)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "bad_signature"
    headers = dev.signed_headers("POST", path, data)
    r = server.client.post(path + "?x=1", data=data, headers=headers)
    assert r.status_code == 401
    headers = dev.signed_headers("POST", f"/api/v1/devices/{dev.device_id}/events", data)
    assert server.client.post(path, data=data, headers=headers).status_code == 401


def test_device_cannot_touch_another_devices_records(server: Server) -> None:
    a, b = server.enroll(), server.enroll()
    # A signs correctly (as itself) but addresses B's records.
    r = server.signed(a, "POST", f"/api/v1/devices/{b.device_id}/checkin", {"state": "IDLE"})
    assert r.status_code == 403
    r = server.signed(a, "POST", f"/api/v1/devices/{b.device_id}/events", {"events": [_event()]})
    assert r.status_code == 403
    # A claims to be B: its signature does not verify with B's key.
    r = server.signed(
        a,
        "POST",
        f"/api/v1/devices/{b.device_id}/checkin",
        {"state": "IDLE"},
        device_id=b.device_id,
    )
    assert r.status_code == 401
    # Devices cannot use the operator API.
    r = server.signed(a, "GET", "/api/v1/devices")
    assert r.status_code == 401


def test_unknown_and_disabled_devices_are_refused(server: Server) -> None:
    stranger = SoftwareDevice()
    r = server.signed(stranger, "POST", f"/api/v1/devices/{stranger.device_id}/checkin", {})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unknown_device"
    dev = server.enroll()
    release = server.operator_token("release")
    r = server.client.patch(
        f"/api/v1/devices/{dev.device_id}",
        json={"status": "disabled"},
        headers={"Authorization": f"Bearer {release}"},
    )
    assert r.status_code == 200
    r = server.checkin(dev)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "device_disabled"


def test_events_are_idempotent_by_id(server: Server) -> None:
    dev = server.enroll()
    path = f"/api/v1/devices/{dev.device_id}/events"
    batch = [_event("download_started"), _event("download_finished"), _event("installed")]
    r = server.signed(dev, "POST", path, {"events": batch})
    assert r.get_json() == {"accepted": 3, "duplicates": 0}
    # A retry of the same batch plus one new event: only the new one is stored.
    r = server.signed(dev, "POST", path, {"events": [*batch, _event("trial_started")]})
    assert r.get_json() == {"accepted": 1, "duplicates": 3}
    viewer = server.operator_token("viewer")
    got = server.client.get(
        f"/api/v1/devices/{dev.device_id}/events", headers={"Authorization": f"Bearer {viewer}"}
    ).get_json()
    assert got["total"] == 4
    assert sorted(e["type"] for e in got["events"]) == sorted(
        ["download_started", "download_finished", "installed", "trial_started"]
    )
    # Another device may reuse the same ids without clashing with this one's.
    other = server.enroll()
    r = server.signed(other, "POST", f"/api/v1/devices/{other.device_id}/events", {"events": batch})
    assert r.get_json() == {"accepted": 3, "duplicates": 0}


def test_event_with_unknown_type_is_refused_and_nothing_stored(server: Server) -> None:
    dev = server.enroll()
    path = f"/api/v1/devices/{dev.device_id}/events"
    r = server.signed(dev, "POST", path, {"events": [_event(), _event("exploded")]})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_event_type"
    viewer = server.operator_token("viewer")
    got = server.client.get(
        f"/api/v1/devices/{dev.device_id}/events", headers={"Authorization": f"Bearer {viewer}"}
    ).get_json()
    assert got["total"] == 0


# --- operator roles --------------------------------------------------------------------------


ROLE_MATRIX = [
    # (method, path template, body, minimum role)
    ("GET", "/api/v1/devices", None, "viewer"),
    ("GET", "/api/v1/devices/{d}", None, "viewer"),
    ("GET", "/api/v1/devices/{d}/events", None, "viewer"),
    ("PATCH", "/api/v1/devices/{d}", {"add_tags": ["x"]}, "release"),
    ("POST", "/api/v1/enrollment-tokens", {"max_uses": 5}, "admin"),
    ("GET", "/api/v1/enrollment-tokens", None, "admin"),
    ("DELETE", "/api/v1/devices/{d}", None, "admin"),
]


@pytest.mark.parametrize(("method", "path", "body", "need"), ROLE_MATRIX)
def test_operator_role_matrix(server: Server, method: str, path: str, body: Any, need: str) -> None:
    dev = server.enroll()
    url = path.format(d=dev.device_id)
    order = ["viewer", "release", "admin"]
    r = server.client.open(url, method=method, json=body)
    assert r.status_code == 401, "no credentials must be refused"
    r = server.client.open(
        url, method=method, json=body, headers={"Authorization": "Bearer epo_wrong"}
    )
    assert r.status_code == 401
    for role in order:
        token = server.operator_token(role)
        r = server.client.open(
            url, method=method, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        if order.index(role) < order.index(need):
            assert r.status_code == 403, (role, r.get_json())
        else:
            assert r.status_code in (200, 201, 204), (role, r.get_json())
            if method == "DELETE":
                break


def test_operator_creates_fleet_token_and_devices_enroll_with_it(server: Server) -> None:
    admin = server.operator_token("admin")
    r = server.client.post(
        "/api/v1/enrollment-tokens",
        headers={"Authorization": f"Bearer {admin}"},
        json={"max_uses": 2, "expires_in_s": 3600, "tags": ["fleet:a"]},
    )
    assert r.status_code == 201
    token = r.get_json()["token"]
    listed = server.client.get(
        "/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"}
    ).get_json()
    assert "token" not in json.dumps(listed["tokens"][0]).replace('"token_', "")
    dev = SoftwareDevice()
    r = server.client.post(
        "/api/v1/enroll", data=dev.enroll_body(token), content_type="application/json"
    )
    assert r.status_code == 201
    r = server.client.get(
        "/api/v1/devices?tag=fleet:a", headers={"Authorization": f"Bearer {admin}"}
    )
    assert [d["device_id"] for d in r.get_json()["devices"]] == [dev.device_id]


def test_deleted_device_can_no_longer_sign_in(server: Server) -> None:
    dev = server.enroll()
    assert (
        server.signed(
            dev, "POST", f"/api/v1/devices/{dev.device_id}/events", {"events": [_event()]}
        ).status_code
        == 200
    )
    admin = server.operator_token("admin")
    r = server.client.delete(
        f"/api/v1/devices/{dev.device_id}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 204
    assert server.checkin(dev).status_code == 401


def test_dashboard_login_with_token_sets_session_and_logout_needs_csrf(server: Server) -> None:
    viewer = server.operator_token("viewer")
    client = server.client
    page = client.get("/login")
    assert page.status_code == 200
    # Without the CSRF token from the form, the login POST is refused.
    r = client.post("/login", data={"token": viewer})
    assert r.status_code == 400
    html = page.get_data(as_text=True)
    csrf = html.split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post("/login", data={"token": "epo_wrong", "csrf_token": csrf})
    assert r.status_code == 401
    r = client.post("/login?next=/api/v1/whoami", data={"token": viewer, "csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"].endswith("/api/v1/whoami")
    # The session cookie is not accepted by the API (bearer only there).
    assert client.get("/api/v1/whoami").status_code == 401
