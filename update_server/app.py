"""The Flask application factory."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from edgepkg.errors import ProtocolError
from update_server import metrics, openapi, web_hygiene
from update_server.access import require_credentials
from update_server.alerts import api as alerts_api
from update_server.approvals import api as approvals_api
from update_server.audit import (
    api as audit_api,
    views as _audit_pages,  # noqa: F401 (adds dashboard pages)
)
from update_server.config import ServerConfig, load_config
from update_server.dashboard import charts_api, console, views as dashboard
from update_server.db import Database, utcnow
from update_server.devices import api as devices_api, fleet_versions, inventory
from update_server.errors import Error, TooManyRequestsError
from update_server.grants import api as grants_api, service as grants_service
from update_server.groups import api as groups_api
from update_server.operators import (
    accounts_api,
    api as operator_api,
    auth,
    oidc,
    pages as _account_pages,  # noqa: F401 (dashboard pages)
)
from update_server.rollouts import api as rollouts_api
from update_server.services import Services
from update_server.telemetry import api as telemetry_api, metrics as telemetry_metrics
from update_server.tuf import files as tuf_files
from update_server.tuf.releases import Release, ReleaseCache
from update_server.webhooks import api as webhooks_api

log = logging.getLogger("update_server")

csrf = CSRFProtect()


def _error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    if field is None:
        return {"error": {"code": code, "message": message}}
    return {"error": {"code": code, "message": message, "field": field}}


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
        resp = jsonify(_error_body(exc.code, exc.message, exc.field))
        resp.status_code = exc.status
        if isinstance(exc, TooManyRequestsError):
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp

    @app.errorhandler(ProtocolError)
    def handle_protocol(exc: ProtocolError) -> ResponseReturnValue:
        # A device message that breaks the contract: 400 with the contract's reason code.
        return jsonify(_error_body(exc.code, str(exc), getattr(exc, "field", None))), 400

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
    """CSRF-check every state change outside the API that a cookie could authenticate.

    Skipped only where no cookie counts: the API (bearer only) and a request whose operator was
    authenticated by a non-empty ``Authorization`` header (a browser never adds one cross-site).
    The mere presence of the header is not enough: an empty one falls back to the session.
    """
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        return
    if request.path.startswith("/api/") or request.path.startswith("/tuf/"):
        return
    if auth.authenticated_by_header():
        return
    csrf.protect()


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
    if cfg.proxy_hops:
        # Behind nginx: the client address (login throttling, logs) is the proxy's
        # X-Forwarded-For entry, trusted for exactly that many hops and no more.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=cfg.proxy_hops, x_proto=cfg.proxy_hops
        )
    db = Database(pool_size=cfg.db_pool_size, pool_pre_ping=cfg.db_pool_pre_ping)
    db.init_app(app)
    Services(
        config=cfg,
        releases=ReleaseCache(cfg.repo_dir, release_reader),
        clock=clock or utcnow,
        openapi_paths={**rollouts_api.OPENAPI_PATHS, **alerts_api.OPENAPI_PATHS,
                       **fleet_versions.OPENAPI_PATHS, **grants_api.OPENAPI_PATHS,
                       **groups_api.OPENAPI_PATHS, **inventory.OPENAPI_PATHS,
                       **audit_api.OPENAPI_PATHS, **approvals_api.OPENAPI_PATHS,
                       **accounts_api.OPENAPI_PATHS,
                       **telemetry_api.OPENAPI_PATHS, **webhooks_api.OPENAPI_PATHS,
                       **charts_api.OPENAPI_PATHS},
    ).install(app)
    grants_service.init_app(app, cfg)
    metrics.init_app(app)
    rollouts_api.register_metrics(app)
    metrics.add_collector(app, telemetry_metrics.TelemetryCollector(app))
    telemetry_api.init_app(app)
    webhooks_api.init_app(app)
    # Hooks run in this order: metrics (so refused requests are counted too), hostile text,
    # credentials (deny by default), then CSRF (for the state-changing forms of an operator).
    web_hygiene.init_app(app)  # strict path/query/form text first, security headers on all
    app.before_request(require_credentials)
    csrf.init_app(app)
    app.before_request(_csrf_guard)
    for blueprint in (
        auth.bp,
        devices_api.bp,
        operator_api.bp,
        rollouts_api.bp,
        alerts_api.bp,
        grants_api.bp,
        dashboard.bp,
        charts_api.bp,
        tuf_files.bp,
        openapi.bp,
        fleet_versions.bp,
        groups_api.bp,  # issue 14: dynamic groups
        inventory.bp,  # issue 14: bulk device actions
        console.bp,  # issue 14: console pages beside the dashboard
        audit_api.bp,
        approvals_api.bp,
        accounts_api.bp,
        oidc.bp,
        telemetry_api.bp,
        webhooks_api.bp,
    ):
        app.register_blueprint(blueprint)
    _register_errors(app)

    @app.get("/")
    def index() -> ResponseReturnValue:
        return redirect(url_for("dashboard.index"))

    @app.get("/healthz")
    def healthz() -> ResponseReturnValue:
        return jsonify(status="ok")

    return app
