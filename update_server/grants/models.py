"""``key_grants``: every key grant the server issued (the audit trail docs/security.md promises),
and the cache the check-in path reuses until a grant is near its expiry."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow

_BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class KeyGrantRecord(Base):
    """One issued grant: for which device, release and target, until when, by whom, with which
    key-service key. ``grant`` is the grant's JSON (its wrapped key opens only in the device's
    token, so it is no secret here) kept so a check-in can resend it instead of re-wrapping."""

    __tablename__ = "key_grants"
    __table_args__ = (Index("ix_key_grants_device_target", "device_id", "target_sha256"),)

    id: Mapped[int] = mapped_column(_BigIntPK, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(512))
    target_sha256: Mapped[str] = mapped_column(String(64))
    release_sha256: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    expires_at: Mapped[dt.datetime] = mapped_column()
    issuer: Mapped[str] = mapped_column(String(120))
    key_service_key_id: Mapped[str] = mapped_column(String(64))
    grant: Mapped[str] = mapped_column(Text)
