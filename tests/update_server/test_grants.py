"""The key service's configuration and operator API (the end-to-end grant flow is in
tests/e2e/test_key_grants_e2e.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from edgepkg.keys import create_key
from edgepkg.protocol import Assignment
from update_server import schema
from update_server.auth import create_operator_token
from update_server.config import load_config
from update_server.db import get_db
from update_server.devices.auth import DeviceRecord
from update_server.errors import ConfigError
from update_server.grants.service import key_service, with_grants


def _app(tmp_path: Path, make: Callable[..., Flask], **kw: object) -> Flask:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    schema.upgrade(url)
    return make(url, testing=True, **kw)


def _token(app: Flask, role: str) -> dict[str, str]:
    with app.app_context(), get_db(app).session() as s:
        token = create_operator_token(s, name=f"t-{role}", role=role)[1]
    return {"Authorization": f"Bearer {token}"}


def test_grant_lifetime_is_bounded() -> None:
    with pytest.raises(ConfigError, match="grant_lifetime_s"):
        load_config(env={}, grant_lifetime_s=10)
    assert load_config(env={}).key_service_key == ""  # off unless configured


def test_pem_key_service_key_is_loudly_development_only(
        tmp_path: Path, make_server_app: Callable[..., Flask],
        caplog: pytest.LogCaptureFixture) -> None:
    key = create_key("key-service", "recipient", directory=tmp_path / "keys")
    (tmp_path / "repo").mkdir()
    with caplog.at_level(logging.WARNING, logger="update_server.grants"):
        app = _app(tmp_path, make_server_app, key_service_key=str(key.private_ref),
                   repo_dir=str(tmp_path / "repo"))
    assert "DEVELOPMENT ONLY" in caplog.text
    service = key_service(app)
    assert service is not None and service.key_id == key.key_id


def test_key_service_without_repository_is_a_config_error(
        tmp_path: Path, make_server_app: Callable[..., Flask]) -> None:
    key = create_key("key-service", "recipient", directory=tmp_path / "keys")
    with pytest.raises(ConfigError, match="repo_dir"):
        _app(tmp_path, make_server_app, key_service_key=str(key.private_ref))


def test_no_grants_without_a_key_service_or_for_a_disabled_device(
        tmp_path: Path, make_server_app: Callable[..., Flask]) -> None:
    app = _app(tmp_path, make_server_app)
    a = Assignment(model="m", version="1.0.0", target="models/m/1.0.0/m-1.0.0.edgepkg",
                   rollout_id="r1")
    device = DeviceRecord(id="a" * 64, status="disabled", tags=[], models={})
    with app.app_context(), get_db(app).session() as s:
        assert with_grants(app, s, device, [a], [], now=None) == [a]  # type: ignore[arg-type]


def test_grants_api_roles_and_errors(tmp_path: Path,
                                     make_server_app: Callable[..., Flask]) -> None:
    app = _app(tmp_path, make_server_app)
    client = app.test_client()
    viewer, admin = _token(app, "viewer"), _token(app, "admin")
    assert client.get("/api/v1/grants").status_code == 401
    r = client.get("/api/v1/grants?device_id=" + "b" * 64, headers=viewer)
    assert r.status_code == 200 and r.get_json() == {"grants": [], "count": 0}
    assert client.get("/api/v1/grants?device_id=nope", headers=viewer).status_code == 400
    assert client.get("/api/v1/grants?limit=0", headers=viewer).status_code == 400
    body = {"device_id": "b" * 64, "target": "models/m/1.0.0/m-1.0.0.edgepkg"}
    assert client.post("/api/v1/grants", json=body, headers=viewer).status_code == 403
    r = client.post("/api/v1/grants", json=body, headers=admin)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "no_key_service"
