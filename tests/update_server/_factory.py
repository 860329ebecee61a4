"""The one way the server tests build an app (config from keyword settings, no environment)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask

from update_server.app import create_app
from update_server.config import load_config


def build_app(
    database_url: str,
    *,
    clock: Callable[[], dt.datetime] | None = None,
    release_reader: Callable[[Any], Sequence[Any]] | None = None,
    **settings: Any,
) -> Flask:
    """``create_app`` on ``database_url`` with ``settings`` as config values (env ignored)."""
    config = load_config(env={}, database_url=database_url, **settings)
    reader = (lambda d: list(release_reader(d))) if release_reader is not None else None
    return create_app(config, clock=clock, release_reader=reader)
