"""Four-eyes rule: a rollout of a listed model waits until another release-role user approves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.update_server._accounts_fixtures import accounts_app, bearer, csrf_of, login
from update_server.approvals.service import required_for
from update_server.db import get_db


@pytest.fixture
def app(tmp_path: Path) -> Any:
    a = accounts_app(tmp_path, approval_required="det, other")
    yield a
    get_db(a).dispose()


def _create(app: Any, who: str = "alice") -> dict[str, Any]:
    r = app.test_client().post("/api/v1/rollouts", json={"model": "det", "version": "1.1.0"},
                               headers=bearer(app, who))
    assert r.status_code == 201, r.get_json()
    return dict(r.get_json())


def _approve(app: Any, rid: str, who: str) -> Any:
    return app.test_client().post(f"/api/v1/rollouts/{rid}/approve", headers=bearer(app, who))


def test_rule_matches_listed_models_or_star() -> None:
    assert required_for("det", "det, other") and required_for("x", "*")
    assert not required_for("detector", "det") and not required_for("det", "")


def test_rollout_waits_then_another_user_approves_and_it_starts(app: Any) -> None:
    r = _create(app)
    assert r["status"] == "awaiting_approval"
    # nothing is assigned while it waits: the stage has no admitted devices
    assert r["totals"]["admitted"] == 0
    refused = _approve(app, r["id"], "alice")
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "self_approval"
    assert _approve(app, r["id"], "carol").status_code == 403  # viewer: no release role
    ok = _approve(app, r["id"], "bob")
    assert ok.status_code == 200 and ok.get_json()["status"] == "running"
    again = _approve(app, r["id"], "bob")
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "not_awaiting"
    log = app.test_client().get("/api/v1/audit?action=rollout.approve",
                                headers=bearer(app, "root")).get_json()["entries"]
    assert log[0]["details"]["approver"] == "bob" and log[0]["target"] == r["id"]


def test_a_second_token_of_the_creator_cannot_approve(app: Any) -> None:
    c = app.test_client()
    made = c.post("/api/v1/tokens", json={"name": "alice-2", "role": "release"},
                  headers=bearer(app, "root")).get_json()
    r = _create(app)
    # root created that token, so it counts as root (not alice): the owner is who it acts for
    assert made["created_by"] == "root"
    app.tokens["alice2"] = made["token"]
    from update_server.operators.models import OperatorToken

    with get_db(app).session() as s:
        row = s.get(OperatorToken, made["id"])
        assert row is not None
        row.created_by = "alice"
    assert _approve(app, r["id"], "alice2").status_code == 403


def test_awaiting_rollout_blocks_a_second_one_and_can_be_aborted(app: Any) -> None:
    r = _create(app)
    clash = app.test_client().post("/api/v1/rollouts", json={"model": "det", "version": "1.2.0"},
                                   headers=bearer(app, "bob"))
    assert clash.status_code == 409
    ab = app.test_client().post(f"/api/v1/rollouts/{r['id']}/abort", headers=bearer(app, "bob"))
    assert ab.status_code == 200 and ab.get_json()["status"] == "aborted"
    assert _approve(app, r["id"], "bob").status_code == 409


def test_models_without_the_rule_start_at_once(tmp_path: Path) -> None:
    app = accounts_app(tmp_path, approval_required="other")
    assert _create(app)["status"] == "running"
    get_db(app).dispose()


def test_dashboard_approve_button(app: Any) -> None:
    r = _create(app)
    c = app.test_client()
    assert login(c, "bob") == 302
    page = c.get(f"/dashboard/rollouts/{r['id']}").get_data(as_text=True)
    assert f'id="approve-{r["id"]}"' in page
    resp = c.post(f"/dashboard/rollouts/{r['id']}/approve", data={"csrf_token": csrf_of(page)})
    assert resp.status_code == 302
    assert c.post(f"/dashboard/rollouts/{r['id']}/approve").status_code == 400  # CSRF
    got = app.test_client().get(f"/api/v1/rollouts/{r['id']}", headers=bearer(app, "bob"))
    assert got.get_json()["status"] == "running"
