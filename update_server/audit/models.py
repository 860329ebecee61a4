"""Audit tables: the append-only, hash-chained ``audit_log`` and its one-row ``audit_head``.

``audit_head`` (id 1) holds the sequence number and hash of the newest entry. Appending locks
that row first, so two app nodes cannot both chain onto the same predecessor; the head is also
what ``audit verify`` compares the end of the chain with, so a cut-off tail is noticed.
The migration adds triggers refusing UPDATE and DELETE on ``audit_log`` (SQLite and PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""


class AuditEntry(Base):
    """One operator action: who (actor, kind), when, from where, what (action, target, details)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(120))
    actor_kind: Mapped[str] = mapped_column(String(16))  # user, token, cli, system, anonymous
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200), default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor", "actor"),
        Index("ix_audit_log_action", "action"),
    )


class AuditHead(Base):
    """The newest entry's ``seq`` and ``hash`` (one row, id 1): the lock appends take."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
