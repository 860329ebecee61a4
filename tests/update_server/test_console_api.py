"""Console API (issue 14): device names/notes and search, bulk actions, dynamic groups, and
rollouts that target a group (resolved at evaluation: devices enrolled later join)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.update_server._rollout_fixtures import T0, Clock, add_device, make_app, migrated
from update_server.db import get_db
from update_server.devices.models import Device
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    migrated(url).dispose()
    app = make_app(url, tmp_path, Clock())
    with app.app_context(), get_db(app).session() as s:
        app.tokens = {
            role: create_operator_token(s, name=f"{role}-op", role=role)[1]
            for role in ("viewer", "release")
        }
        for i in range(10):
            d = add_device(s, f"dev{i:04d}", tags=["site-berlin"] if i < 6 else ["site-paris"],
                           version="1.0.0" if i % 2 == 0 else "1.1.0",
                           last_seen=T0 if i < 8 else None)
            d.name = f"device-{i:02d}"
            d.facts = {"gpu_sm": 87 if i < 3 else 72, "platform": "linux-aarch64"}
        s.commit()
    yield app
    get_db(app).dispose()


def _h(app: Any, role: str = "release") -> dict[str, str]:
    return {"Authorization": f"Bearer {app.tokens[role]}"}


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return sorted(d["device_id"] for d in resp.get_json()["devices"])


def test_search_by_name_tag_fact_version_status_and_seen(app: Any) -> None:
    c: FlaskClient = app.test_client()
    h = _h(app, "viewer")
    assert _ids(c.get("/api/v1/devices?q=device-03", headers=h)) == ["dev0003"]
    assert _ids(c.get("/api/v1/devices?q=DEVICE-0", headers=h)) == [f"dev{i:04d}" for i in
                                                                    range(10)]
    assert len(_ids(c.get("/api/v1/devices?tag=site-paris", headers=h))) == 4
    assert _ids(c.get("/api/v1/devices?fact=gpu_sm>=80", headers=h)) == [
        "dev0000", "dev0001", "dev0002"]
    assert len(_ids(c.get("/api/v1/devices?version=1.1.0", headers=h))) == 5
    assert _ids(c.get("/api/v1/devices?seen=never", headers=h)) == ["dev0008", "dev0009"]
    assert _ids(c.get("/api/v1/devices?selector=tag:site-paris and gpu_sm<80&seen=never",
                      headers=h)) == ["dev0008", "dev0009"]
    r = c.get("/api/v1/devices?fact=gpu_sm", headers=h)
    assert r.status_code == 400 and "comparison" in r.get_json()["error"]["message"]
    assert c.get("/api/v1/devices?seen=sometimes", headers=h).status_code == 400


def test_patch_sets_name_and_notes_and_refuses_a_taken_name(app: Any) -> None:
    c = app.test_client()
    r = c.patch("/api/v1/devices/dev0001", json={"name": "lobby-cam", "notes": "on the wall"},
                headers=_h(app))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["name"] == "lobby-cam" and r.get_json()["notes"] == "on the wall"
    r = c.patch("/api/v1/devices/dev0002", json={"name": "lobby-cam"}, headers=_h(app))
    assert r.status_code == 409 and "already named" in r.get_json()["error"]["message"]
    r = c.patch("/api/v1/devices/dev0002", json={"name": "bad name!"}, headers=_h(app))
    assert r.status_code == 400
    assert c.patch("/api/v1/devices/dev0001", json={"name": None},
                   headers=_h(app)).get_json()["name"] is None
    assert c.patch("/api/v1/devices/dev0001", json={"name": "x"},
                   headers=_h(app, "viewer")).status_code == 403


def test_bulk_tag_untag_disable_enable_by_ids_and_by_selector(app: Any) -> None:
    c = app.test_client()
    r = c.post("/api/v1/devices/bulk", headers=_h(app),
               json={"action": "tag", "tag": "lab", "device_ids": ["dev0000", "dev0001", "nope"]})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["changed"] == ["dev0000", "dev0001"] and body["unknown"] == ["nope"]
    r = c.post("/api/v1/devices/bulk", headers=_h(app),
               json={"action": "disable", "selector": "tag:lab"})
    assert sorted(r.get_json()["changed"]) == ["dev0000", "dev0001"]
    with app.app_context(), get_db(app).session() as s:
        assert s.get(Device, "dev0000").status == "disabled"  # type: ignore[union-attr]
        assert "lab" in s.get(Device, "dev0001").tags  # type: ignore[union-attr]
    r = c.post("/api/v1/devices/bulk", headers=_h(app),
               json={"action": "enable", "device_ids": ["dev0000"]})
    assert r.get_json()["changed"] == ["dev0000"]
    r = c.post("/api/v1/devices/bulk", headers=_h(app),
               json={"action": "untag", "tag": "lab", "selector": "all"})
    assert sorted(r.get_json()["changed"]) == ["dev0000", "dev0001"]
    for bad in ({"action": "tag", "device_ids": ["dev0000"]},
                {"action": "explode", "device_ids": ["dev0000"]},
                {"action": "enable"},
                {"action": "enable", "selector": "tag:"}):
        assert c.post("/api/v1/devices/bulk", headers=_h(app), json=bad).status_code == 400, bad
    assert c.post("/api/v1/devices/bulk", headers=_h(app, "viewer"),
                  json={"action": "enable", "selector": "all"}).status_code == 403


def test_group_preview_save_list_and_duplicate(app: Any) -> None:
    c = app.test_client()
    sel = "tag:site-berlin and gpu_sm>=87 and platform=linux-aarch64"
    r = c.post("/api/v1/groups/preview", json={"selector": sel}, headers=_h(app, "viewer"))
    assert r.status_code == 200
    assert r.get_json()["count"] == 3
    assert [d["name"] for d in r.get_json()["sample"]] == ["device-00", "device-01", "device-02"]
    r = c.post("/api/v1/groups/preview", json={"selector": "gpu_sm >="}, headers=_h(app))
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_selector"
    r = c.post("/api/v1/groups", json={"name": "berlin-gpus", "selector": sel}, headers=_h(app))
    assert r.status_code == 201 and r.get_json()["count"] == 3
    r = c.post("/api/v1/groups", json={"name": "berlin-gpus", "selector": "all"}, headers=_h(app))
    assert r.status_code == 409 and "already exists" in r.get_json()["error"]["message"]
    listed = c.get("/api/v1/groups", headers=_h(app, "viewer")).get_json()["groups"]
    assert listed[0]["name"] == "berlin-gpus" and listed[0]["devices"] == 3
    r = c.put("/api/v1/groups/berlin-gpus", json={"selector": "tag:site-berlin"}, headers=_h(app))
    assert r.status_code == 200 and r.get_json()["count"] == 6
    assert c.delete("/api/v1/groups/berlin-gpus", headers=_h(app)).status_code == 204
    assert c.get("/api/v1/groups/berlin-gpus", headers=_h(app)).status_code == 404


def test_a_group_rollout_picks_up_devices_enrolled_later(app: Any) -> None:
    c = app.test_client()
    c.post("/api/v1/groups", json={"name": "gpus", "selector": "gpu_sm>=87"}, headers=_h(app))
    r = c.post("/api/v1/rollouts", headers=_h(app), json={
        "model": "det", "version": "1.2.0", "group": "gpus", "stages": [{"percent": 100}],
        "min_devices": 1})
    assert r.status_code == 201, r.get_data(as_text=True)
    rid = r.get_json()["id"]
    assert r.get_json()["selector"] == {"tags": [], "group": "gpus"}
    with app.app_context(), get_db(app).session() as s:
        ro = svc.get_rollout(s, rid)
        assert sorted(svc.candidate_ids(s, svc.spec_of(ro))) == ["dev0000", "dev0001", "dev0002"]
        late = add_device(s, "dev0100", tags=[], version="1.0.0")
        late.facts = {"gpu_sm": 90}
        s.commit()
        assert "dev0100" in svc.candidate_ids(s, svc.spec_of(ro))
    r = c.post("/api/v1/rollouts", headers=_h(app), json={
        "model": "det", "version": "1.2.0", "group": "no-such-group"})
    assert r.status_code == 404 and "save it first" in r.get_json()["error"]["message"]
    r = c.post("/api/v1/rollouts", headers=_h(app), json={
        "model": "det", "version": "1.2.0", "group": "bad name"})
    assert r.status_code == 400


def test_openapi_documents_the_console_routes(app: Any) -> None:
    paths = app.test_client().get("/api/openapi.json").get_json()["paths"]
    assert {"post"} <= set(paths["/api/v1/devices/bulk"])
    assert {"get", "post"} <= set(paths["/api/v1/groups"])
    assert "post" in paths["/api/v1/groups/preview"]
    assert {"get", "put", "delete"} <= set(paths["/api/v1/groups/{name}"])
