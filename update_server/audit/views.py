"""Dashboard pages of the audit log: ``/dashboard/audit`` (filters: actor, action, time range)
and its export links (``/dashboard/audit/export?format=jsonl|csv``). Admins only.

The routes are added to the dashboard blueprint (so they share its login redirect, CSRF and
templates); importing this module before the app registers the blueprint is enough.
"""

from __future__ import annotations

from flask import render_template, request
from flask.typing import ResponseReturnValue

from edgepkg.errors import ProtocolError
from update_server.audit import service as audit
from update_server.audit.api import export_response, filters_from
from update_server.dashboard.views import _ctx, bp
from update_server.db import get_session
from update_server.errors import Error
from update_server.operators.auth import require_operator

PAGE = 200


@bp.get("/audit")
@require_operator("admin")
def audit_log() -> ResponseReturnValue:
    error = None
    try:
        f = filters_from(request)
    except (Error, ProtocolError) as exc:
        error, f = str(getattr(exc, "message", exc)), audit.Filters()
    rows = audit.query(get_session(), f, limit=PAGE)
    query = {k: request.args.get(k, "") for k in ("actor", "action", "since", "until")}
    return render_template("dashboard/audit.html",
                           **_ctx(entries=rows, q=query, error=error, page=PAGE))


@bp.get("/audit/export")
@require_operator("admin")
def audit_export() -> ResponseReturnValue:
    return export_response(filters_from(request), request.args.get("format", "jsonl"))
