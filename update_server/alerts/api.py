"""Operator API for fleet alerts: ``GET /api/v1/alerts`` (viewer; bearer token).

:data:`OPENAPI_PATHS` documents the route for ``/api/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from update_server.alerts.service import fleet_alerts
from update_server.db import get_session
from update_server.operators.auth import require_operator
from update_server.services import services

bp = Blueprint("alerts_api", __name__, url_prefix="/api/v1")

SILENT_INTERVALS = 3
"""A device is silent after this many missed poll intervals."""


@bp.get("/alerts")
@require_operator("viewer")
def list_alerts() -> ResponseReturnValue:
    db = get_session()
    found = services()
    alerts = fleet_alerts(
        db,
        found.now(),
        poll_interval_s=found.config.poll_interval,
        silent_intervals=SILENT_INTERVALS,
    )
    kind = request.args.get("kind")
    items = [a.to_json() for a in alerts if kind is None or a.kind == kind]
    return jsonify(alerts=items, count=len(items))


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
_OBJ = {"description": "alerts", "content": {"application/json": {"schema": {"type": "object"}}}}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/alerts": {
        "get": {
            "summary": "Current alerts (silent devices, latency, validation, paused rollouts)",
            "security": _SEC,
            "x-required-role": "viewer",
            "parameters": [{"name": "kind", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": _OBJ, "400": _ERR, "401": _ERR, "403": _ERR},
        }
    },
}
