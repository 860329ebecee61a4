"""Dashboard pages through the real app (test client): login, CSRF on the buttons, roles."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.update_server._rollout_fixtures import (
    RELEASES,
    T0,
    Clock,
    add_device,
    dev_ids,
    make_app,
    migrated,
)
from update_server.db import get_db
from update_server.devices.models import Event
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    migrated(url).dispose()
    app = make_app(url, tmp_path, Clock())
    with app.app_context(), get_db(app).session() as s:
        app.tokens = {
            role: create_operator_token(s, name=f"{role}-op", role=role)[1]
            for role in ("viewer", "release")
        }
        for i in dev_ids(8):
            add_device(s, i)
        s.add(
            Event(
                id="ev-1",
                device_id="dev0000",
                type="rejected",
                time=T0,
                received_at=T0,
                model="det",
                version="1.1.0",
                details={"reason": "accuracy 0.61 < 0.9"},
            )
        )
        r = svc.create_rollout(s, {"model": "det", "version": "1.1.0"}, releases=RELEASES, now=T0)
        svc.operator_action(s, r.id, "pause", now=T0, reason="stage 1: 2 of 3 failed")
        app.rollout_id = r.id
    yield app
    get_db(app).dispose()


def login(client: FlaskClient, token: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    r = client.post("/login", data={"token": token, "csrf_token": csrf.group(1)})
    assert r.status_code == 302


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def test_pages_need_login(app: Any) -> None:
    c = app.test_client()
    for path in ("/dashboard/", "/dashboard/rollouts", "/dashboard/alerts", "/dashboard/devices"):
        r = c.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_every_page_renders_for_a_viewer_without_buttons(app: Any) -> None:
    c = app.test_client()
    login(c, app.tokens["viewer"])
    rid = app.rollout_id
    for path in (
        "/dashboard/",
        "/dashboard/rollouts",
        f"/dashboard/rollouts/{rid}",
        "/dashboard/devices",
        "/dashboard/devices/dev0000",
        "/dashboard/alerts",
        "/dashboard/static/dashboard.css",
    ):
        r = c.get(path)
        assert r.status_code == 200, path
    html = c.get("/dashboard/rollouts").get_data(as_text=True)
    assert "stage 1: 2 of 3 failed" in html
    assert f'id="resume-{rid}"' not in html
    dev = c.get("/dashboard/devices/dev0000").get_data(as_text=True)
    assert "accuracy 0.61 &lt; 0.9" in dev
    assert c.get("/dashboard/devices/nope").status_code == 404
    # a viewer cannot press the button even by crafting the POST
    r = c.post(f"/dashboard/rollouts/{rid}/resume", data={"csrf_token": csrf_of(html)})
    assert r.status_code == 403


def test_resume_button_needs_csrf(app: Any) -> None:
    c = app.test_client()
    login(c, app.tokens["release"])
    rid = app.rollout_id
    html = c.get("/dashboard/rollouts").get_data(as_text=True)
    assert f'id="resume-{rid}"' in html
    assert c.post(f"/dashboard/rollouts/{rid}/resume").status_code == 400  # no CSRF token
    r = c.post(
        f"/dashboard/rollouts/{rid}/resume",
        data={"csrf_token": csrf_of(html), "next": "//evil.example/"},
    )
    assert r.status_code == 302 and r.headers["Location"].endswith("/dashboard/rollouts")
    page = c.get("/dashboard/rollouts").get_data(as_text=True)
    assert "resume done" in page
    with app.app_context(), get_db(app).session() as s:
        assert svc.get_rollout(s, rid).status == "running"
    # resuming twice is reported, not a crash
    r = c.post(
        f"/dashboard/rollouts/{rid}/resume",
        data={"csrf_token": csrf_of(page)},
        follow_redirects=True,
    )
    assert "cannot resume a rollout that is running" in r.get_data(as_text=True)


def test_pages_escape_hostile_device_data(app: Any) -> None:
    with app.app_context(), get_db(app).session() as s:
        add_device(s, "evil", tags=("<script>alert(1)</script>",))
    c = app.test_client()
    login(c, app.tokens["viewer"])
    html = c.get("/dashboard/devices").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_no_external_assets(app: Any) -> None:
    c = app.test_client()
    login(c, app.tokens["viewer"])
    html = c.get("/dashboard/").get_data(as_text=True)
    assert not re.search(r'(src|href)="(https?:)?//', html)
