"""Operator authentication and authorisation (deny by default).

* API (``/api/...``): ``Authorization: Bearer <token>`` only. Tokens are random, shown once,
  stored as SHA-256. Cookies are never accepted there, so the API needs no CSRF token.
* HTML pages (dashboard): a session cookie set by ``/login`` (an operator token, or a username
  and password). Every state-changing HTML request is CSRF-checked (flask-wtf).
* Roles, weakest first: ``viewer`` < ``release`` < ``admin``; :func:`require_operator` checks
  "at least".

For other blueprints (dashboard, rollouts API)::

    from update_server.operators.auth import require_operator, current_operator
    @bp.post("/rollouts/<rid>/pause")
    @require_operator("release")
    def pause(rid): op = current_operator(); ...
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response

from update_server.audit import service as audit
from update_server.db import get_session, utcnow
from update_server.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    TooManyRequestsError,
    UnauthorizedError,
)
from update_server.operators import throttle
from update_server.operators.models import (
    ROLES,
    EnrollmentToken,
    OperatorSession,
    OperatorToken,
    User,
)
from update_server.services import services

F = TypeVar("F", bound=Callable[..., Any])

OPERATOR_TOKEN_PREFIX = "epo_"
ENROLLMENT_TOKEN_PREFIX = "epe_"
_SESSION_KEY = "edgepkg_operator"
SESSION_LIFETIME = dt.timedelta(hours=12)


@dataclasses.dataclass(frozen=True)
class Operator:
    """Who is calling: ``kind`` is "token" or "user"."""

    kind: str
    id: str
    name: str
    role: str

    def can(self, role: str) -> bool:
        return role_at_least(self.role, role)


def role_at_least(have: str, need: str) -> bool:
    if need not in ROLES:
        raise ValueError(f"unknown role {need!r}")
    return have in ROLES and ROLES.index(have) >= ROLES.index(need)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequestError(f"role must be one of {', '.join(ROLES)}")
    return role


# --- creating credentials --------------------------------------------------------------------


def create_operator_token(
    db: Session, *, name: str, role: str, expires_at: dt.datetime | None = None
) -> tuple[OperatorToken, str]:
    """Create an operator token; return the row and the plaintext (shown once)."""
    _check_role(role)
    plaintext = OPERATOR_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = OperatorToken(
        id=secrets.token_hex(8),
        name=name,
        token_hash=hash_token(plaintext),
        role=role,
        expires_at=expires_at,
    )
    db.add(row)
    db.flush()
    return row, plaintext


def create_user(db: Session, *, username: str, password: str, role: str) -> User:
    _check_role(role)
    if not username or len(username) > 100:
        raise BadRequestError("username must be 1-100 characters")
    if len(password) < 12:
        raise BadRequestError("password must be at least 12 characters")
    # Checked first so a duplicate is a 409 / one-line CLI error, not a raw IntegrityError
    # (the unique index still guards a concurrent insert).
    if db.scalar(select(User.id).where(User.username == username)) is not None:
        raise ConflictError(
            f"user {username!r} already exists: pick another username", code="user_exists"
        )
    user = User(username=username, password_hash=generate_password_hash(password), role=role)
    db.add(user)
    db.flush()
    return user


def create_enrollment_token(
    db: Session,
    *,
    max_uses: int = 1,
    expires_at: dt.datetime | None = None,
    tags: Sequence[str] = (),
    note: str | None = None,
    created_by: str | None = None,
) -> tuple[EnrollmentToken, str]:
    """Single-use (``max_uses=1``) or fleet token with a quota; plaintext shown once."""
    if max_uses < 1:
        raise BadRequestError("max_uses must be at least 1")
    plaintext = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = EnrollmentToken(
        id=secrets.token_hex(8),
        token_hash=hash_token(plaintext),
        max_uses=max_uses,
        expires_at=expires_at,
        tags=list(tags),
        note=note,
        created_by=created_by,
    )
    db.add(row)
    db.flush()
    return row, plaintext


def consume_enrollment_token(db: Session, plaintext: str, now: dt.datetime) -> EnrollmentToken:
    """Use one enrollment of the token, atomically (no over-use under concurrency)."""
    token_hash = hash_token(plaintext)
    row = db.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == token_hash))
    if row is None or row.revoked:
        raise UnauthorizedError("enrollment token is not valid", code="bad_enrollment_token")
    if row.expires_at is not None and row.expires_at <= now:
        raise UnauthorizedError("enrollment token has expired", code="enrollment_token_expired")
    result = db.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.uses < EnrollmentToken.max_uses)
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise UnauthorizedError("enrollment token is used up", code="enrollment_token_used_up")
    db.refresh(row)
    return row


# --- authenticating --------------------------------------------------------------------------


def authenticate_bearer(db: Session, header: str, now: dt.datetime) -> Operator:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("Authorization must be 'Bearer <operator token>'")
    row = db.scalar(
        select(OperatorToken).where(OperatorToken.token_hash == hash_token(token.strip()))
    )
    if row is None or row.revoked:
        raise UnauthorizedError("operator token is not valid", code="bad_token")
    if row.expires_at is not None and row.expires_at <= now:
        raise UnauthorizedError("operator token has expired", code="token_expired")
    return Operator(kind="token", id=row.id, name=row.name, role=row.role)


def authenticate_password(db: Session, username: str, password: str) -> Operator:
    user = db.scalar(select(User).where(User.username == username))
    # Hash even for unknown users so timing does not reveal which usernames exist.
    stored = user.password_hash if user is not None else _DUMMY_HASH
    ok = check_password_hash(stored, password)
    if user is None or not ok or user.disabled:
        raise UnauthorizedError("wrong username or password", code="bad_login")
    return Operator(kind="user", id=str(user.id), name=user.username, role=user.role)


_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


def _session_operator(db: Session, now: dt.datetime) -> Operator | None:
    data = session.get(_SESSION_KEY)
    if not isinstance(data, dict):
        return None
    kind, ident, sid = data.get("kind"), data.get("id"), data.get("sid")
    # The signed cookie alone is not enough: its server-side session must still exist (logout
    # deletes it), so a copied cookie dies at logout.
    if not isinstance(sid, str) or len(sid) > 64:
        return None
    row_s = db.get(OperatorSession, sid)
    if (
        row_s is None
        or row_s.expires_at <= now
        or row_s.kind != kind
        or row_s.operator_id != str(ident)
    ):
        return None
    if kind == "token":
        row = db.get(OperatorToken, str(ident))
        if row is None or row.revoked or (row.expires_at is not None and row.expires_at <= now):
            return None
        return Operator(kind="token", id=row.id, name=row.name, role=row.role)
    if kind == "user":
        try:
            user = db.get(User, int(str(ident)))
        except ValueError:
            return None
        if user is None or user.disabled:
            return None
        return Operator(kind="user", id=str(user.id), name=user.username, role=user.role)
    return None


def is_api_request() -> bool:
    """API-style paths: bearer auth only, JSON errors, no CSRF (no cookies accepted)."""
    return request.path.startswith("/api/") or request.path == "/metrics"


def current_operator() -> Operator | None:
    """The authenticated operator of this request (bearer on /api, session cookie elsewhere)."""
    if "_edgepkg_operator" in g:
        return cast(Operator | None, g._edgepkg_operator)
    db = get_session()
    now = utcnow()
    header = request.headers.get("Authorization")
    op: Operator | None
    g._edgepkg_by_header = bool(header)
    if header:
        op = authenticate_bearer(db, header, now)
    elif is_api_request():
        op = None
    else:
        op = _session_operator(db, now)
    g._edgepkg_operator = op
    return op


def authenticated_by_header() -> bool:
    """Whether this request's operator came from a non-empty ``Authorization`` header (so no
    cookie vouched for it and CSRF cannot apply). False when a session cookie did, or nobody."""
    op = current_operator()
    return op is not None and bool(g.get("_edgepkg_by_header"))


def require_operator(role: str) -> Callable[[F], F]:
    """Decorator: the caller must be an operator with at least ``role`` (deny by default)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            op = current_operator()
            if op is None:
                if is_api_request():
                    raise UnauthorizedError("operator authentication required")
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not op.can(role):
                raise ForbiddenError(f"this needs the {role!r} role; you have {op.role!r}")
            return view(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def login_operator(db: Session, op: Operator, now: dt.datetime) -> None:
    """Start a dashboard session for ``op`` (call after checking credentials; caller commits).

    The cookie holds a random session id whose row the server checks on every request."""
    session.clear()
    sid = secrets.token_urlsafe(32)
    db.add(
        OperatorSession(
            id=sid, kind=op.kind, operator_id=op.id, created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    # Expired sessions of anyone are dropped here: logins are rare, so this bounds the table.
    db.execute(delete(OperatorSession).where(OperatorSession.expires_at <= now))
    session[_SESSION_KEY] = {"kind": op.kind, "id": op.id, "sid": sid}
    session.permanent = True
    g._edgepkg_operator = op


def logout_operator(db: Session) -> None:
    """End the session server-side too (caller commits): its cookie is worthless from now on."""
    data = session.get(_SESSION_KEY)
    sid = data.get("sid") if isinstance(data, dict) else None
    if isinstance(sid, str):
        db.execute(delete(OperatorSession).where(OperatorSession.id == sid))
    session.clear()
    g._edgepkg_operator = None


_UNSAFE_IN_NEXT = frozenset("\\\r\n\t\x00")


def safe_next(target: str | None) -> str:
    """``target`` if it is a same-origin relative path, else the start page.

    Browsers drop tab/CR/LF inside URLs (``/\t/evil.example`` becomes ``//evil.example``,
    a different host) and treat ``\\`` like ``/``, so any of those, any control character,
    a ``//`` start or a scheme/host in the parsed result means "not ours"."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return url_for("index")
    if any(c in _UNSAFE_IN_NEXT or ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return url_for("index")
    parsed = urlsplit(target)
    if parsed.scheme or parsed.netloc:
        return url_for("index")
    return target


_safe_next = safe_next  # the old private name


# --- login / logout pages --------------------------------------------------------------------

bp = Blueprint("auth", __name__)


def _policy() -> throttle.ThrottlePolicy:
    cfg = services().config
    return throttle.ThrottlePolicy(
        user_free_failures=cfg.login_user_free_failures,
        ip_free_failures=cfg.login_ip_free_failures,
        lockout_base_s=cfg.login_lockout_base_s,
        lockout_max_s=cfg.login_lockout_max_s,
        window_s=cfg.login_failure_window_s,
    )


def _now() -> dt.datetime:
    return services().now()


def _wants_html() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    error = None
    if request.method == "POST":
        db = get_session()
        now = _now()  # the app's clock (tests fix it); sessions and tokens use the wall clock
        token = request.form.get("token", "").strip()
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        keys = throttle.login_keys(request.remote_addr, None if token else username)
        try:
            throttle.check(db, keys, now)  # before any hashing: a locked key costs one SELECT
        except TooManyRequestsError as exc:
            if not _wants_html():
                raise
            page = render_template("login.html", error=exc.message)
            return Response(
                page, 429, {"Retry-After": str(exc.retry_after_s)}, mimetype="text/html"
            )
        try:
            if token:
                op = authenticate_bearer(db, "Bearer " + token, utcnow())
            elif username:
                op = authenticate_password(db, username, password)
            else:
                raise UnauthorizedError("enter an operator token or a username and password")
        except UnauthorizedError as exc:
            error = exc.message
            if token or username:
                throttle.record_failure(db, keys, now, _policy())
                # The name tried, never the password or token; a token try is just "token".
                audit.record(db, None, "login.failed", username[:100] if username else "token",
                             {"method": "token" if token else "password"},
                             request.remote_addr, now=now)
                db.commit()
        else:
            throttle.record_success(db, keys)
            login_operator(db, op, utcnow())  # wall clock, as current_operator checks it
            audit.record(db, op, "login", op.name, {"method": op.kind}, request.remote_addr,
                         now=now)
            db.commit()
            return redirect(safe_next(request.args.get("next")))
        return render_template("login.html", error=error), 401
    return render_template("login.html", error=error)


@bp.post("/logout")
def logout() -> Response:
    db = get_session()
    try:
        op = current_operator()
    except UnauthorizedError:  # a stale bearer header must not block signing out
        op = None
    logout_operator(db)
    if op is not None:
        audit.record(db, op, "logout", op.name, {}, request.remote_addr, now=_now())
    db.commit()
    return redirect(url_for("auth.login"))
