"""Audit log API (admin): ``GET /api/v1/audit`` (filters, newest first) and
``GET /api/v1/audit/export?format=jsonl|csv`` (oldest first, streamed).

The dashboard page (``/dashboard/audit``) lives in :mod:`update_server.audit.views`.
:data:`OPENAPI_PATHS` documents the routes for ``/api/openapi.json``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Request, Response, jsonify, request, stream_with_context
from flask.typing import ResponseReturnValue

from edgepkg.protocol import parse_time
from update_server import _validate as v
from update_server.audit import service as audit
from update_server.db import get_db, get_session
from update_server.errors import BadRequestError
from update_server.operators.auth import require_operator

bp = Blueprint("audit_api", __name__, url_prefix="/api/v1")

MAX_PAGE = 500


def filters_from(req: Request) -> audit.Filters:
    """``actor``, ``action`` (``rollout.`` = every rollout action), ``since``/``until`` (ISO)."""

    def text(name: str) -> str | None:
        raw = (req.args.get(name) or "").strip()
        if len(raw) > 200:
            raise BadRequestError(f"{name!r} is longer than 200 characters", field=name)
        return raw or None

    def when(name: str) -> dt.datetime | None:
        raw = text(name)
        return parse_time(raw, name) if raw else None

    return audit.Filters(actor=text("actor"), action=text("action"),
                         since=when("since"), until=when("until"))


def export_response(f: audit.Filters, fmt: str) -> Response:
    """Stream the export in its own session (a long export must not hold the request's)."""
    if fmt not in audit.EXPORT_FORMATS:
        raise BadRequestError(f"format must be one of {', '.join(audit.EXPORT_FORMATS)}",
                              field="format")
    database = get_db()

    def generate() -> Iterator[str]:
        with database.session() as s:
            yield from audit.export_lines(audit.iter_entries(s, f), fmt)

    mime = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(generate()), mimetype=mime, headers={
        "Content-Disposition": f'attachment; filename="edgepkg-audit.{fmt}"'})


@bp.get("/audit")
@require_operator("admin")
def list_audit() -> ResponseReturnValue:
    f = filters_from(request)
    limit = v.query_int(request, "limit", 100, minimum=1, maximum=MAX_PAGE)
    offset = v.query_int(request, "offset", 0, minimum=0)
    rows = audit.query(get_session(), f, limit=limit, offset=offset)
    return jsonify(entries=[audit.entry_dict(e) for e in rows])


@bp.get("/audit/export")
@require_operator("admin")
def export_audit() -> ResponseReturnValue:
    return export_response(filters_from(request), request.args.get("format", "jsonl"))


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_SEC: list[dict[str, list[str]]] = [{"operatorToken": []}]
_FILTERS: list[dict[str, Any]] = [
    {"name": "actor", "in": "query", "schema": {"type": "string"}},
    {"name": "action", "in": "query", "schema": {"type": "string"},
     "description": "an action, or a prefix ending in '.' (rollout.)"},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
]

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/audit": {
        "get": {
            "summary": "Audit log entries, newest first (who, when, from where, what)",
            "security": _SEC,
            "x-required-role": "admin",
            "parameters": [
                *_FILTERS,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 500}},
                {"name": "offset", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": {
                "200": {"description": "entries",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": _ERR, "401": _ERR, "403": _ERR,
            },
        }
    },
    "/api/v1/audit/export": {
        "get": {
            "summary": "Export the audit log (oldest first) as JSON Lines or CSV",
            "security": _SEC,
            "x-required-role": "admin",
            "parameters": [
                *_FILTERS,
                {"name": "format", "in": "query",
                 "schema": {"type": "string", "enum": list(audit.EXPORT_FORMATS)}},
            ],
            "responses": {
                "200": {"description": "the export",
                        "content": {"application/x-ndjson": {}, "text/csv": {}}},
                "400": _ERR, "401": _ERR, "403": _ERR,
            },
        }
    },
}
