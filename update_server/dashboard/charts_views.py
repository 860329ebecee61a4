"""Dashboard pages with charts of the field telemetry: the fleet (one line per cohort), one
cohort (model × version × tag) with its devices. The device and rollout pages include the same
chart panel (``dashboard/_charts.html``). Pages carry no data: the static ``charts.js`` fetches
the series from :mod:`update_server.dashboard.charts_api` (same origin, so the CSP stays
``script-src 'self'`` and ``connect-src 'self'``) and draws them with the vendored uPlot.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request
from flask.typing import ResponseReturnValue

from update_server.dashboard.views import _ctx
from update_server.errors import BadRequestError
from update_server.operators.auth import require_operator

bp = Blueprint("dashboard_charts", __name__, url_prefix="/dashboard/telemetry")


@bp.get("/")
@require_operator("viewer")
def fleet() -> ResponseReturnValue:
    return render_template("dashboard/telemetry.html", **_ctx())


@bp.get("/cohort")
@require_operator("viewer")
def cohort() -> ResponseReturnValue:
    model, version = request.args.get("model"), request.args.get("version")
    if not model or not version:
        raise BadRequestError("model and version are required", code="bad_query")
    return render_template("dashboard/cohort.html", **_ctx(
        model=model, version=version, tag=request.args.get("tag") or "*"))
