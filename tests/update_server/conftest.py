"""Fixtures of the update server tests: one app factory, disposed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.update_server._factory import build_app
from update_server.db import get_db


@pytest.fixture
def make_server_app() -> Iterator[Callable[..., Flask]]:
    """``make_server_app(database_url, **settings)``: a real app; its engine is disposed after."""
    built: list[Flask] = []

    def make(database_url: str, **kw: Any) -> Flask:
        app = build_app(database_url, **kw)
        built.append(app)
        return app

    yield make
    for app in built:
        get_db(app).dispose()
