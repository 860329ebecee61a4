"""The server's collaborators, built once by ``create_app`` and read by views through
:func:`services` (typed; no string-keyed lookups scattered over the views)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app

from update_server.config import ServerConfig
from update_server.db import utcnow
from update_server.tuf.releases import Release, ReleaseCache

EXTENSION_KEY = "edgepkg"


@dataclasses.dataclass(slots=True)
class Services:
    """What views and services need from the running app.

    ``clock`` is the server's one notion of "now" (tests pass a fake clock to ``create_app``);
    ``releases`` the cached list of current TUF releases; ``openapi_paths`` the path documents
    blueprints add to ``/api/openapi.json``.
    """

    config: ServerConfig
    releases: ReleaseCache
    clock: Callable[[], dt.datetime] = utcnow
    openapi_paths: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def now(self) -> dt.datetime:
        return self.clock()

    def current_releases(self) -> list[Release]:
        return list(self.releases.get())

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION_KEY] = self


def services(app: Flask | None = None) -> Services:
    """The :class:`Services` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    found = target.extensions.get(EXTENSION_KEY)
    if not isinstance(found, Services):
        raise RuntimeError(
            "update_server services are not installed; build the app with create_app()"
        )
    return found
