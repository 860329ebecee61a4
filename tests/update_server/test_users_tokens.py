"""Users and API tokens: create / list / disable / revoke / passwords through API, UI and CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.update_server._accounts_fixtures import PASSWORD, accounts_app, bearer, csrf_of, login
from update_server.cli import main
from update_server.db import get_db


@pytest.fixture
def app(tmp_path: Path) -> Any:
    a = accounts_app(tmp_path)
    yield a
    get_db(a).dispose()


def test_admin_creates_lists_and_disables_users(app: Any) -> None:
    c = app.test_client()
    root = bearer(app, "root")
    r = c.post("/api/v1/users", json={"username": "dave", "password": PASSWORD, "role": "viewer"},
               headers=root)
    assert r.status_code == 201 and r.get_json()["role"] == "viewer"
    dup = c.post("/api/v1/users", json={"username": "dave", "password": PASSWORD,
                                        "role": "viewer"}, headers=root)
    assert dup.status_code == 409 and dup.get_json()["error"]["code"] == "user_exists"
    names = [u["username"] for u in c.get("/api/v1/users", headers=root).get_json()["users"]]
    assert names == ["alice", "bob", "carol", "dave", "root"]
    assert c.get("/api/v1/users", headers=bearer(app, "alice")).status_code == 403
    assert c.patch("/api/v1/users/dave", json={"role": "release"},
                   headers=root).get_json()["role"] == "release"
    assert c.patch("/api/v1/users/nobody", json={"disabled": True},
                   headers=root).status_code == 404
    self_off = c.delete("/api/v1/users/root", headers=root)
    assert self_off.status_code == 403  # cannot lock yourself out


def test_disabling_a_user_ends_their_session(app: Any) -> None:
    browser = app.test_client()
    assert login(browser, "alice") == 302
    assert browser.get("/dashboard/").status_code == 200
    assert app.test_client().delete("/api/v1/users/alice",
                                    headers=bearer(app, "root")).status_code == 204
    assert browser.get("/dashboard/").status_code == 302  # back to the login page
    assert login(app.test_client(), "alice") == 401
    app.test_client().patch("/api/v1/users/alice", json={"disabled": False},
                            headers=bearer(app, "root"))
    assert login(app.test_client(), "alice") == 302


def test_tokens_scoped_expiring_shown_once_and_revocable(app: Any) -> None:
    c = app.test_client()
    root = bearer(app, "root")
    r = c.post("/api/v1/tokens", json={"name": "ci", "role": "viewer", "expires_in_s": 3600},
               headers=root)
    assert r.status_code == 201
    made = r.get_json()
    assert made["token"].startswith("epo_") and made["expires_at"] and made["created_by"] == "root"
    h = {"Authorization": f"Bearer {made['token']}"}
    assert c.get("/api/v1/devices", headers=h).status_code == 200
    assert c.post("/api/v1/rollouts", json={"model": "det", "version": "1.1.0"},
                  headers=h).status_code == 403  # scoped to viewer
    listed = c.get("/api/v1/tokens", headers=root).get_json()["tokens"]
    assert "token" not in json.dumps(listed).replace('"tokens"', "")  # no secret in listings
    assert any(t["id"] == made["id"] and not t["revoked"] for t in listed)
    assert c.delete(f"/api/v1/tokens/{made['id']}", headers=root).status_code == 204
    assert c.get("/api/v1/devices", headers=h).status_code == 401
    assert c.delete("/api/v1/tokens/nope", headers=root).status_code == 404
    bad = c.post("/api/v1/tokens", json={"name": "x", "role": "god"}, headers=root)
    assert bad.status_code == 400


def test_password_reset_and_self_change(app: Any) -> None:
    c = app.test_client()
    new = "a much better passphrase"
    assert c.post("/api/v1/users/bob/password", json={"password": "short"},
                  headers=bearer(app, "root")).status_code == 400
    assert c.post("/api/v1/users/bob/password", json={"password": new},
                  headers=bearer(app, "root")).status_code == 204
    assert login(app.test_client(), "bob") == 401 and login(app.test_client(), "bob", new) == 302
    wrong = c.post("/api/v1/me/password",
                   json={"current_password": "nope", "new_password": "x" * 20},
                   headers=bearer(app, "alice"))
    assert wrong.status_code == 403
    assert c.post("/api/v1/me/password",
                  json={"current_password": PASSWORD, "new_password": new},
                  headers=bearer(app, "alice")).status_code == 204
    assert login(app.test_client(), "alice", new) == 302
    browser = app.test_client()
    assert login(browser, "carol") == 302
    page = browser.get("/dashboard/account").get_data(as_text=True)
    browser.post("/dashboard/account", data={"csrf_token": csrf_of(page),
                                              "current_password": PASSWORD,
                                              "new_password": new})
    assert login(app.test_client(), "carol", new) == 302
    actions = [e["action"] for e in c.get("/api/v1/audit?action=user.",
                                          headers=bearer(app, "root")).get_json()["entries"]]
    assert actions.count("user.password_change") == 2 and "user.password_reset" in actions


def test_users_page_creates_users_and_tokens_shown_once(app: Any) -> None:
    browser = app.test_client()
    assert login(browser, "root") == 302
    page = browser.get("/dashboard/users").get_data(as_text=True)
    assert 'id="user-alice"' in page
    r = browser.post("/dashboard/users", data={"csrf_token": csrf_of(page), "op": "create_user",
                                               "username": "erin", "password": PASSWORD,
                                               "role": "release"})
    assert r.status_code == 302
    page = browser.get("/dashboard/users").get_data(as_text=True)
    assert 'id="user-erin"' in page
    r = browser.post("/dashboard/users", data={"csrf_token": csrf_of(page), "op": "create_token",
                                               "name": "deploy", "role": "release",
                                               "expires_days": "30"})
    shown = r.get_data(as_text=True)
    assert r.status_code == 200 and 'id="new-token"' in shown and "epo_" in shown
    assert "epo_" not in browser.get("/dashboard/users").get_data(as_text=True)
    page = browser.get("/dashboard/users").get_data(as_text=True)
    r = browser.post("/dashboard/users", data={"csrf_token": csrf_of(page), "op": "disable",
                                               "username": "erin"})
    assert 'data-disabled="true"' in browser.get("/dashboard/users").get_data(as_text=True)
    assert browser.post("/dashboard/users", data={"op": "disable",
                                                  "username": "bob"}).status_code == 400
    viewer = app.test_client()
    assert login(viewer, "carol") == 302
    assert viewer.get("/dashboard/users").status_code == 403


def test_cli_lists_disables_resets_and_revokes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["--database-url", url, "init-db"]) == 0
    monkeypatch.setenv("EDGEPKG_PASSWORD", PASSWORD)
    assert main(["--database-url", url, "create-user", "--username", "ann",
                 "--role", "admin"]) == 0
    assert main(["--database-url", url, "create-user", "--username", "ann",
                 "--role", "admin"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["--database-url", url, "--json", "create-token", "--role", "viewer",
                 "--name", "ci", "--owner", "ann"]) == 0
    token_id = json.loads(capsys.readouterr().out)["id"]
    assert main(["--database-url", url, "--json", "users", "list"]) == 0
    assert json.loads(capsys.readouterr().out)["users"][0]["username"] == "ann"
    assert main(["--database-url", url, "users", "disable", "ann"]) == 0
    assert main(["--database-url", url, "users", "disable", "zed"]) == 1
    monkeypatch.setenv("EDGEPKG_PASSWORD", "another long password")
    assert main(["--database-url", url, "users", "reset-password", "ann"]) == 0
    assert main(["--database-url", url, "tokens", "revoke", token_id]) == 0
    capsys.readouterr()
    assert main(["--database-url", url, "--json", "tokens", "list"]) == 0
    tok = json.loads(capsys.readouterr().out)["tokens"][0]
    assert tok["revoked"] and tok["created_by"] == "ann"
    assert main(["--database-url", url, "audit", "verify"]) == 0
    assert main(["--database-url", url, "--json", "audit", "export"]) == 0
    actions = [json.loads(x)["action"] for x in capsys.readouterr().out.splitlines()[1:]]
    assert actions == ["user.create", "token.create", "user.disable", "user.password_reset",
                       "token.revoke"]
