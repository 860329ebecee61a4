"""Operator tables: dashboard users, API tokens, device enrollment tokens.

Secrets (operator and enrollment tokens, passwords) are stored only as hashes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow

ROLES = ("viewer", "release", "admin")
"""Operator roles, weakest first: a role may do everything the roles before it may."""


class EnrollmentToken(Base):
    """A token that lets devices enroll: single-use (max_uses=1) or a fleet token with quota."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    tags: Mapped[list[str]] = mapped_column(default=list)
    note: Mapped[str | None] = mapped_column(String(200), default=None)
    created_by: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(default=False)


class OperatorToken(Base):
    """An API bearer token for an operator or automation; only its SHA-256 is stored."""

    __tablename__ = "operator_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    revoked: Mapped[bool] = mapped_column(default=False)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # issue 14: the user who created the token (None: the CLI). Four-eyes approvals count a
    # token as this user, so nobody approves their own rollout with a second token.
    created_by: Mapped[str | None] = mapped_column(String(100), default=None)


class User(Base):
    """A dashboard user (username + scrypt password hash) with a role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- issue 13: server-side dashboard sessions and login throttling ----------------------------


class OperatorSession(Base):
    """A dashboard session: the cookie carries only ``id``; logout deletes the row, so a copied
    cookie dies with it (the signed cookie alone would stay valid for its whole lifetime)."""

    __tablename__ = "operator_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "user" or "token"
    operator_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()


class LoginThrottle(Base):
    """Failed logins per key (``ip:<address>`` or ``user:<sha256 of the name>``), shared by
    every app node through the database, and the lockout they earned."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column()
    locked_until: Mapped[dt.datetime | None] = mapped_column(default=None)
