"""Issue 13 item 4: web hygiene against hostile clients: safe ``next`` redirects, CSRF whatever
the headers, security headers and CSP, server-side logout, one enrollment error, nonces burned
on every authenticated device request."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from update_server.db import get_db
from update_server.operators.auth import (
    create_enrollment_token,
    create_operator_token,
    create_user,
    safe_next,
)
from update_server.testing import SoftwareDevice

PASSWORD = "correct horse battery"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from update_server import schema

    url = f"sqlite:///{tmp_path / 'web.db'}"
    schema.upgrade(url)
    return url


@pytest.fixture
def app(sqlite_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]) -> Flask:
    app = make_server_app(sqlite_url, repo_dir=str(tmp_path), testing=True)
    with get_db(app).session() as s:
        create_user(s, username="alice", password=PASSWORD, role="admin")
    return app


def _csrf(client: FlaskClient, path: str = "/login") -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True))
    assert m
    return m.group(1)


def _login(client: FlaskClient, query: str = "") -> Any:
    data = {"username": "alice", "password": PASSWORD, "csrf_token": _csrf(client)}
    return client.post("/login" + query, data=data)


@pytest.mark.parametrize(
    "target",
    [
        "/%09/evil.example",
        "/%0d%0a/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "/%0aSet-Cookie:%20x=1",
        "/%5C/evil.example",
        "/ /evil.example",
    ],
)
def test_login_never_redirects_off_site(app: Flask, target: str) -> None:
    r = _login(app.test_client(), "?next=" + target)
    assert r.status_code == 302
    location = r.headers["Location"]
    parts = urlsplit(location)
    assert parts.netloc in ("", "localhost"), location
    assert not location.startswith("//") and "\r" not in location and "\n" not in location
    assert "evil" not in parts.path.lstrip("/").split("/")[0]


def test_login_keeps_a_same_origin_next(app: Flask) -> None:
    r = _login(app.test_client(), "?next=/dashboard/devices%3Ftag%3Da")
    assert r.headers["Location"].endswith("/dashboard/devices?tag=a")
    with app.test_request_context():
        assert safe_next("/dashboard/rollouts") == "/dashboard/rollouts"
        assert safe_next("/\t/evil.example") == "/"


def test_csrf_is_required_even_with_an_empty_authorization_header(app: Flask) -> None:
    client = app.test_client()
    assert _login(client).status_code == 302
    for headers in ({}, {"Authorization": ""}):
        r = client.post("/logout", headers=headers)  # a session-authenticated mutation
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "csrf", headers
        r = client.post("/dashboard/rollouts/r-1/abort", data={}, headers=headers)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "csrf", headers
    # A blank (non-empty) header is a bearer attempt: refused outright, never the cookie.
    assert client.post("/logout", headers={"Authorization": " "}).status_code == 401
    assert client.get("/dashboard/").status_code == 200  # still signed in: nothing happened


def test_security_headers_on_every_response(app: Flask) -> None:
    client = app.test_client()
    responses = [
        client.get("/healthz"),
        client.get("/login"),
        client.get("/api/v1/devices"),  # 401 JSON
        client.get("/tuf/targets/nope"),  # 404
        client.get("/nope"),
        client.get("/dashboard/static/dashboard.js"),
    ]
    for r in responses:
        assert r.headers["X-Frame-Options"] == "DENY", r.request.path
        assert r.headers["Referrer-Policy"] == "same-origin"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        csp = r.headers["Content-Security-Policy"]
        script_src = re.search(r"script-src ([^;]*)", csp)
        assert script_src and "unsafe-inline" not in script_src.group(1)
        assert "frame-ancestors 'none'" in csp


def test_pages_have_no_inline_script_and_styles_carry_the_nonce(app: Flask) -> None:
    client = app.test_client()
    r = client.get("/login")
    nonce = re.search(r"'nonce-([^']+)'", r.headers["Content-Security-Policy"])
    assert nonce and f'<style nonce="{nonce.group(1)}">' in r.get_data(as_text=True)
    _login(client)
    for path in ("/dashboard/", "/dashboard/rollouts", "/dashboard/devices", "/dashboard/alerts"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path  # no inline <script>
        assert not re.search(r"\son[a-z]+\s*=", html), path  # no inline event handlers


def test_logout_revokes_the_session_server_side(app: Flask) -> None:
    client = app.test_client()
    assert _login(client).status_code == 302
    stolen = client.get_cookie("session")
    assert stolen is not None
    copy = app.test_client()
    copy.set_cookie("session", stolen.value)
    assert copy.get("/dashboard/").status_code == 200  # the copied cookie works ...
    r = client.post("/logout", data={"csrf_token": _csrf(client, "/dashboard/")})
    assert r.status_code == 302
    r = copy.get("/dashboard/")  # ... until its owner logs out
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_enrollment_gives_one_error_for_a_bad_token_known_key_or_not(app: Flask) -> None:
    client = app.test_client()
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s)
    known = SoftwareDevice()
    r = client.post(
        "/api/v1/enroll", data=known.enroll_body(token), content_type="application/json"
    )
    assert r.status_code == 201
    answers = []
    for dev in (known, SoftwareDevice()):
        r = client.post(
            "/api/v1/enroll", data=dev.enroll_body("epe_wrong"), content_type="application/json"
        )
        answers.append((r.status_code, r.get_json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


def test_nonce_is_burned_by_a_request_that_ends_in_4xx(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    app = make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True)
    with get_db(app).session() as s:
        _, token = create_enrollment_token(s)
        _, admin = create_operator_token(s, name="a", role="admin")
    dev = SoftwareDevice()
    client = app.test_client()
    assert (
        client.post(
            "/api/v1/enroll", data=dev.enroll_body(token), content_type="application/json"
        ).status_code
        == 201
    )
    path = f"/api/v1/devices/{dev.device_id}/checkin"
    bad = json.dumps({"state": 5}).encode()
    headers = dev.signed_headers("POST", path, bad)
    assert client.post(path, data=bad, headers=headers).status_code == 400
    r = client.post(path, data=bad, headers=headers)  # the very same signed request again
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "replay"
    # A disabled device's refused (403) request burns its nonce too.
    client.patch(
        f"/api/v1/devices/{dev.device_id}",
        json={"status": "disabled"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    ok = b"{}"
    headers = dev.signed_headers("POST", path, ok)
    assert client.post(path, data=ok, headers=headers).status_code == 403
    assert client.post(path, data=ok, headers=headers).get_json()["error"]["code"] == "replay"
