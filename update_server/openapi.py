"""The OpenAPI 3.1 document served at ``/api/openapi.json``, maintained by hand.

A test checks that every ``/api`` route of the app is documented here (method by method) and
that nothing documented is missing from the app. Other blueprints add their paths by exposing a
module-level ``OPENAPI_PATHS`` dict (merged by ``create_app``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from edgepkg.protocol import EVENT_TYPES
from update_server.services import services

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Malformed request"),
    "401": _json(_ref("Error"), "Not authenticated (bad signature, replay, bad token)"),
    "403": _json(_ref("Error"), "Not allowed"),
    "404": _json(_ref("Error"), "Not found"),
    "413": _json(_ref("Error"), "Body too large"),
    "429": _json(_ref("Error"), "Quota or throttle: retry after the Retry-After seconds"),
}
DEVICE_SEC: list[dict[str, list[str]]] = [{"deviceSignature": []}]
OPERATOR_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}
ROLLOUT_ID = {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}}
TOKEN_ID = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string"}}
PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]


def _op(
    summary: str,
    *,
    security: list[dict[str, list[str]]] | None,
    body: dict[str, Any] | None = None,
    ok: dict[str, Any] | None = None,
    ok_code: str = "200",
    params: list[dict[str, Any]] | None = None,
    role: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok_code: ok or {"description": "OK"}}}
    op["responses"].update(ERRORS)
    if security is not None:
        op["security"] = security
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    if role:
        op["x-required-role"] = role
    return op


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "the input field at fault"},
                },
            }
        },
    },
    "EnrollRequest": {
        "type": "object",
        "required": ["enrollment_token", "public_key_pem"],
        "properties": {
            "enrollment_token": {"type": "string"},
            "public_key_pem": {"type": "string", "description": "P-256 public key, PEM SPKI"},
            "facts": {"type": "object"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    },
    "EnrollResponse": {
        "type": "object",
        "properties": {"device_id": {"type": "string"}, "poll_interval": {"type": "integer"}},
    },
    "Slot": {
        "type": ["object", "null"],
        "properties": {"version": {"type": "string"}, "sha256": {"type": "string"}},
    },
    "CheckinRequest": {
        "type": "object",
        "properties": {
            "models": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "active_slot": {"enum": ["a", "b"]},
                        "slots": {
                            "type": "object",
                            "properties": {"a": _ref("Slot"), "b": _ref("Slot")},
                        },
                    },
                },
            },
            "state": {"type": ["string", "null"]},
            "health": {
                "type": "object",
                "properties": {
                    "latency_p50_ms": {"type": ["number", "null"]},
                    "latency_p95_ms": {"type": ["number", "null"]},
                    "errors": {"type": ["integer", "object", "null"]},
                    "last_metric": {"type": ["number", "null"]},
                },
            },
            "free_disk_bytes": {"type": ["integer", "null"], "minimum": 0},
            "last_error": {"type": ["string", "null"]},
            "facts": {"type": "object"},
        },
    },
    "Assignment": {
        "type": "object",
        "properties": {
            "action": {"const": "install"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "target": {"type": "string"},
            "delta_target": {"type": ["string", "null"]},
            "rollout_id": {"type": ["string", "null"]},
            "allow_downgrade": {"type": "boolean"},
        },
    },
    "CheckinResponse": {
        "type": "object",
        "properties": {
            "poll_interval": {"type": "integer"},
            "assignments": {"type": "array", "items": _ref("Assignment")},
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "time"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "type": {"enum": list(EVENT_TYPES)},
            "time": {"type": "string", "format": "date-time"},
            "model": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "rollout_id": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    },
    "Device": {"type": "object"},
    "EnrollmentToken": {"type": "object"},
}

CORE_PATHS: dict[str, dict[str, Any]] = {
    "/api/openapi.json": {"get": _op("This document", security=None)},
    "/api/v1/enroll": {
        "post": _op(
            "Enroll a device with an enrollment token and its P-256 public key",
            security=None,
            body=_ref("EnrollRequest"),
            ok=_json(_ref("EnrollResponse"), "Enrolled"),
            ok_code="201",
        )
    },
    "/api/v1/devices/{device_id}/checkin": {
        "post": _op(
            "Report state; receive assignments and the poll interval",
            security=DEVICE_SEC,
            body=_ref("CheckinRequest"),
            ok=_json(_ref("CheckinResponse")),
            params=[DEVICE_ID],
        )
    },
    "/api/v1/devices/{device_id}/events": {
        "post": _op(
            "Send a batch of events (idempotent by event id)",
            security=DEVICE_SEC,
            body={
                "type": "object",
                "properties": {"events": {"type": "array", "items": _ref("Event")}},
            },
            ok=_json(
                {
                    "type": "object",
                    "properties": {
                        "accepted": {"type": "integer"},
                        "duplicates": {"type": "integer"},
                    },
                }
            ),
            params=[DEVICE_ID],
        ),
        "get": _op(
            "A device's events, newest first (operator)",
            security=OPERATOR_SEC,
            params=[
                DEVICE_ID,
                *PAGE,
                {"name": "type", "in": "query", "schema": {"type": "string"}},
            ],
            role="viewer",
        ),
    },
    "/api/v1/devices/{device_id}/rollouts/{rollout_id}": {
        "get": _op(
            "Status of a rollout, asked by a device before committing a trial",
            security=DEVICE_SEC,
            params=[DEVICE_ID, ROLLOUT_ID],
            ok=_json(
                {
                    "type": "object",
                    "properties": {
                        "rollout_id": {"type": "string"},
                        "status": {"enum": ["running", "paused", "aborted", "completed"]},
                    },
                }
            ),
        )
    },
    "/api/v1/devices": {
        "get": _op(
            "List devices (filters: status, tag, model, version)",
            security=OPERATOR_SEC,
            params=[
                *PAGE,
                {"name": "status", "in": "query", "schema": {"enum": ["enabled", "disabled"]}},
                {"name": "tag", "in": "query", "schema": {"type": "string"}},
                {"name": "model", "in": "query", "schema": {"type": "string"}},
                {"name": "version", "in": "query", "schema": {"type": "string"}},
            ],
            role="viewer",
        )
    },
    "/api/v1/devices/{device_id}": {
        "get": _op("One device", security=OPERATOR_SEC, params=[DEVICE_ID], role="viewer"),
        "patch": _op(
            "Tag, enable or disable a device",
            security=OPERATOR_SEC,
            params=[DEVICE_ID],
            body={
                "type": "object",
                "properties": {
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "add_tags": {"type": "array", "items": {"type": "string"}},
                    "remove_tags": {"type": "array", "items": {"type": "string"}},
                    "status": {"enum": ["enabled", "disabled"]},
                },
            },
            role="release",
        ),
        "delete": _op(
            "Delete a device and its events",
            security=OPERATOR_SEC,
            params=[DEVICE_ID],
            ok={"description": "Deleted"},
            ok_code="204",
            role="admin",
        ),
    },
    "/api/v1/enrollment-tokens": {
        "post": _op(
            "Create an enrollment token (single-use, or fleet with max_uses and expiry)",
            security=OPERATOR_SEC,
            body={
                "type": "object",
                "properties": {
                    "max_uses": {"type": "integer", "minimum": 1},
                    "expires_in_s": {"type": "integer", "minimum": 1},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "note": {"type": "string"},
                },
            },
            ok=_json(_ref("EnrollmentToken"), "Created; 'token' is shown only once"),
            ok_code="201",
            role="admin",
        ),
        "get": _op("List enrollment tokens", security=OPERATOR_SEC, role="admin"),
    },
    "/api/v1/enrollment-tokens/{token_id}": {
        "delete": _op(
            "Revoke an enrollment token",
            security=OPERATOR_SEC,
            params=[TOKEN_ID],
            ok={"description": "Revoked"},
            ok_code="204",
            role="admin",
        )
    },
    "/api/v1/releases": {
        "get": _op(
            "Current unrevoked releases in the TUF repository", security=OPERATOR_SEC, role="viewer"
        )
    },
    "/api/v1/whoami": {"get": _op("The calling operator", security=OPERATOR_SEC, role="viewer")},
}


def build_spec(extra_paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    paths = {k: dict(v) for k, v in CORE_PATHS.items()}
    for path, ops in extra_paths.items():
        paths.setdefault(path, {}).update(ops)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgepkg update server",
            "version": "1",
            "description": (
                "Device API (signed requests, see X-Edgepkg-* headers) and operator API "
                "(bearer tokens, roles viewer < release < admin). Errors are JSON: "
                '{"error": {"code", "message"}}. TUF files: /tuf/metadata/*, /tuf/targets/*.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer"},
                "deviceSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Edgepkg-Signature",
                    "description": (
                        "base64 DER ECDSA-P256-SHA256 over 'EDGEPKG-DEVICE-V1\\n' METHOD '\\n' "
                        "path_with_query '\\n' timestamp '\\n' nonce '\\n' sha256_hex(body), "
                        "with X-Edgepkg-Device, X-Edgepkg-Timestamp, X-Edgepkg-Nonce"
                    ),
                },
            },
        },
    }


@bp.get("/api/openapi.json")
def openapi_json() -> ResponseReturnValue:
    return jsonify(build_spec(services().openapi_paths))
