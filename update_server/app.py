"""The Flask application factory."""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from update_server import api_devices, api_operator, auth, metrics, openapi, tuf_files
from update_server._services import rollout_service
from update_server.config import ServerConfig, load_config
from update_server.db import Database
from update_server.errors import Error
from update_server.releases import Release, ReleaseCache

log = logging.getLogger("update_server")

csrf = CSRFProtect()

# Optional blueprints owned by other parts of the server (rollouts API, dashboard).
_OPTIONAL_MODULES = ("update_server.api_rollouts", "update_server.dashboard")


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _wants_html() -> bool:
    if request.path.startswith("/api/") or request.path.startswith("/tuf/"):
        return False
    if request.path == "/metrics":
        return False
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def _register_errors(app: Flask) -> None:
    @app.errorhandler(Error)
    def handle_error(exc: Error) -> ResponseReturnValue:
        if exc.status >= 500:
            log.error("server error: %s", exc.message)
        return jsonify(_error_body(exc.code, exc.message)), exc.status

    @app.errorhandler(CSRFError)
    def handle_csrf(exc: CSRFError) -> ResponseReturnValue:
        return jsonify(_error_body("csrf", exc.description or "CSRF check failed")), 400

    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException) -> ResponseReturnValue:
        resp = exc.get_response()
        if _wants_html() and exc.code not in (413,):
            return resp
        code = (exc.name or "error").lower().replace(" ", "_")
        resp.set_data(jsonify(_error_body(code, exc.description or exc.name)).get_data())
        resp.mimetype = "application/json"
        return resp

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(_error_body("internal_error", "internal server error")), 500


def _csrf_guard() -> None:
    """CSRF-check cookie-authenticated state changes (HTML forms); the API takes no cookies."""
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        return
    if request.path.startswith("/api/") or request.path.startswith("/tuf/"):
        return
    if "Authorization" in request.headers:
        return
    csrf.protect()


def _load_optional(app: Flask) -> None:
    """Register the rollouts part (API, dashboard, its metrics) when it is installed."""
    service = rollout_service()
    if service is not None and hasattr(service, "init_app"):
        service.init_app(app)
        registered = True
    else:
        registered = False
    for name in _OPTIONAL_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if not registered and hasattr(module, "bp"):
            app.register_blueprint(module.bp)
        app.extensions["edgepkg_openapi_paths"].update(getattr(module, "OPENAPI_PATHS", {}))


def create_app(
    config: ServerConfig | None = None,
    *,
    clock: Callable[[], dt.datetime] | None = None,
    release_reader: Callable[[Any], list[Release]] | None = None,
) -> Flask:
    """Build the app. ``clock`` and ``release_reader`` are for tests and embedding."""
    cfg = config or load_config()
    app = Flask("update_server")
    app.config.update(
        EDGEPKG=cfg,
        SECRET_KEY=cfg.secret_key,
        MAX_CONTENT_LENGTH=cfg.max_content_length,
        TESTING=cfg.testing,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=cfg.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    db = Database(pool_size=cfg.db_pool_size, pool_pre_ping=cfg.db_pool_pre_ping)
    db.init_app(app)
    csrf.init_app(app)
    app.before_request(_csrf_guard)
    if clock is not None:
        app.extensions["edgepkg_clock"] = clock
    app.extensions["edgepkg_releases"] = ReleaseCache(cfg.repo_dir, release_reader)
    app.extensions["edgepkg_openapi_paths"] = {}
    metrics.init_app(app)
    for blueprint in (
        auth.bp,
        api_devices.bp,
        api_operator.bp,
        tuf_files.bp,
        openapi.bp,
        importlib.import_module("update_server.fleet_versions").bp,  # r11 fleet deltas
    ):
        app.register_blueprint(blueprint)
    _register_errors(app)

    @app.get("/")
    def index() -> ResponseReturnValue:
        if "dashboard.index" in app.view_functions:
            return redirect(url_for("dashboard.index"))
        return jsonify(service="edgepkg update server", api="/api/openapi.json")

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(status="ok")

    _load_optional(app)
    return app
