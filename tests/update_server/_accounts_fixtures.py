"""An app with users, owned tokens and devices for the audit, approval and account tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from tests.update_server._rollout_fixtures import Clock, add_device, dev_ids, make_app, migrated
from update_server.operators.auth import create_operator_token, create_user

PASSWORD = "correct horse battery"


def accounts_app(tmp_path: Path, url: str | None = None, **cfg: Any) -> Any:
    """Users alice/bob (release), carol (viewer), root (admin) with a token each (owned by the
    user), 20 devices; ``app.tokens[name]`` is the user's bearer token."""
    url = url or f"sqlite:///{tmp_path / 's.db'}"
    db = migrated(url)
    tokens: dict[str, str] = {}
    with db.session() as s:
        for name, role in (("alice", "release"), ("bob", "release"), ("carol", "viewer"),
                           ("root", "admin")):
            create_user(s, username=name, password=PASSWORD, role=role)
            row, tokens[name] = create_operator_token(s, name=f"{name}-ci", role=role)
            row.created_by = name
        for d in dev_ids(20):
            add_device(s, d)
    db.dispose()
    app = make_app(url, tmp_path, Clock(), **cfg)
    app.tokens = tokens
    return app


def bearer(app: Any, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.tokens[who]}"}


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> int:
    page = client.get("/login").get_data(as_text=True)
    r = client.post("/login", data={"username": username, "password": password,
                                    "csrf_token": csrf_of(page)})
    return r.status_code
