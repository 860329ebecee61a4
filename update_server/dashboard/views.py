"""Server-rendered operator dashboard (Jinja, behind the operator login).

Pages: fleet overview, rollouts (stage, progress, failures, pause reason, pause/resume/abort
buttons), one rollout, devices, one device (event history), alerts, field telemetry (fleet and
one cohort). Chart pages carry no data: the static ``charts.js`` fetches the series from
:mod:`update_server.dashboard.charts_api` (same origin: the CSP stays ``script-src 'self'``)
and draws them with the vendored uPlot. State-changing forms carry
the flask-wtf CSRF token; buttons need the ``release`` role. No external assets.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from update_server.alerts.api import SILENT_INTERVALS
from update_server.alerts.service import fleet_alerts
from update_server.audit.web import record_request
from update_server.dashboard import charts_api, console_data as cd
from update_server.dashboard.console_data import device_rollouts
from update_server.db import get_session
from update_server.devices.inventory import DeviceFilter, find_devices
from update_server.devices.models import Device, DeviceModel, Event
from update_server.errors import BadRequestError, Error
from update_server.operators.auth import current_operator, require_operator
from update_server.rollouts import service as svc
from update_server.rollouts.models import Rollout
from update_server.services import services

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

PAGE = 200


def now_() -> dt.datetime:
    return services().now()


def poll_interval() -> int:
    return services().config.poll_interval


def _ctx(**kw: Any) -> dict[str, Any]:
    op = current_operator()
    kw.setdefault("operator", op)
    kw.setdefault("can_release", bool(op and op.can("release")))
    kw.setdefault("now", now_())
    return kw


def _online_after(now: dt.datetime) -> dt.datetime:
    return now - dt.timedelta(seconds=poll_interval() * SILENT_INTERVALS)


@bp.app_template_filter("ago")
def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    s = int((now_() - value).total_seconds())
    if s < 0:
        return "just now"
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s // n} {unit} ago"
    return f"{s} s ago"


def _with_progress(db: Session, row: Rollout) -> dict[str, Any]:
    """The rollout's JSON plus its progress against its whole population (the bar)."""
    r = svc.rollout_json(db, row)
    r["progress"] = cd.progress(r, cd.population(db, row))
    return r


@bp.get("/")
@require_operator("viewer")
def index() -> ResponseReturnValue:
    db = get_session()
    now = now_()
    after = _online_after(now)
    total = db.scalar(select(func.count()).select_from(Device)) or 0
    disabled = db.scalar(select(func.count()).where(Device.status != "enabled")) or 0
    online = (
        db.scalar(select(func.count()).where(Device.status == "enabled", Device.last_seen >= after))
        or 0
    )
    versions = db.execute(
        select(DeviceModel.model, DeviceModel.version, func.count())
        .group_by(DeviceModel.model, DeviceModel.version)
        .order_by(DeviceModel.model, DeviceModel.version)
    ).all()
    rollouts = [_with_progress(db, r) for r in svc.list_rollouts(db, limit=20)]
    alerts = fleet_alerts(db, now, poll_interval_s=poll_interval())
    return render_template(
        "dashboard/overview.html",
        **_ctx(
            total=total,
            online=online,
            offline=total - online - disabled,
            disabled=disabled,
            versions=versions,
            rollouts=[r for r in rollouts if r["status"] in ("running", "paused")],
            alert_count=len(alerts),
            alerts=alerts[:5],
        ),
    )


@bp.get("/rollouts")
@require_operator("viewer")
def rollouts() -> ResponseReturnValue:
    db = get_session()
    items = [_with_progress(db, r) for r in svc.list_rollouts(db)]
    return render_template("dashboard/rollouts.html", **_ctx(rollouts=items))


@bp.get("/rollouts/<rollout_id>")
@require_operator("viewer")
def rollout(rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    row = svc.get_rollout(db, rollout_id)
    r = _with_progress(db, row)
    return render_template(
        "dashboard/rollout.html", **_ctx(r=r, devices=cd.rollout_devices(db, row))
    )


@bp.post("/rollouts/<rollout_id>/<action>")
@require_operator("release")
def rollout_action(rollout_id: str, action: str) -> ResponseReturnValue:
    if action not in ("pause", "resume", "abort"):
        abort(404)
    db = get_session()
    op = current_operator()
    reason = (request.form.get("reason") or "").strip()[:500] or None
    try:
        svc.operator_action(
            db, rollout_id, action, now=now_(), actor=op.name if op else None, reason=reason
        )
        record_request(f"rollout.{action}", rollout_id, {"reason": reason} if reason else {})
        db.commit()
        flash(f"Rollout {rollout_id}: {action} done.", "ok")
    except Error as exc:
        db.rollback()
        flash(f"Rollout {rollout_id}: {exc.message}", "error")
    target = request.form.get("next") or ""
    if target.startswith("/dashboard/") and "//" not in target and "\\" not in target:
        return redirect(target)
    return redirect(url_for("dashboard.rollouts"))


@bp.get("/devices")
@require_operator("viewer")
def devices() -> ResponseReturnValue:
    db = get_session()
    after = _online_after(now_())
    try:
        f = DeviceFilter.from_args(request.args)
        rows = find_devices(db, f, online_after=after, limit=5000)
        error = None
    except Error as exc:  # a bad filter is a message on the page, not an error page
        f, rows, error = DeviceFilter(), [], exc.message
    return render_template(
        "dashboard/devices.html",
        **_ctx(
            devices=rows[:PAGE],
            shown=min(len(rows), PAGE),
            matched=len(rows),
            f=f,
            tag=f.tag,
            filter_error=error,
            online_after=after,
        ),
    )


@bp.get("/devices/<device_id>")
@require_operator("viewer")
def device(device_id: str) -> ResponseReturnValue:
    db = get_session()
    d = db.get(Device, device_id) if len(device_id) <= 64 else None
    if d is None:
        abort(404)
    events = list(
        db.scalars(
            select(Event).where(Event.device_id == d.id).order_by(Event.seq.desc()).limit(PAGE)
        )
    )
    return render_template(
        "dashboard/device.html",
        **_ctx(
            d=d,
            events=events,
            online=bool(d.last_seen and d.last_seen >= _online_after(now_())),
            rollouts=device_rollouts(db, d.id),
        ),
    )


@bp.get("/alerts")
@require_operator("viewer")
def alerts() -> ResponseReturnValue:
    db = get_session()
    items = fleet_alerts(db, now_(), poll_interval_s=poll_interval())
    return render_template("dashboard/alerts.html", **_ctx(alerts=items))


@bp.get("/telemetry/")
@require_operator("viewer")
def telemetry() -> ResponseReturnValue:
    return render_template("dashboard/telemetry.html", **_ctx())


@bp.get("/telemetry/cohort")
@require_operator("viewer")
def telemetry_cohort() -> ResponseReturnValue:
    model, version = request.args.get("model"), request.args.get("version")
    if not model or not version:
        raise BadRequestError("model and version are required", code="bad_query")
    return render_template("dashboard/cohort.html", **_ctx(
        model=model, version=version, tag=request.args.get("tag") or "*"))


# The chart script reads the same series as the bearer-token API, through the dashboard's
# session (``/api/`` paths accept no cookies, by design): same views, same viewer role.
for _name in ("fleet", "cohort", "device", "rollout"):
    _rule = charts_api.RULES[_name].replace("/api/v1/charts", "/series")
    bp.add_url_rule(_rule, f"series_{_name}", getattr(charts_api, _name))
