"""A staged rollout end to end over the real HTTP API: enrolled software devices make signed
check-ins and post events; the canaries commit, the rollout advances, a bad stage pauses it,
and a device asks for the rollout status before committing (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.update_server._rollout_fixtures import make_app, migrated
from update_server.auth import create_enrollment_token, create_operator_token
from update_server.db import get_db, utcnow
from update_server.testing import SoftwareDevice


class Fleet:
    def __init__(self, app: Any) -> None:
        self.app, self.client, self.db = app, app.test_client(), get_db(app)
        with self.db.session() as s:
            self.op = create_operator_token(s, name="rel", role="release")[1]
            self.enroll_token = create_enrollment_token(s, max_uses=100, tags=["site:a"])[1]

    def enroll(self) -> SoftwareDevice:
        d = SoftwareDevice()
        r = self.client.post(
            "/api/v1/enroll", data=d.enroll_body(self.enroll_token), content_type="application/json"
        )
        assert r.status_code == 201, r.get_json()
        return d

    def signed(self, d: SoftwareDevice, method: str, path: str, body: Any = None) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        return self.client.open(
            path, method=method, data=data, headers=d.signed_headers(method, path, data)
        )

    def checkin(self, d: SoftwareDevice, version: str) -> list[dict[str, Any]]:
        body = {
            "models": {
                "det": {
                    "active_slot": "a",
                    "slots": {"a": {"version": version, "sha256": "a" * 64}, "b": None},
                }
            },
            "state": "IDLE",
            "health": {"latency_p50_ms": 3.0, "latency_p95_ms": 7.0, "errors": 0},
            "free_disk_bytes": 10**9,
            "last_error": None,
        }
        r = self.signed(d, "POST", f"/api/v1/devices/{d.device_id}/checkin", body)
        assert r.status_code == 200, r.get_json()
        return r.get_json()["assignments"]

    def event(self, d: SoftwareDevice, kind: str, rollout_id: str, **details: Any) -> None:
        ev = {
            "id": str(uuid.uuid4()),
            "type": kind,
            "time": utcnow().isoformat(),
            "model": "det",
            "version": "1.1.0",
            "rollout_id": rollout_id,
            "details": details,
        }
        r = self.signed(d, "POST", f"/api/v1/devices/{d.device_id}/events", {"events": [ev]})
        assert r.status_code == 200, r.get_json()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.open(
            path, method=method, json=body, headers={"Authorization": f"Bearer {self.op}"}
        )


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    migrated(db_url).dispose()
    app = make_app(db_url, tmp_path, utcnow, enrollment_open=True)
    f = Fleet(app)
    yield f
    f.db.dispose()


def test_canaries_commit_then_the_rollout_advances_and_a_bad_stage_pauses(fleet: Fleet) -> None:
    devices = [fleet.enroll() for _ in range(10)]
    for d in devices:
        assert fleet.checkin(d, "1.0.0") == []
    r = fleet.api(
        "POST",
        "/api/v1/rollouts",
        {
            "model": "det",
            "version": "1.1.0",
            "selector": {"tags": ["site:a"]},
            "stages": [{"percent": 20, "min_soak_seconds": 0}, {"percent": 100}],
            "success_share": 1.0,
            "failure_share": 0.3,
            "min_devices": 3,
        },
    )
    assert r.status_code == 201, r.get_json()
    rid = r.get_json()["id"]

    canaries = {d.device_id: a for d in devices for a in fleet.checkin(d, "1.0.0")}
    assert len(canaries) == 2
    a = next(iter(canaries.values()))
    assert a["target"] == "models/det/1.1.0/det-1.1.0.edgepkg"
    assert a["delta_target"] == "models/det/1.1.0/delta-from-1.0.0.edgepkg"
    assert a["rollout_id"] == rid and a["allow_downgrade"] is False

    for d in devices:
        if d.device_id in canaries:
            status = fleet.signed(d, "GET", f"/api/v1/devices/{d.device_id}/rollouts/{rid}")
            assert status.get_json() == {"rollout_id": rid, "status": "running"}
            fleet.event(d, "committed", rid)
            assert fleet.checkin(d, "1.1.0") == []
    state = fleet.api("GET", f"/api/v1/rollouts/{rid}").get_json()
    assert state["stage"] == 2 and state["status"] == "running"

    rest = [d for d in devices if d.device_id not in canaries]
    assert all(fleet.checkin(d, "1.0.0") for d in rest), "stage 2 is 100 %"
    for d in rest[:3]:
        fleet.event(d, "rejected", rid, reason="accuracy 0.70 below 0.90")
    state = fleet.api("GET", f"/api/v1/rollouts/{rid}").get_json()
    assert state["status"] == "paused"
    assert state["reason"].startswith("stage 2: 3 of 3")
    assert fleet.checkin(rest[4], "1.0.0") == []
    status = fleet.signed(rest[4], "GET", f"/api/v1/devices/{rest[4].device_id}/rollouts/{rid}")
    assert status.get_json()["status"] == "paused"
    alerts = fleet.api("GET", "/api/v1/alerts?kind=rollout_paused").get_json()["alerts"]
    assert [x["subject"] for x in alerts] == [rid]
