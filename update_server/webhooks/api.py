"""Operator API: ``GET /api/v1/webhooks/deliveries`` (admin: the log shows endpoint URLs)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from update_server.db import get_db, get_session
from update_server.errors import BadRequestError
from update_server.operators.auth import require_operator
from update_server.services import services
from update_server.webhooks.models import DELIVERED, FAILED, PENDING, WebhookDelivery
from update_server.webhooks.service import Worker, delivery_json, endpoints

bp = Blueprint("webhooks_api", __name__, url_prefix="/api/v1")


@bp.get("/webhooks/deliveries")
@require_operator("admin")
def list_deliveries() -> ResponseReturnValue:
    status = request.args.get("status")
    if status is not None and status not in (PENDING, DELIVERED, FAILED):
        raise BadRequestError(f"status must be one of {PENDING}, {DELIVERED}, {FAILED}")
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise BadRequestError("limit must be an integer") from None
    if not 1 <= limit <= 500:
        raise BadRequestError("limit must be 1..500")
    q = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if status is not None:
        q = q.where(WebhookDelivery.status == status)
    items = [delivery_json(d) for d in get_session().scalars(q)]
    return jsonify(deliveries=items, count=len(items))


def init_app(app: Flask) -> None:
    """Check the webhook configuration at start-up and run the delivery worker (not in tests:
    they call :func:`~.service.deliver_due` themselves)."""
    cfg = services(app).config
    if endpoints(cfg) and not cfg.testing:
        worker = Worker(get_db(app), cfg, clock=services(app).now)
        worker.start()
        app.extensions["edgepkg_webhook_worker"] = worker


_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/webhooks/deliveries": {
        "get": {
            "summary": "Webhook delivery log, newest first (queued, delivered, failed)",
            "security": _SEC,
            "x-required-role": "admin",
            "parameters": [
                {"name": "status", "in": "query",
                 "schema": {"type": "string", "enum": [PENDING, DELIVERED, FAILED]}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
            ],
            "responses": {
                "200": {"description": "deliveries",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": _ERR, "401": _ERR, "403": _ERR,
            },
        }
    },
}
