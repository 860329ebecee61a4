"""Operator actions through the API and the dashboard land in the audit log; the API and the
page filter and export it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.update_server._accounts_fixtures import accounts_app, bearer, csrf_of, login
from update_server.audit import service as audit
from update_server.db import get_db


@pytest.fixture
def app(tmp_path: Path) -> Any:
    a = accounts_app(tmp_path)
    yield a
    get_db(a).dispose()


def _entries(app: Any, **query: str) -> list[dict[str, Any]]:
    r = app.test_client().get("/api/v1/audit", query_string=query, headers=bearer(app, "root"))
    assert r.status_code == 200, r.get_json()
    return list(r.get_json()["entries"])


def test_operator_actions_are_recorded_with_who_and_where(app: Any) -> None:
    c = app.test_client()
    h = bearer(app, "alice")
    r = c.post("/api/v1/rollouts", json={"model": "det", "version": "1.1.0"}, headers=h)
    assert r.status_code == 201
    rid = r.get_json()["id"]
    assert c.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "night"},
                  headers=h).status_code == 200
    assert c.post(f"/api/v1/rollouts/{rid}/resume", headers=h).status_code == 200
    assert c.patch("/api/v1/devices/dev0001", json={"add_tags": ["lab"], "status": "disabled"},
                   headers=h).status_code == 200
    root = bearer(app, "root")
    made = c.post("/api/v1/enrollment-tokens", json={"max_uses": 3}, headers=root)
    assert made.status_code == 201
    assert c.post(f"/api/v1/rollouts/{rid}/abort", headers=h).status_code == 200

    entries = _entries(app)
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["rollout.create", "rollout.pause", "rollout.resume", "device.tag",
                       "device.disable", "enrollment_token.create", "rollout.abort"]
    pause = next(e for e in entries if e["action"] == "rollout.pause")
    assert pause["actor"] == "alice-ci" and pause["actor_kind"] == "token"
    assert pause["target"] == rid and pause["details"] == {"reason": "night"}
    assert pause["remote_addr"] == "127.0.0.1"
    with get_db(app).session() as s:
        assert audit.verify(s) == 7


def test_logins_failures_and_dashboard_actions_are_recorded(app: Any) -> None:
    c = app.test_client()
    assert login(c, "alice", "wrong password!!") == 401
    assert login(c, "alice") == 302
    rid = c.application.test_client().post(
        "/api/v1/rollouts", json={"model": "det", "version": "1.1.0"},
        headers=bearer(app, "bob")).get_json()["id"]
    page = c.get(f"/dashboard/rollouts/{rid}").get_data(as_text=True)
    r = c.post(f"/dashboard/rollouts/{rid}/pause", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 302
    entries = _entries(app)
    by_action = {e["action"]: e for e in entries}
    assert by_action["login.failed"]["target"] == "alice"
    assert by_action["login.failed"]["actor_kind"] == "anonymous"
    assert "wrong" not in json.dumps(by_action["login.failed"])  # never the password
    assert by_action["login"]["actor"] == "alice" and by_action["login"]["actor_kind"] == "user"
    assert by_action["rollout.pause"]["actor"] == "alice"


def test_api_filters_by_actor_action_and_time(app: Any) -> None:
    c = app.test_client()
    for who in ("alice", "bob"):
        c.post("/api/v1/rollouts", json={"model": "det", "version": "1.1.0",
                                         "selector": {"tags": [who]}}, headers=bearer(app, who))
    c.patch("/api/v1/devices/dev0002", json={"add_tags": ["x"]}, headers=bearer(app, "bob"))
    assert [e["actor"] for e in _entries(app, actor="bob-ci")] == ["bob-ci", "bob-ci"]
    assert {e["action"] for e in _entries(app, action="rollout.")} == {"rollout.create"}
    assert [e["action"] for e in _entries(app, action="device.tag")] == ["device.tag"]
    assert _entries(app, since="2099-01-01T00:00:00Z") == []
    assert len(_entries(app, until="2099-01-01T00:00:00Z")) == 3
    bad = c.get("/api/v1/audit?since=yesterday", headers=bearer(app, "root"))
    assert bad.status_code == 400
    # the audit log is for admins
    assert c.get("/api/v1/audit", headers=bearer(app, "alice")).status_code == 403


def test_api_export_jsonl_and_csv(app: Any) -> None:
    c = app.test_client()
    c.post("/api/v1/rollouts", json={"model": "det", "version": "1.1.0"},
           headers=bearer(app, "alice"))
    r = c.get("/api/v1/audit/export?format=jsonl", headers=bearer(app, "root"))
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    rows = [json.loads(line) for line in r.get_data(as_text=True).splitlines()]
    assert rows[0]["action"] == "rollout.create" and len(rows[0]["hash"]) == 64
    r = c.get("/api/v1/audit/export?format=csv&action=rollout.", headers=bearer(app, "root"))
    assert r.mimetype == "text/csv"
    text = r.get_data(as_text=True).splitlines()
    assert text[0].startswith("seq,at,actor") and len(text) == 2
    assert c.get("/api/v1/audit/export?format=xml",
                 headers=bearer(app, "root")).status_code == 400


def test_dashboard_audit_page_filters_and_links_exports(app: Any) -> None:
    c = app.test_client()
    assert login(c, "root") == 302
    c.application.test_client().post(
        "/api/v1/rollouts", json={"model": "det", "version": "1.1.0"},
        headers=bearer(app, "alice"))
    html = c.get("/dashboard/audit?action=rollout.").get_data(as_text=True)
    assert 'data-action="rollout.create"' in html and 'data-action="login"' not in html
    assert "/dashboard/audit/export?format=csv" in html
    r = c.get("/dashboard/audit/export?format=jsonl")
    assert r.status_code == 200 and b'"action": "login"' in r.get_data()
    assert "Invalid" not in c.get("/dashboard/audit?since=bad").get_data(as_text=True)
    viewer = app.test_client()
    assert login(viewer, "carol") == 302
    assert viewer.get("/dashboard/audit").status_code == 403
