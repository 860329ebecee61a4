"""Operator API for key grants: ``GET /api/v1/grants`` (viewer: the audit trail) and
``POST /api/v1/grants`` (admin: issue one grant for offline delivery, e.g. on removable media).

:data:`OPENAPI_PATHS` documents the routes for ``/api/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from edgepkg.protocol import DEVICE_ID_RE
from update_server import _validate as v
from update_server.audit.web import record_request
from update_server.db import get_session
from update_server.devices.models import DEVICE_ENABLED, Device
from update_server.errors import BadRequestError, ConflictError, NotFoundError
from update_server.grants.models import KeyGrantRecord
from update_server.grants.service import key_service
from update_server.operators.auth import current_operator, require_operator
from update_server.services import services

bp = Blueprint("grants_api", __name__, url_prefix="/api/v1")

MAX_LIST = 1000


def _row(r: KeyGrantRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "device_id": r.device_id,
        "model": r.model,
        "version": r.version,
        "target": r.target,
        "target_sha256": r.target_sha256,
        "release_sha256": r.release_sha256,
        "issued_at": r.issued_at.isoformat(),
        "expires_at": r.expires_at.isoformat(),
        "issuer": r.issuer,
        "key_service_key_id": r.key_service_key_id,
    }


@bp.get("/grants")
@require_operator("viewer")
def list_grants() -> ResponseReturnValue:
    device_id = request.args.get("device_id")
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        raise BadRequestError("limit must be an integer") from None
    if not 1 <= limit <= MAX_LIST:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIST}")
    query = select(KeyGrantRecord).order_by(KeyGrantRecord.id.desc()).limit(limit)
    if device_id is not None:
        if not DEVICE_ID_RE.match(device_id):
            raise BadRequestError("device_id must be a device key id (64 lowercase hex)")
        query = query.where(KeyGrantRecord.device_id == device_id)
    items = [_row(r) for r in get_session().scalars(query)]
    return jsonify(grants=items, count=len(items))


@bp.post("/grants")
@require_operator("admin")
def issue_grant() -> ResponseReturnValue:
    """A grant for a device that will get the bundle by other means (no rollout needed)."""
    service = key_service(current_app)
    if service is None:
        raise ConflictError("this server has no key service (key_service_key is not set)",
                            code="no_key_service")
    body = v.json_body(request)
    device_id = v.get_str(body, "device_id", max_len=64)
    target = v.get_str(body, "target", max_len=512)
    assert device_id is not None and target is not None
    db = get_session()
    device = db.get(Device, device_id)
    if device is None:
        raise NotFoundError("no such device")
    if device.status != DEVICE_ENABLED:
        raise ConflictError("the device is disabled: disabled devices get no grants",
                            code="device_disabled")
    release = next((r for r in services().current_releases() if r.target_path == target), None)
    if release is None:
        raise NotFoundError(f"{target!r} is not a current (unrevoked) target of the repository")
    op = current_operator()
    grant = service.issue(db, device_id, release, issuer=f"operator:{op.name if op else '?'}",
                          now=services().now())
    record_request("key_grant.issue", device_id, {"target": target})
    db.commit()
    return jsonify(grant=grant, grant_json=json.dumps(grant, sort_keys=True,
                                                      separators=(",", ":"))), 201


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]


def _obj(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"type": "object"}}}}


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/grants": {
        "get": {
            "summary": "Key grants issued (audit trail), newest first",
            "security": _SEC,
            "x-required-role": "viewer",
            "parameters": [
                {"name": "device_id", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": {"200": _obj("grants"), "400": _ERR, "401": _ERR, "403": _ERR},
        },
        "post": {
            "summary": "Issue a key grant for offline delivery ({device_id, target})",
            "security": _SEC,
            "x-required-role": "admin",
            "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"201": _obj("the grant"), "400": _ERR, "401": _ERR, "403": _ERR,
                          "404": _ERR, "409": _ERR},
        },
    },
}
