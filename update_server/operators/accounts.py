"""Users and API tokens: list, disable/enable, role, password reset and change, token revoke.

Shared by the API (:mod:`.accounts_api`), the dashboard page and the CLI. Functions take the
caller's session and never commit. Disabling a user or revoking a token also deletes its
dashboard sessions, so it is signed out at once (the session check would refuse it anyway;
deleting the rows makes that visible and keeps the table honest).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from update_server.errors import BadRequestError, ForbiddenError, NotFoundError
from update_server.operators.auth import Operator
from update_server.operators.models import ROLES, OperatorSession, OperatorToken, User

MIN_PASSWORD = 12


def user_json(u: User) -> dict[str, Any]:
    return {"id": u.id, "username": u.username, "role": u.role, "disabled": u.disabled,
            "created_at": u.created_at.isoformat()}


def token_json(t: OperatorToken, now: dt.datetime) -> dict[str, Any]:
    expired = t.expires_at is not None and t.expires_at <= now
    return {
        "id": t.id, "name": t.name, "role": t.role, "created_by": t.created_by,
        "created_at": t.created_at.isoformat(),
        "expires_at": t.expires_at.isoformat() if t.expires_at else None,
        "revoked": t.revoked, "expired": expired,
        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
    }


def principal(session: Session, op: Operator) -> str:
    """The person behind ``op``: a user's name; for a token, the user who created it
    (``token:<name>`` for a token made by the CLI, which no user owns)."""
    if op.kind == "token":
        row = session.get(OperatorToken, op.id)
        if row is not None and row.created_by:
            return row.created_by
        return f"token:{op.name}"
    return op.name


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username[:100]))
    if user is None:
        raise NotFoundError(f"no user {username[:100]!r}", code="no_such_user")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _end_sessions(session: Session, kind: str, operator_id: str) -> None:
    session.execute(delete(OperatorSession).where(
        OperatorSession.kind == kind, OperatorSession.operator_id == operator_id))


def set_disabled(session: Session, username: str, disabled: bool, *, by: str | None) -> User:
    """Disable (revoke) or re-enable a user; an admin cannot disable themselves (lock-out)."""
    user = get_user(session, username)
    if disabled and by == user.username:
        raise ForbiddenError("you cannot disable your own account; ask another admin",
                             code="self_disable")
    user.disabled = disabled
    if disabled:
        _end_sessions(session, "user", str(user.id))
    session.flush()
    return user


def set_role(session: Session, username: str, role: str) -> User:
    if role not in ROLES:
        raise BadRequestError(f"role must be one of {', '.join(ROLES)}", field="role")
    user = get_user(session, username)
    user.role = role
    session.flush()
    return user


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadRequestError(f"password must be at least {MIN_PASSWORD} characters",
                              field="password")
    if len(password) > 1024:
        raise BadRequestError("password must be at most 1024 characters", field="password")


def reset_password(session: Session, username: str, password: str) -> User:
    """Admin reset: new password, and the user's open sessions end."""
    _check_password(password)
    user = get_user(session, username)
    user.password_hash = generate_password_hash(password)
    _end_sessions(session, "user", str(user.id))
    session.flush()
    return user


def change_password(session: Session, username: str, current: str, new: str) -> User:
    """Self-service: the current password must be right (403 otherwise)."""
    user = get_user(session, username)
    if not check_password_hash(user.password_hash, current):
        raise ForbiddenError("the current password is wrong", code="wrong_password")
    _check_password(new)
    if current == new:
        raise BadRequestError("the new password must differ from the current one",
                              field="new_password")
    user.password_hash = generate_password_hash(new)
    session.flush()
    return user


def list_tokens(session: Session) -> list[OperatorToken]:
    return list(session.scalars(select(OperatorToken).order_by(OperatorToken.created_at)))


def revoke_token(session: Session, token_id: str) -> OperatorToken:
    row = session.get(OperatorToken, token_id[:32])
    if row is None:
        raise NotFoundError(f"no operator token {token_id[:32]!r}", code="no_such_token")
    row.revoked = True
    _end_sessions(session, "token", row.id)
    session.flush()
    return row
