"""Operator rollout API and alerts over HTTP on the real app: roles, bad input, transitions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.update_server._rollout_fixtures import Clock, add_device, dev_ids, make_app, migrated
from update_server.db import get_db
from update_server.operators.auth import create_operator_token

ROLLOUT = {
    "model": "det",
    "version": "1.1.0",
    "selector": {"tags": ["site:a"]},
    "stages": [{"percent": 50, "min_soak_seconds": 0}, {"percent": 100}],
    "min_devices": 1,
    "failure_share": 0.5,
}


class Api:
    def __init__(self, client: FlaskClient, tokens: dict[str, str], clock: Clock, app: Any):
        self.client, self.tokens, self.clock, self.app = client, tokens, clock, app

    def call(self, method: str, path: str, role: str | None = "release", **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return self.client.open(path, method=method, headers=headers, **kw)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    migrated(db_url).dispose()
    clock = Clock()
    app = make_app(db_url, tmp_path, clock)
    tokens = {}
    with app.app_context(), get_db(app).session() as s:
        for role in ("viewer", "release", "admin"):
            tokens[role] = create_operator_token(s, name=f"{role}-bot", role=role)[1]
        for i in dev_ids(6):
            add_device(s, i)
    yield Api(app.test_client(), tokens, clock, app)
    get_db(app).dispose()


def test_rollout_endpoints_deny_by_default(api: Api) -> None:
    assert api.call("GET", "/api/v1/rollouts", role=None).status_code == 401
    assert api.call("GET", "/api/v1/alerts", role=None).status_code == 401
    assert api.call("POST", "/api/v1/rollouts", role=None, json=ROLLOUT).status_code == 401
    r = api.call("POST", "/api/v1/rollouts", role="viewer", json=ROLLOUT)
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    bad = api.client.get("/api/v1/rollouts", headers={"Authorization": "Bearer epo_forged"})
    assert bad.status_code == 401


def test_create_list_pause_resume_abort(api: Api) -> None:
    r = api.call("POST", "/api/v1/rollouts", json=ROLLOUT)
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    assert r.json["status"] == "running" and r.json["stage"] == 1
    assert r.json["groups"][0]["expected"] == 3  # 50 % of 6
    assert r.json["created_by"] == "release-bot"
    listed = api.call("GET", "/api/v1/rollouts?status=running", role="viewer").json["rollouts"]
    assert [x["id"] for x in listed] == [rid]
    assert api.call("POST", "/api/v1/rollouts", json=ROLLOUT).status_code == 409
    paused = api.call("POST", f"/api/v1/rollouts/{rid}/pause", json={"reason": "holiday freeze"})
    assert paused.status_code == 200 and paused.json["reason"] == "holiday freeze"
    assert api.call("POST", f"/api/v1/rollouts/{rid}/pause").status_code == 409
    alerts = api.call("GET", "/api/v1/alerts?kind=rollout_paused", role="viewer").json
    assert alerts["count"] == 1 and "holiday freeze" in alerts["alerts"][0]["message"]
    assert api.call("POST", f"/api/v1/rollouts/{rid}/resume").json["status"] == "running"
    assert api.call("POST", f"/api/v1/rollouts/{rid}/abort", role="viewer").status_code == 403
    assert api.call("POST", f"/api/v1/rollouts/{rid}/abort").json["status"] == "aborted"
    assert api.call("GET", f"/api/v1/rollouts/{rid}", role="viewer").json["status"] == "aborted"


def test_rollback_starts_a_downgrade_rollout(api: Api) -> None:
    rid = api.call("POST", "/api/v1/rollouts", json=ROLLOUT).json["id"]
    r = api.call("POST", f"/api/v1/rollouts/{rid}/rollback")
    assert r.status_code == 201
    assert r.json["version"] == "1.0.0" and r.json["allow_downgrade"] is True
    assert r.json["rollback_of"] == rid and r.json["from_version"] == "1.1.0"
    assert api.call("GET", f"/api/v1/rollouts/{rid}", role="viewer").json["status"] == "aborted"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({"data": "model=det", "content_type": "application/x-www-form-urlencoded"}, 400),
        ({"json": ["a list"]}, 400),
        ({"json": {**ROLLOUT, "version": 110}}, 400),
        ({"json": {**ROLLOUT, "stages": [{"percent": 120}]}}, 400),
        ({"json": {**ROLLOUT, "min_devices": -1}}, 400),
        ({"json": {**ROLLOUT, "selector": {"tags": [["nested"]]}}}, 400),
        ({"json": {**ROLLOUT, "version": "7.7.7"}}, 404),
        ({"json": {**ROLLOUT, "model": "x" * 5000}}, 400),
        ({"data": "[" * 100000 + "]" * 100000, "content_type": "application/json"}, 400),
    ],
    ids=[
        "bad-json",
        "form",
        "list",
        "int-version",
        "percent",
        "min-devices",
        "tag-type",
        "unknown-release",
        "long-name",
        "deep",
    ],
)
def test_bad_rollout_input_is_a_json_4xx(api: Api, kwargs: dict[str, Any], status: int) -> None:
    r = api.call("POST", "/api/v1/rollouts", **kwargs)
    assert r.status_code in (status, 413)
    assert r.is_json and "error" in r.json


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/rollouts/ro-unknown", 404),
        ("GET", "/api/v1/rollouts/" + "x" * 300, 404),
        ("POST", "/api/v1/rollouts/ro-unknown/pause", 404),
        ("POST", "/api/v1/rollouts/ro-unknown/explode", 404),
        ("GET", "/api/v1/rollouts?status=sleepy", 400),
    ],
)
def test_unknown_rollouts_and_actions(api: Api, method: str, path: str, status: int) -> None:
    r = api.call(method, path)
    assert r.status_code == status and r.is_json


def test_reason_must_be_a_short_string(api: Api) -> None:
    rid = api.call("POST", "/api/v1/rollouts", json=ROLLOUT).json["id"]
    assert api.call("POST", f"/api/v1/rollouts/{rid}/pause", json={"reason": 5}).status_code == 400
    r = api.call("POST", f"/api/v1/rollouts/{rid}/pause", json={"reason": "x" * 501})
    assert r.status_code == 400


def test_alerts_for_silent_devices(api: Api) -> None:
    api.clock.advance(seconds=3 * 60 + 1)  # poll_interval 60 s, 3 intervals
    items = api.call("GET", "/api/v1/alerts", role="viewer").json["alerts"]
    assert {a["kind"] for a in items} == {"device_silent"}
    assert len(items) == 6


def test_rollout_gauges_on_metrics(api: Api) -> None:
    rid = api.call("POST", "/api/v1/rollouts", json=ROLLOUT).json["id"]
    text = api.call("GET", "/metrics", role="viewer").get_data(as_text=True)
    assert (
        f'edgepkg_rollout_stage{{model="det",rollout="{rid}",status="running",version="1.1.0"}} 1.0'
        in text
    )
    assert "edgepkg_rollout_stage_percent" in text


def test_openapi_documents_rollout_routes(api: Api) -> None:
    paths = api.client.get("/api/openapi.json").json["paths"]
    doc = api.client.get("/api/openapi.json").json
    for p in ("/api/v1/rollouts", "/api/v1/rollouts/{rollout_id}/pause", "/api/v1/alerts"):
        assert p in paths
        for op in paths[p].values():
            for sec in op["security"]:
                assert set(sec) <= set(doc["components"]["securitySchemes"])
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(paths))
    assert set(refs) <= set(doc["components"]["schemas"])
