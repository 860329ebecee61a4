"""Server-side first-run defects: an enrollment-token request with an unknown field (``uses``,
the CLI flag's name) is refused with a 400 naming it; a duplicate user is a 409 / one CLI line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from update_server.app import create_app
from update_server.auth import create_operator_token, create_user
from update_server.cli import main
from update_server.config import load_config
from update_server.db import Database, get_db
from update_server.errors import ConflictError


@pytest.fixture()
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert main(["--database-url", url, "init-db"]) == 0
    return url


def test_enrollment_token_with_unknown_field_is_refused_naming_it(db_url: str, tmp_path) -> None:
    app = create_app(load_config(env={}, database_url=db_url, testing=True,
                                 repo_dir=str(tmp_path)))
    with get_db(app).session() as s:
        _, admin = create_operator_token(s, name="admin", role="admin")
    client = app.test_client()
    r = client.post("/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"},
                    json={"uses": 5})
    assert r.status_code == 400
    message = r.get_json()["error"]["message"]
    assert "uses" in message and "max_uses" in message
    r = client.get("/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"})
    assert r.get_json()["tokens"] == []  # nothing was made
    r = client.post("/api/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"},
                    json={"max_uses": 5})
    assert r.status_code == 201 and r.get_json()["max_uses"] == 5
    get_db(app).dispose()


def test_duplicate_user_is_one_cli_line_and_a_conflict(db_url: str, capsys, monkeypatch) -> None:
    monkeypatch.setenv("EDGEPKG_PASSWORD", "correct horse battery")
    argv = ["--database-url", db_url, "create-user", "--username", "ana", "--role", "viewer"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IntegrityError" not in err and "Traceback" not in err
    assert err.startswith("edgepkg-server: error: ") and "'ana' already exists" in err
    assert main(["--json", *argv]) == 1
    doc = json.loads(capsys.readouterr().err)
    assert doc["error"]["type"] == "ConflictError"
    db = Database(db_url)
    with db.session() as s, pytest.raises(ConflictError) as exc:
        create_user(s, username="ana", password="another long password", role="admin")
    assert exc.value.status == 409
    db.dispose()
