"""Console pages (issue 14): device bulk actions and edits, dynamic groups, releases, and
creating a rollout from a release.

A separate blueprint under ``/dashboard`` beside :mod:`.views` (same templates, same login).
Every form POST carries the flask-wtf CSRF token; changes need the ``release`` role. The
rollout form calls the API's own spec parser, so its error messages are the API's.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from update_server import _validate as v
from update_server.dashboard import console_data as cd
from update_server.db import get_session
from update_server.devices.inventory import bulk_apply
from update_server.devices.models import Device
from update_server.errors import Error
from update_server.groups import service as gs
from update_server.operators.api import DEVICE_NAME_RE
from update_server.operators.auth import current_operator, require_operator
from update_server.rollouts import service as svc
from update_server.services import services
from update_server.tuf.releases import revoked_releases

bp = Blueprint("console", __name__, url_prefix="/dashboard", template_folder="templates")

DEFAULT_STAGES = "5:3600, 25:3600, 100:0"


def _ctx(**kw: Any) -> dict[str, Any]:
    op = current_operator()
    kw.setdefault("operator", op)
    kw.setdefault("can_release", bool(op and op.can("release")))
    kw.setdefault("now", services().now())
    return kw


def _actor() -> str | None:
    op = current_operator()
    return op.name if op else None


def _back(default: str) -> ResponseReturnValue:
    target = request.form.get("next") or ""
    if target.startswith("/dashboard/") and "//" not in target and "\\" not in target:
        return redirect(target)
    return redirect(default)


@bp.app_template_filter("pretty")
def _pretty(value: Any) -> str:
    return cd.pretty(value)


@bp.app_template_filter("ms")
def _ms(value: Any) -> str:
    """A latency for people: "12.5 ms", or "— ms" when the device did not say."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1f} ms"
    return "— ms"


@bp.app_template_filter("size")
def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "—"
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# --- devices -----------------------------------------------------------------------------------


@bp.post("/devices/bulk")
@require_operator("release")
def devices_bulk() -> ResponseReturnValue:
    db = get_session()
    ids = [i for i in request.form.getlist("device_id") if 0 < len(i) <= 64][:10_000]
    action = request.form.get("action", "")
    tag = (request.form.get("tag") or "").strip() or None
    if not ids:
        flash("Select at least one device.", "error")
        return _back(url_for("dashboard.devices"))
    try:
        if tag is not None:
            tag = v.get_tags({"tags": [tag]}, "tags", required=True)[0]
        result = bulk_apply(db, action, ids, tag)
        db.commit()
        what = f"{action} {tag}" if tag else action
        flash(f"{what}: {len(result['changed'])} of {len(ids)} devices changed.", "ok")
    except Error as exc:
        db.rollback()
        flash(exc.message, "error")
    return _back(url_for("dashboard.devices"))


@bp.post("/devices/<device_id>/edit")
@require_operator("release")
def device_edit(device_id: str) -> ResponseReturnValue:
    db = get_session()
    d = db.get(Device, device_id) if len(device_id) <= 64 else None
    if d is None:
        abort(404)
    name = (request.form.get("name") or "").strip() or None
    notes = (request.form.get("notes") or "").strip()[:4000] or None
    back = url_for("dashboard.device", device_id=d.id)
    if name is not None and not DEVICE_NAME_RE.match(name):
        flash("A name is 1-100 letters, digits, '_', '.', '-'.", "error")
        return redirect(back)
    other = db.query(Device.id).filter(Device.name == name, Device.id != d.id).first()
    if name is not None and other is not None:
        flash(f"Device {other[0][:16]} is already named {name!r}.", "error")
        return redirect(back)
    d.name, d.notes = name, notes
    db.commit()
    flash("Saved.", "ok")
    return redirect(back)


# --- groups ------------------------------------------------------------------------------------


@bp.get("/groups")
@require_operator("viewer")
def groups() -> ResponseReturnValue:
    db = get_session()
    rows = []
    for g in gs.list_groups(db):
        node = gs.group_node(db, g.name)
        rows.append((g, len(gs.matching_ids(db, node)) if node is not None else 0))
    return render_template("dashboard/groups.html", **_ctx(groups=rows, form={}))


@bp.get("/groups/preview")
@require_operator("viewer")
def group_preview() -> ResponseReturnValue:
    """The live preview of the group form (JSON; GET so it needs no CSRF and changes nothing)."""
    try:
        return jsonify(gs.preview(get_session(), request.args.get("selector", "")))
    except Error as exc:
        return jsonify(error=exc.message), 400


@bp.post("/groups")
@require_operator("release")
def group_create() -> ResponseReturnValue:
    db = get_session()
    form = {k: (request.form.get(k) or "").strip() for k in ("name", "selector", "description")}
    try:
        gs.save_group(db, form["name"], form["selector"], description=form["description"] or None,
                      actor=_actor(), now=services().now())
        db.commit()
    except Error as exc:
        db.rollback()
        flash(exc.message, "error")
        rows = [(g, None) for g in gs.list_groups(db)]
        return render_template("dashboard/groups.html", **_ctx(groups=rows, form=form)), 400
    flash(f"Group {form['name']} saved.", "ok")
    return redirect(url_for("console.groups"))


@bp.post("/groups/<name>/delete")
@require_operator("release")
def group_delete(name: str) -> ResponseReturnValue:
    db = get_session()
    try:
        db.delete(gs.get_group(db, name))
        db.commit()
        flash(f"Group {name} deleted.", "ok")
    except Error as exc:
        flash(exc.message, "error")
    return redirect(url_for("console.groups"))


# --- releases ----------------------------------------------------------------------------------


def _revoked() -> list[dict[str, Any]]:
    return revoked_releases(services().config.repo_dir)


@bp.get("/releases")
@require_operator("viewer")
def releases() -> ResponseReturnValue:
    models = cd.models_summary(services().current_releases(), get_session())
    return render_template("dashboard/releases.html", **_ctx(models=models))


def _release_page(model: str, form: dict[str, Any], status: int = 200) -> ResponseReturnValue:
    db = get_session()
    rels = cd.model_releases(services().current_releases(), model, _revoked())
    if not rels:
        abort(404)
    page = render_template(
        "dashboard/release.html",
        **_ctx(model=model, releases=rels, distribution=cd.version_distribution(db, model),
               groups=gs.list_groups(db), form=form, default_stages=DEFAULT_STAGES),
    )
    return page, status


@bp.get("/releases/<model>")
@require_operator("viewer")
def release(model: str) -> ResponseReturnValue:
    return _release_page(model[:200], {"version": request.args.get("version", "")})


def stages_from_text(text: str) -> list[dict[str, Any]]:
    """``"5:3600, 25:3600, 100:0"`` -> stage objects; numbers stay text when they do not parse,
    so the spec parser (the API's) reports the problem in its own words."""
    out: list[dict[str, Any]] = []
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        pct, _, soak = part.partition(":")
        out.append({"percent": _number(pct), "min_soak_seconds": _number(soak or "0")})
    return out


def _number(text: str) -> Any:
    text = text.strip().removesuffix("%").strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def rollout_body(form: dict[str, str]) -> dict[str, Any]:
    """The API body (``POST /api/v1/rollouts``) the release page's form describes."""
    body: dict[str, Any] = {"model": form["model"], "version": form.get("version", "")}
    if form.get("stages", "").strip():
        body["stages"] = stages_from_text(form["stages"])
    for key in ("success_share", "failure_share"):
        if form.get(key, "").strip():
            body[key] = _number(form[key])
    if form.get("min_devices", "").strip():
        body["min_devices"] = _number(form["min_devices"])
    if form.get("on_failure"):
        body["on_failure"] = form["on_failure"]
    if form.get("group"):
        body["group"] = form["group"]
    tags = [t.strip() for t in form.get("tags", "").split(",") if t.strip()]
    if tags:
        body["selector"] = {"tags": tags}
    # Schedule fields (start time, maintenance window) belong to the schedules work: the form
    # leaves a fieldset for them and they will be added to this body here.
    return body


@bp.post("/releases/<model>/rollout")
@require_operator("release")
def release_rollout(model: str) -> ResponseReturnValue:
    db = get_session()
    keys = ("version", "stages", "success_share", "failure_share", "min_devices", "on_failure",
            "group", "tags")
    form = {k: (request.form.get(k) or "").strip()[:2000] for k in keys}
    form["model"] = model[:200]
    try:
        r = svc.create_rollout(db, rollout_body(form), releases=services().current_releases(),
                               now=services().now(), created_by=_actor())
        db.commit()
    except Error as exc:
        db.rollback()
        flash(f"Rollout not created: {exc.message}", "error")
        return _release_page(model[:200], form, 400)
    flash(f"Rollout {r.id} created for {r.model} {r.version}.", "ok")
    return redirect(url_for("dashboard.rollout", rollout_id=r.id))
