"""Core tables of the update server: devices, events, tokens, nonces.

Rollout tables live in ``rollouts``-owned modules on the same :class:`~update_server.db.Base`.
Times are timezone-aware UTC (``UTCDateTime``). Secrets (operator and enrollment tokens,
passwords) are stored only as hashes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from update_server.db import Base, utcnow

ROLES = ("viewer", "release", "admin")
"""Operator roles, weakest first: a role may do everything the roles before it may."""

DEVICE_ENABLED = "enabled"
DEVICE_DISABLED = "disabled"

EVENT_TYPES = (
    "download_started",
    "download_finished",
    "verification_failed",
    "validation_result",
    "installed",
    "trial_started",
    "committed",
    "rolled_back",
    "rejected",
)

_BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Device(Base):
    """An enrolled device; its id is the key id (hex SHA-256 of DER SPKI) of its P-256 key."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(default=list)
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=DEVICE_ENABLED, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime | None] = mapped_column(default=None, index=True)
    enrollment_token_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # Last check-in, as sent: {"models": {...}, "state", "health", "free_disk_bytes",
    # "last_error"}. The active version per model is also in DeviceModel for queries.
    last_checkin: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    state: Mapped[str | None] = mapped_column(String(32), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    free_disk_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)

    models: Mapped[list[DeviceModel]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def enabled(self) -> bool:
        return self.status == DEVICE_ENABLED

    def active_versions(self) -> dict[str, str]:
        """Model name -> version in the active slot, from the last check-in."""
        return {m.model: m.version for m in self.models if m.version is not None}


class DeviceModel(Base):
    """Which version of a model a device runs (active slot), kept from its last check-in."""

    __tablename__ = "device_models"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[str | None] = mapped_column(String(100), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    active_slot: Mapped[str | None] = mapped_column(String(1), default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    device: Mapped[Device] = relationship(back_populates="models")

    __table_args__ = (Index("ix_device_models_model_version", "model", "version"),)


class Event(Base):
    """A device event; ``id`` is the client's event UUID, unique per device (idempotency)."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(_BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    time: Mapped[dt.datetime] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    version: Mapped[str | None] = mapped_column(String(100), default=None)
    rollout_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (UniqueConstraint("device_id", "id", name="uq_events_device_id_id"),)


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


class User(Base):
    """A dashboard user (username + scrypt password hash) with a role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Nonce(Base):
    """A device request nonce seen recently; a second use inside the window is a replay."""

    __tablename__ = "nonces"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
