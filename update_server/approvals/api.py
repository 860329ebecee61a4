"""``POST /api/v1/rollouts/<id>/approve`` (release role, not the rollout's creator) and the
dashboard's Approve button (``POST /dashboard/rollouts/<id>/approve``, CSRF-checked).

:func:`on_create` is what the rollout-creating views call: it decides whether the new rollout
waits for approval and records who asked.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from update_server.approvals import service as approvals
from update_server.audit.web import record_request
from update_server.dashboard.views import bp as dashboard_bp
from update_server.db import get_session
from update_server.errors import Error
from update_server.operators.accounts import principal
from update_server.operators.auth import Operator, current_operator, require_operator
from update_server.rollouts import service as rollouts
from update_server.rollouts.models import Rollout
from update_server.services import services

bp = Blueprint("approvals_api", __name__, url_prefix="/api/v1")


def needs_approval(model: str) -> bool:
    return approvals.required_for(model, services().config.approval_required)


def on_create(session: Session, r: Rollout, op: Operator | None) -> None:
    """After creating ``r`` awaiting approval: remember who asked (the approver must differ)."""
    if r.status == "awaiting_approval":
        who = principal(session, op) if op is not None else "anonymous"
        approvals.request_approval(session, r, who, services().now())


def _approve(rollout_id: str) -> Rollout:
    op = current_operator()
    assert op is not None  # require_operator ran
    db = get_session()
    who = principal(db, op)
    r = approvals.approve(db, rollout_id, who, services().now())
    record_request("rollout.approve", rollout_id, {"approver": who, "model": r.model,
                                                   "version": r.version})
    return r


@bp.post("/rollouts/<rollout_id>/approve")
@require_operator("release")
def approve_rollout(rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    r = _approve(rollout_id)
    out = rollouts.rollout_json(db, r)
    db.commit()
    return jsonify(out)


@dashboard_bp.post("/rollouts/<rollout_id>/approve")
@require_operator("release")
def approve_rollout_page(rollout_id: str) -> ResponseReturnValue:
    db = get_session()
    try:
        _approve(rollout_id)
        db.commit()
        flash(f"Rollout {rollout_id} approved and started.", "ok")
    except Error as exc:
        db.rollback()
        flash(f"Rollout {rollout_id}: {exc.message}", "error")
    return redirect(url_for("dashboard.rollout", rollout_id=rollout_id))


_ERR: dict[str, Any] = {
    "description": 'JSON error {"error": {"code", "message"}}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/rollouts/{rollout_id}/approve": {
        "post": {
            "summary": "Approve (and so start) a rollout awaiting approval; not by its creator",
            "security": [{"operatorToken": []}],
            "x-required-role": "release",
            "parameters": [{"name": "rollout_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "the started rollout",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": _ERR, "403": _ERR, "404": _ERR, "409": _ERR,
            },
        }
    }
}
