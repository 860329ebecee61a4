"""Operator API for dynamic groups (bearer token; deny by default).

``GET /api/v1/groups`` and ``/api/v1/groups/<name>`` (viewer, with the current device count),
``POST /api/v1/groups/preview`` (viewer: parse a selector and count what it selects, saves
nothing), ``POST /api/v1/groups`` and ``PUT /api/v1/groups/<name>`` (release),
``DELETE /api/v1/groups/<name>`` (release; running rollouts that name it then select nothing).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from update_server import _validate as v
from update_server.db import get_session
from update_server.errors import BadRequestError
from update_server.groups import selector as sel, service as gs
from update_server.operators.auth import current_operator, require_operator
from update_server.services import services

bp = Blueprint("groups_api", __name__, url_prefix="/api/v1")


def _actor() -> str | None:
    op = current_operator()
    return op.name if op is not None else None


def _body(allowed: set[str]) -> dict[str, Any]:
    body = v.json_body(request)
    unknown = set(body) - allowed
    if unknown:
        raise BadRequestError(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


@bp.get("/groups")
@require_operator("viewer")
def list_groups() -> ResponseReturnValue:
    db = get_session()
    out = []
    for g in gs.list_groups(db):
        node = gs.group_node(db, g.name)
        count = len(gs.matching_ids(db, node)) if node is not None else 0
        out.append(gs.group_json(g, count=count))
    return jsonify(groups=out)


@bp.get("/groups/<name>")
@require_operator("viewer")
def get_group(name: str) -> ResponseReturnValue:
    db = get_session()
    g = gs.get_group(db, name)
    return jsonify({**gs.group_json(g), **gs.preview(db, g.selector)})


@bp.post("/groups/preview")
@require_operator("viewer")
def preview() -> ResponseReturnValue:
    body = _body({"selector"})
    text = body.get("selector")
    if not isinstance(text, str):
        raise sel.SelectorError("selector must be a string", field="selector")
    return jsonify(gs.preview(get_session(), text))


@bp.post("/groups")
@require_operator("release")
def create_group() -> ResponseReturnValue:
    db = get_session()
    body = _body({"name", "selector", "description"})
    g = gs.save_group(db, body.get("name"), body.get("selector"),
                      description=body.get("description"), actor=_actor(),
                      now=services().now())
    db.commit()
    return jsonify({**gs.group_json(g), **gs.preview(db, g.selector)}), 201


@bp.put("/groups/<name>")
@require_operator("release")
def update_group(name: str) -> ResponseReturnValue:
    db = get_session()
    body = _body({"selector", "description"})
    g = gs.save_group(db, name, body.get("selector"), description=body.get("description"),
                      actor=_actor(), now=services().now(), replace=True)
    db.commit()
    return jsonify({**gs.group_json(g), **gs.preview(db, g.selector)})


@bp.delete("/groups/<name>")
@require_operator("release")
def delete_group(name: str) -> ResponseReturnValue:
    db = get_session()
    db.delete(gs.get_group(db, name))
    db.commit()
    return "", 204


_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
_ERR_REF = {"$ref": "#/components/schemas/Error"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_GROUP_IN = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 100},
        "selector": {"type": "string", "maxLength": sel.MAX_LENGTH,
                     "description": "e.g. tag:site-berlin and gpu_sm>=87 and "
                                    "platform=linux-aarch64 (and, or, not, parentheses)"},
        "description": {"type": "string"},
    },
}


def _op(summary: str, role: str, ok: str = "200", *, body: bool = False,
        name: bool = False, codes: tuple[str, ...] = ("400", "401", "403")) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": summary,
        "security": _SEC,
        "x-required-role": role,
        "responses": {
            ok: {"description": "OK"},
            **{c: {"description": "error", "content": {"application/json": {"schema": _ERR_REF}}}
               for c in codes},
        },
    }
    if body:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": _GROUP_IN}}}
    if name:
        out["parameters"] = [_NAME]
    return out


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/groups": {
        "get": _op("List dynamic groups with their current device counts", "viewer"),
        "post": _op("Save a dynamic group (a named selector)", "release", "201", body=True,
                    codes=("400", "401", "403", "409")),
    },
    "/api/v1/groups/preview": {
        "post": _op("Parse a selector and count the devices it selects (saves nothing)",
                    "viewer", body=True),
    },
    "/api/v1/groups/{name}": {
        "get": _op("A group, its device count and a sample of its devices", "viewer",
                   name=True, codes=("400", "401", "403", "404")),
        "put": _op("Change a group's selector or description", "release", body=True,
                   name=True, codes=("400", "401", "403", "404")),
        "delete": _op("Delete a group", "release", "204", name=True,
                      codes=("400", "401", "403", "404")),
    },
}
