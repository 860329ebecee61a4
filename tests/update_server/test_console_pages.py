"""Console pages (issue 14) through the real app: search and bulk actions with CSRF, the device
page (facts, latency, last error, readable event details), groups with preview, releases and a
rollout created from a release with the API's validation, the rollout page's devices, reasons
and a progress bar against the whole population."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.update_server._rollout_fixtures import T0, Clock, add_device, make_app, migrated
from tests.update_server.test_dashboard import csrf_of, login
from update_server.db import get_db
from update_server.devices.models import Device, Event
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc
from update_server.rollouts.models import RolloutDevice


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    migrated(url).dispose()
    app = make_app(url, tmp_path, Clock())
    with app.app_context(), get_db(app).session() as s:
        app.tokens = {
            role: create_operator_token(s, name=f"{role}-op", role=role)[1]
            for role in ("viewer", "release")
        }
        for i in range(10):
            d = add_device(s, f"dev{i:04d}", tags=["site-berlin"],
                           health={"latency_p50_ms": 4.0, "latency_p95_ms": None})
            d.name = f"device-{i:02d}"
            d.facts = {"gpu_sm": 87, "platform": "linux-aarch64", "ops": ["conv", "relu"]}
        s.get(Device, "dev0003").last_error = "app reported a failure: NaN outputs"  # type: ignore[union-attr]
        r = svc.create_rollout(s, {"model": "det", "version": "1.1.0",
                                   "stages": [{"percent": 20}, {"percent": 100}],
                                   "min_devices": 5}, releases=_releases(), now=T0)
        app.rollout_id = r.id
        admitted = [rd.device_id for rd in s.query(RolloutDevice).filter_by(rollout_id=r.id)]
        for dev in ("dev0001", "dev0002"):
            _fail(s, r.id, dev, admitted)
        s.commit()
    yield app
    get_db(app).dispose()


def _releases() -> list[Any]:
    from tests.update_server._rollout_fixtures import RELEASES

    return list(RELEASES)


def _fail(s: Any, rid: str, dev: str, admitted: list[str], version: str = "1.1.0") -> None:
    """dev failed the rollout: holdout validation rejected the release (as a device reports)."""
    details = {"accepted": False, "reasons": ["accuracy 0.61 < floor 0.9",
                                              "class 'cat' recall dropped 0.2"],
               "metrics": {"accuracy": 0.61}}
    s.add(Event(id=f"v-{dev}", device_id=dev, type="validation_result", time=T0, received_at=T0,
                model="det", version=version, rollout_id=rid, details=details))
    s.add(Event(id=f"r-{dev}", device_id=dev, type="rejected", time=T0, received_at=T0,
                model="det", version=version, rollout_id=rid,
                details={"reason": "holdout validation failed: accuracy 0.61 < floor 0.9",
                         "note": "<script>alert(1)</script>"}))
    if dev not in admitted:
        s.add(RolloutDevice(rollout_id=rid, device_id=dev, stage_index=0, assigned_at=T0,
                            result="pending"))
        s.flush()
    row = s.get(RolloutDevice, (rid, dev))
    row.result, row.finished_at = "failed", T0
    row.reason = "holdout validation failed: accuracy 0.61 < floor 0.9"


def _client(app: Any, role: str = "release") -> FlaskClient:
    c: FlaskClient = app.test_client()
    login(c, app.tokens[role])
    return c


def test_find_a_device_by_name_and_filter(app: Any) -> None:
    c = _client(app, "viewer")
    html = c.get("/dashboard/devices?q=device-03").get_data(as_text=True)
    assert "device-03" in html and "device-04" not in html and "Showing 1 of 1" in html
    html = c.get("/dashboard/devices?fact=gpu_sm>=90").get_data(as_text=True)
    assert "Showing 0 of 0" in html
    html = c.get("/dashboard/devices?fact=gpu_sm").get_data(as_text=True)
    assert "needs a comparison" in html  # a bad filter is a message, not an error page
    assert 'name="device_id"' not in c.get("/dashboard/devices").get_data(as_text=True)


def test_bulk_tag_and_disable_from_the_list_need_csrf_and_the_release_role(app: Any) -> None:
    c = _client(app)
    html = c.get("/dashboard/devices").get_data(as_text=True)
    form = {"csrf_token": csrf_of(html), "action": "tag", "tag": "lab",
            "device_id": ["dev0000", "dev0005"], "next": "/dashboard/devices?tag=lab"}
    r = c.post("/dashboard/devices/bulk", data=form)
    assert r.status_code == 302 and r.headers["Location"].endswith("/dashboard/devices?tag=lab")
    html = c.get("/dashboard/devices?tag=lab").get_data(as_text=True)
    assert "tag lab: 2 of 2 devices changed" in html and "Showing 2 of 2" in html
    r = c.post("/dashboard/devices/bulk", data={**form, "action": "disable"})
    with app.app_context(), get_db(app).session() as s:
        assert s.get(Device, "dev0005").status == "disabled"  # type: ignore[union-attr]
    assert c.post("/dashboard/devices/bulk", data={**form, "csrf_token": ""}).status_code == 400
    v = _client(app, "viewer")
    token = csrf_of(v.get("/dashboard/devices").get_data(as_text=True))
    assert v.post("/dashboard/devices/bulk", data={**form, "csrf_token": token}).status_code == 403


def test_device_page_is_readable(app: Any) -> None:
    c = _client(app)
    html = c.get("/dashboard/devices/dev0001").get_data(as_text=True)
    assert "p50 4.0 ms · p95 — ms" in html and "None" not in html
    assert "<dt>gpu_sm</dt><dd>87</dd>" in html
    assert "<dt>reasons</dt>" in html and "accuracy 0.61 &lt; floor 0.9" in html
    assert "{&#39;" not in html and "[&#39;" not in html  # no Python reprs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    html = c.get("/dashboard/devices/dev0003").get_data(as_text=True)
    assert 'id="last-error">app reported a failure: NaN outputs<' in html
    r = c.post("/dashboard/devices/dev0003/edit",
               data={"csrf_token": csrf_of(html), "name": "lobby-cam", "notes": "on the wall"})
    assert r.status_code == 302
    html = c.get("/dashboard/devices/dev0003").get_data(as_text=True)
    assert "lobby-cam" in html and "on the wall" in html
    c.post("/dashboard/devices/dev0004/edit", data={"csrf_token": csrf_of(html),
                                                    "name": "lobby-cam"})
    html = c.get("/dashboard/devices/dev0004").get_data(as_text=True)
    assert "already named" in html


def test_groups_page_previews_and_saves(app: Any) -> None:
    c = _client(app)
    r = c.get("/dashboard/groups/preview?selector=tag:site-berlin and gpu_sm>=87")
    assert r.status_code == 200 and r.get_json()["count"] == 10
    r = c.get("/dashboard/groups/preview?selector=tag:site-berlin and")
    assert r.status_code == 400 and "at the end" in r.get_json()["error"]
    html = c.get("/dashboard/groups").get_data(as_text=True)
    r = c.post("/dashboard/groups", data={"csrf_token": csrf_of(html), "name": "berlin",
                                          "selector": "tag:site-berlin"})
    assert r.status_code == 302
    html = c.get("/dashboard/groups").get_data(as_text=True)
    assert 'id="group-berlin"' in html and "tag:site-berlin" in html
    r = c.post("/dashboard/groups", data={"csrf_token": csrf_of(html), "name": "bad",
                                          "selector": "tag:a tag:b"})
    assert r.status_code == 400 and "unexpected text" in r.get_data(as_text=True)


def test_release_page_and_create_rollout_with_the_apis_validation(app: Any) -> None:
    c = _client(app)
    html = c.get("/dashboard/releases").get_data(as_text=True)
    assert "/dashboard/releases/det" in html
    html = c.get("/dashboard/releases/det").get_data(as_text=True)
    assert 'id="release-1.2.0"' in html and "from 1.0.0: 100 B" in html
    assert "<td>1.0.0</td><td class=\"n\">10</td>" in html  # the fleet's versions
    assert c.get("/dashboard/releases/nope").status_code == 404
    base = {"csrf_token": csrf_of(html), "version": "1.2.0", "stages": "10:60, 50",
            "success_share": "0.9", "failure_share": "0.2", "min_devices": "2",
            "on_failure": "pause", "group": "", "tags": ""}
    r = c.post("/dashboard/releases/det/rollout", data=base)
    assert r.status_code == 400
    assert "the last stage must be 100 percent" in r.get_data(as_text=True)
    r = c.post("/dashboard/releases/det/rollout", data={**base, "stages": "10:x, 100"})
    assert "must be a number" in r.get_data(as_text=True)
    r = c.post("/dashboard/releases/det/rollout", data={**base, "stages": "100", "group": "ghost"})
    assert "no group" in r.get_data(as_text=True)
    c.post("/api/v1/groups", json={"name": "berlin", "selector": "tag:site-berlin"},
           headers={"Authorization": f"Bearer {app.tokens['release']}"})
    r = c.post("/dashboard/releases/det/rollout",
               data={**base, "stages": "10:60, 100", "group": "berlin"})
    assert r.status_code == 302, r.get_data(as_text=True)
    html = c.get(r.headers["Location"]).get_data(as_text=True)
    assert "det 1.2.0" in html and "group <a" in html and "berlin" in html


def test_rollout_page_names_failed_devices_with_reasons_and_a_fair_bar(app: Any) -> None:
    c = _client(app, "viewer")
    html = c.get(f"/dashboard/rollouts/{app.rollout_id}").get_data(as_text=True)
    assert "device-01" in html and "device-02" in html
    assert "holdout validation failed: accuracy 0.61 &lt; floor 0.9" in html
    assert "class &#39;cat&#39; recall dropped 0.2" in html  # the failed checks, listed
    assert ">rejected<" in html
    # 2 failed of 10 devices: a fifth of the bar is red, the rest pending / not yet reached
    assert 'class="bad" style="width: 20.0%"' in html
    m = re.search(r"0 committed · 2 failed · (\d+) pending · (\d+) not yet reached \(of 10\)", html)
    assert m is not None and int(m.group(1)) + int(m.group(2)) == 8
    listing = c.get("/dashboard/rollouts").get_data(as_text=True)
    assert 'class="bad" style="width: 20.0%"' in listing
