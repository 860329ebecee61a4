"""Issue 13 item 3: login throttling per username and per client address, exponential lockout,
429 with Retry-After (JSON, or the login page with a message), shared through the database,
and a failure path that costs the same hash for unknown users."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from update_server.db import get_db
from update_server.operators import auth
from update_server.operators.auth import create_user
from update_server.operators.models import LoginThrottle, User
from update_server.operators.throttle import ThrottlePolicy

PASSWORD = "correct horse battery"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask], clock: Clock
) -> Flask:
    app = make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True, clock=clock)
    with get_db(app).session() as s:
        create_user(s, username="alice", password=PASSWORD, role="admin")
        create_user(s, username="bob", password=PASSWORD, role="viewer")
    return app


def _post(client: FlaskClient, user: str, password: str, **kw: Any) -> Any:
    page = client.get("/login").get_data(as_text=True)
    m = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert m
    data = {"username": user, "password": password, "csrf_token": m.group(1)}
    return client.post("/login", data=data, **kw)


def test_eight_failures_lock_the_username_with_429_and_retry_after(
    app: Flask, clock: Clock
) -> None:
    client = app.test_client()
    codes = [_post(client, "alice", "wrong password!").status_code for _ in range(8)]
    assert codes[:5] == [401] * 5  # the free failures
    assert codes[5:] == [429] * 3
    r = _post(client, "alice", PASSWORD)  # the right password is refused while locked
    assert r.status_code == 429
    assert r.get_json()["error"]["code"] == "login_locked"
    assert int(r.headers["Retry-After"]) >= 1
    # Another user from the same address is not affected.
    assert _post(app.test_client(), "bob", PASSWORD).status_code == 302
    # After the lockout, the right password works again, and clears the username's counter.
    clock.now += dt.timedelta(seconds=int(r.headers["Retry-After"]))
    assert _post(client, "alice", PASSWORD).status_code == 302


def test_lockout_grows_exponentially_and_the_html_page_explains(app: Flask, clock: Clock) -> None:
    client = app.test_client()
    waits = []
    for _ in range(4):
        r = _post(client, "alice", "wrong password!")
        while r.status_code != 429:
            r = _post(client, "alice", "wrong password!")
        waits.append(int(r.headers["Retry-After"]))
        clock.now += dt.timedelta(seconds=waits[-1])
    assert waits == sorted(waits) and waits[-1] >= 4 * waits[0], waits
    r = _post(client, "alice", "wrong password!")
    r = _post(client, "alice", "x", headers={"Accept": "text/html"})
    assert r.status_code == 429 and r.mimetype == "text/html"
    assert "too many failed sign-ins" in r.get_data(as_text=True)
    assert r.headers["Retry-After"]


def test_guessing_address_is_throttled_across_usernames(app: Flask) -> None:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    codes = [_post(client, f"user{i}", "guess guess guess").status_code for i in range(22)]
    assert codes[:20] == [401] * 20 and codes[20:] == [429, 429]
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    assert _post(other, "alice", PASSWORD).status_code == 302


def test_counters_live_in_the_database_for_every_app_node(
    app: Flask,
    server_db_url: str,
    tmp_path: Path,
    make_server_app: Callable[..., Flask],
    clock: Clock,
) -> None:
    node2 = make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True, clock=clock)
    for _ in range(5):
        assert _post(app.test_client(), "alice", "wrong password!").status_code == 401
    assert _post(node2.test_client(), "alice", PASSWORD).status_code == 429
    with get_db(app).session() as s:
        keys = [row.key for row in s.query(LoginThrottle)]
    assert any(k.startswith("user:") for k in keys) and "user:alice" not in keys  # hashed


def test_unknown_users_cost_the_same_hash(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    with get_db(app).session() as s:
        real = s.query(User).filter_by(username="alice").one().password_hash
    # Same algorithm and work factor as real hashes (the part before the salt) ...
    assert auth._DUMMY_HASH.split("$")[0] == real.split("$")[0]
    # ... and the unknown-user path really runs it (counting calls of the real function).
    seen: list[str] = []
    original = auth.check_password_hash

    def counting(stored: str, password: str) -> bool:
        seen.append(stored)
        return original(stored, password)

    monkeypatch.setattr(auth, "check_password_hash", counting)
    assert _post(app.test_client(), "nobody-here", "wrong password!").status_code == 401
    assert _post(app.test_client(), "alice", "wrong password!").status_code == 401
    assert seen == [auth._DUMMY_HASH, real]


def test_policy_is_exponential_and_capped() -> None:
    p = ThrottlePolicy(user_free_failures=5, lockout_base_s=2, lockout_max_s=60)
    assert [p.lockout_s("user:x", n) for n in range(4, 10)] == [0, 2, 4, 8, 16, 32]
    assert p.lockout_s("user:x", 500) == 60


def test_behind_a_proxy_the_forwarded_address_is_throttled(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    app = make_server_app(
        server_db_url, repo_dir=str(tmp_path), testing=True, proxy_hops=1, login_ip_free_failures=2
    )
    client = app.test_client()
    guesser = {"X-Forwarded-For": "203.0.113.7"}
    codes = [_post(client, f"u{i}", "guess guess", headers=guesser).status_code for i in range(3)]
    assert codes == [401, 401, 429]
    assert (
        _post(client, "u9", "guess guess", headers={"X-Forwarded-For": "198.51.100.2"}).status_code
        == 401
    )
