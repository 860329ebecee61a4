"""Device tables: devices, their models, their events, request nonces.

Operator tables live in :mod:`update_server.operators.models`, rollout tables in
:mod:`update_server.rollouts.models`, all on the same :class:`~update_server.db.Base`.
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

from edgepkg import protocol
from update_server.db import Base, utcnow

DEVICE_ENABLED = "enabled"
DEVICE_DISABLED = "disabled"

EVENT_TYPES = protocol.EVENT_TYPES
"""Re-exported from the device contract (:mod:`edgepkg.protocol`), the one list."""

_BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Device(Base):
    """An enrolled device; its id is the key id (hex SHA-256 of DER SPKI) of its P-256 key."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Operator-set (issue 14): a findable name ("device-03", unique when set) and free notes.
    name: Mapped[str | None] = mapped_column(String(100), default=None, unique=True)
    notes: Mapped[str | None] = mapped_column(Text, default=None)
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


class Nonce(Base):
    """A device request nonce seen recently; a second use inside the window is a replay."""

    __tablename__ = "nonces"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class DeviceQuotaUsage(Base):
    """What a device sent in the current minute and UTC day, per kind ("events", "telemetry"):
    the counters behind the per-device quotas (``devices/quotas.py``)."""

    __tablename__ = "device_quota_usage"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    minute_start: Mapped[dt.datetime] = mapped_column()
    minute_count: Mapped[int] = mapped_column(BigInteger, default=0)
    day_start: Mapped[dt.datetime] = mapped_column()
    day_count: Mapped[int] = mapped_column(BigInteger, default=0)
    day_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
