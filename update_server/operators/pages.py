"""Dashboard pages for users and tokens (admin) and for one's own password (any user).

``/dashboard/users``: users (create, disable/enable, reset password) and API tokens (create:
the secret is shown once on the next page; revoke). ``/dashboard/account``: change your own
password. Added to the dashboard blueprint (its login redirect, CSRF and templates). Every
change is audited.
"""

from __future__ import annotations

import datetime as dt

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from update_server.audit.web import record_request
from update_server.dashboard.views import _ctx, bp
from update_server.db import get_session, utcnow
from update_server.errors import BadRequestError, Error
from update_server.operators import accounts
from update_server.operators.auth import (
    create_operator_token,
    create_user,
    current_operator,
    require_operator,
)
from update_server.operators.models import ROLES


def _who(db: Session) -> str | None:
    op = current_operator()
    return accounts.principal(db, op) if op is not None else None


_EXPIRY_DAYS = {"": None, "7": 7, "30": 30, "90": 90, "365": 365}


def _users_page(new_token: str | None = None) -> str:
    db = get_session()
    now = utcnow()
    return render_template(
        "dashboard/users.html",
        **_ctx(users=accounts.list_users(db),
               tokens=[accounts.token_json(t, now) for t in accounts.list_tokens(db)],
               roles=ROLES, new_token=new_token),
    )


@bp.get("/users")
@require_operator("admin")
def users() -> ResponseReturnValue:
    return _users_page()


@bp.post("/users")
@require_operator("admin")
def users_action() -> ResponseReturnValue:
    """One form endpoint: ``op`` says which change (keeps the page's forms simple)."""
    db = get_session()
    form = request.form
    op = current_operator()
    action = form.get("op", "")
    name = form.get("username", "").strip()
    new_token = None
    try:
        if action == "create_user":
            u = create_user(db, username=name, password=form.get("password", ""),
                            role=form.get("role", ""))
            record_request("user.create", u.username, {"role": u.role})
            msg = f"User {u.username} created."
        elif action in ("disable", "enable"):
            accounts.set_disabled(db, name, action == "disable", by=_who(db))
            record_request(f"user.{action}", name, {})
            msg = f"User {name}: {action}d."
        elif action == "reset_password":
            accounts.reset_password(db, name, form.get("password", ""))
            record_request("user.password_reset", name, {})
            msg = f"Password of {name} reset; their sessions ended."
        elif action == "create_token":
            days = _EXPIRY_DAYS.get(form.get("expires_days", ""), -1)
            if days == -1:
                raise BadRequestError("pick an expiry from the list")
            expires = utcnow() + dt.timedelta(days=days) if days else None
            row, new_token = create_operator_token(
                db, name=form.get("name", "").strip()[:100] or "unnamed",
                role=form.get("role", ""), expires_at=expires)
            assert op is not None
            row.created_by = accounts.principal(db, op)
            record_request("token.create", row.id, {"name": row.name, "role": row.role})
            msg = f"Token {row.name} created: copy it now, it is not shown again."
        elif action == "revoke_token":
            row = accounts.revoke_token(db, form.get("token_id", ""))
            record_request("token.revoke", row.id, {"name": row.name})
            msg = f"Token {row.name} revoked."
        else:
            raise BadRequestError(f"unknown action {action[:40]!r}")
        db.commit()
        flash(msg, "ok")
    except Error as exc:
        db.rollback()
        flash(exc.message, "error")
        new_token = None
    if new_token is not None:
        return _users_page(new_token)  # rendered, not redirected: the secret is in no URL
    return redirect(url_for("dashboard.users"))


@bp.route("/account", methods=["GET", "POST"])
@require_operator("viewer")
def account() -> ResponseReturnValue:
    op = current_operator()
    assert op is not None
    if request.method == "POST":
        db = get_session()
        try:
            if op.kind != "user":
                raise BadRequestError("you signed in with a token: it has no password")
            accounts.change_password(db, op.name, request.form.get("current_password", ""),
                                     request.form.get("new_password", ""))
            record_request("user.password_change", op.name, {})
            db.commit()
            flash("Password changed.", "ok")
        except Error as exc:
            db.rollback()
            flash(exc.message, "error")
        return redirect(url_for("dashboard.account"))
    return render_template("dashboard/account.html", **_ctx())
