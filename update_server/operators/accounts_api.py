"""Users and API tokens over the API (admin, except changing one's own password).

``GET/POST /api/v1/users``, ``PATCH/DELETE /api/v1/users/<username>`` (DELETE disables: the row
stays for the audit log), ``POST /api/v1/users/<username>/password`` (admin reset),
``POST /api/v1/me/password`` (self: the token's owner), ``GET/POST /api/v1/tokens``,
``DELETE /api/v1/tokens/<id>`` (revoke). New token plaintexts are in the response once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from update_server import _validate as v
from update_server.audit.web import record_request
from update_server.db import get_session, utcnow
from update_server.errors import BadRequestError, ForbiddenError
from update_server.operators import accounts
from update_server.operators.auth import (
    create_operator_token,
    create_user,
    current_operator,
    require_operator,
)

bp = Blueprint("accounts_api", __name__, url_prefix="/api/v1")


def _who(db: Session) -> str | None:
    op = current_operator()
    return accounts.principal(db, op) if op is not None else None

MAX_TOKEN_LIFETIME_S = 5 * 366 * 86400


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise BadRequestError(f"unknown fields: {', '.join(sorted(unknown))}")


def _text(body: dict[str, Any], name: str, max_len: int = 1024) -> str:
    value = v.get_str(body, name, max_len=max_len)
    assert value is not None
    return value


@bp.get("/users")
@require_operator("admin")
def list_users() -> ResponseReturnValue:
    return jsonify(users=[accounts.user_json(u) for u in accounts.list_users(get_session())])


@bp.post("/users")
@require_operator("admin")
def add_user() -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    _only(body, {"username", "password", "role"})
    user = create_user(db, username=_text(body, "username", 100),
                       password=_text(body, "password"), role=_text(body, "role", 16))
    record_request("user.create", user.username, {"role": user.role})
    db.commit()
    return jsonify(accounts.user_json(user)), 201


@bp.patch("/users/<username>")
@require_operator("admin")
def patch_user(username: str) -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    _only(body, {"disabled", "role"})
    user = accounts.get_user(db, username)
    if "role" in body:
        accounts.set_role(db, username, _text(body, "role", 16))
        record_request("user.role", user.username, {"role": user.role})
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise BadRequestError("'disabled' must be true or false", field="disabled")
        accounts.set_disabled(db, username, body["disabled"], by=_who(db))
        record_request("user.disable" if body["disabled"] else "user.enable", user.username, {})
    db.commit()
    return jsonify(accounts.user_json(user))


@bp.delete("/users/<username>")
@require_operator("admin")
def disable_user(username: str) -> ResponseReturnValue:
    db = get_session()
    user = accounts.set_disabled(db, username, True, by=_who(db))
    record_request("user.disable", user.username, {})
    db.commit()
    return "", 204


@bp.post("/users/<username>/password")
@require_operator("admin")
def reset_password(username: str) -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    _only(body, {"password"})
    user = accounts.reset_password(db, username, _text(body, "password"))
    record_request("user.password_reset", user.username, {})
    db.commit()
    return "", 204


@bp.post("/me/password")
@require_operator("viewer")
def change_own_password() -> ResponseReturnValue:
    db = get_session()
    op = current_operator()
    assert op is not None
    body = v.json_body(request)
    _only(body, {"current_password", "new_password"})
    who = accounts.principal(db, op)
    if who.startswith("token:"):
        raise ForbiddenError("this token belongs to no user, so it has no password to change",
                             code="no_user")
    accounts.change_password(db, who, _text(body, "current_password"),
                             _text(body, "new_password"))
    record_request("user.password_change", who, {})
    db.commit()
    return "", 204


@bp.get("/tokens")
@require_operator("admin")
def list_tokens() -> ResponseReturnValue:
    now = utcnow()
    rows = accounts.list_tokens(get_session())
    return jsonify(tokens=[accounts.token_json(t, now) for t in rows])


@bp.post("/tokens")
@require_operator("admin")
def add_token() -> ResponseReturnValue:
    db = get_session()
    body = v.json_body(request)
    _only(body, {"name", "role", "expires_in_s"})
    expires_in = v.get_int(body, "expires_in_s", required=False, minimum=60,
                           maximum=MAX_TOKEN_LIFETIME_S, nullable=True)
    now = utcnow()
    expires = now + dt.timedelta(seconds=expires_in) if expires_in else None
    op = current_operator()
    assert op is not None
    row, plaintext = create_operator_token(db, name=_text(body, "name", 100),
                                           role=_text(body, "role", 16), expires_at=expires)
    row.created_by = accounts.principal(db, op)
    record_request("token.create", row.id, {"name": row.name, "role": row.role,
                                            "expires_at": expires.isoformat() if expires else None})
    db.commit()
    return jsonify(token=plaintext, **accounts.token_json(row, now)), 201


@bp.delete("/tokens/<token_id>")
@require_operator("admin")
def revoke_token(token_id: str) -> ResponseReturnValue:
    db = get_session()
    row = accounts.revoke_token(db, token_id)
    record_request("token.revoke", row.id, {"name": row.name})
    db.commit()
    return "", 204


# --- OpenAPI ---------------------------------------------------------------------------------

_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_OBJ: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}


def _doc(summary: str, role: str, ok: str = "200", *, body: bool = False,
         param: str | None = None, errors: tuple[str, ...] = ("400", "401", "403")
         ) -> dict[str, Any]:
    out: dict[str, Any] = {
        "summary": summary, "security": [{"operatorToken": []}], "x-required-role": role,
        "responses": {ok: {"description": "done", **({"content": _OBJ} if ok != "204" else {})},
                      **dict.fromkeys(errors, _ERR)},
    }
    if body:
        out["requestBody"] = {"required": True, "content": _OBJ}
    if param:
        out["parameters"] = [{"name": param, "in": "path", "required": True,
                              "schema": {"type": "string"}}]
    return out


_E404 = ("400", "401", "403", "404")
OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/users": {
        "get": _doc("List dashboard users", "admin"),
        "post": _doc("Create a user ({username, password, role}); 409 user_exists", "admin",
                     "201", body=True, errors=("400", "401", "403", "409")),
    },
    "/api/v1/users/{username}": {
        "patch": _doc("Change a user's role or disable/enable it ({role?, disabled?})", "admin",
                      body=True, param="username", errors=_E404),
        "delete": _doc("Disable (revoke) a user; their sessions end", "admin", "204",
                       param="username", errors=_E404),
    },
    "/api/v1/users/{username}/password": {
        "post": _doc("Reset a user's password ({password}); their sessions end", "admin",
                     "204", body=True, param="username", errors=_E404),
    },
    "/api/v1/me/password": {
        "post": _doc("Change your own password ({current_password, new_password})", "viewer",
                     "204", body=True),
    },
    "/api/v1/tokens": {
        "get": _doc("List operator API tokens (never their secrets)", "admin"),
        "post": _doc("Create a token ({name, role, expires_in_s?}); the secret is shown once",
                     "admin", "201", body=True),
    },
    "/api/v1/tokens/{token_id}": {
        "delete": _doc("Revoke an operator token", "admin", "204", param="token_id",
                       errors=_E404),
    },
}
