"""Deny by default: every route not on the public allowlist refuses a caller without
credentials (401 JSON on the APIs, a redirect to the login page on the dashboard)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from update_server import schema
from update_server.access import PUBLIC_ENDPOINTS

SKIPPED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(tmp_path: Path, make_server_app: Callable[..., Flask]) -> Flask:
    return make_server_app(f"sqlite:///{tmp_path / 'db.sqlite'}", testing=True)


def _routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) of every registered rule, arguments filled with dummies."""
    out = []
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        values = dict.fromkeys(rule.arguments, "x")
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            url = adapter.build(rule.endpoint, values, method=method)
            out.append((rule.endpoint, method, url))
    return out


def test_every_route_without_credentials_is_refused(app: Flask) -> None:
    client = app.test_client()
    checked = 0
    for endpoint, method, url in _routes(app):
        if endpoint in PUBLIC_ENDPOINTS:
            continue
        resp = client.open(url, method=method, json={} if method != "GET" else None)
        where = f"{method} {url} ({endpoint})"
        if endpoint.startswith(("dashboard.", "console.")):  # HTML pages: to the login
            assert resp.status_code == 302, where
            assert resp.headers["Location"].startswith("/login"), where
        else:
            assert resp.status_code == 401, f"{where}: {resp.status_code}"
            assert resp.is_json and resp.get_json()["error"]["code"] in (
                "unauthorized",
                "unsigned",
            ), where
        checked += 1
    # the walk really covered the APIs and the dashboard (a broken walk must not pass)
    assert checked >= 25


def test_public_endpoints_answer_without_credentials(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/tuf/metadata/timestamp.json").status_code == 404  # no repo, not 401


def test_metrics_are_public_only_when_configured(
    tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    closed = make_server_app(f"sqlite:///{tmp_path / 'a.sqlite'}", testing=True)
    assert closed.test_client().get("/metrics").status_code == 401
    url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    schema.upgrade(url)  # the fleet gauges read the device tables
    opened = make_server_app(url, testing=True, metrics_public=True)
    assert opened.test_client().get("/metrics").status_code == 200


def test_a_new_route_is_closed_until_allowlisted(app: Flask) -> None:
    @app.get("/api/v1/brand-new")
    def brand_new() -> str:
        return "should not be reachable"

    assert app.test_client().get("/api/v1/brand-new").status_code == 401
