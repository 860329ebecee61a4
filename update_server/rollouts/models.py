"""Rollout tables (on the server's one :class:`~update_server.db.Base`).

``rollouts`` holds an operator's rollout and the engine's state (stage, cutoffs, reason);
``rollout_devices`` one row per device admitted to a rollout with its outcome;
``active_key`` is ``"<model>|<selector>"`` while a rollout is running or paused and NULL after,
so a unique constraint enforces one active rollout per model per selector on every backend.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(100))
    selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    success_share: Mapped[float] = mapped_column(Float)
    failure_share: Mapped[float] = mapped_column(Float)
    min_devices: Mapped[int] = mapped_column(Integer)
    on_failure: Mapped[str] = mapped_column(String(8))
    allow_downgrade: Mapped[bool] = mapped_column(default=False)
    from_version: Mapped[str | None] = mapped_column(String(100), default=None)
    rollback_of: Mapped[str | None] = mapped_column(String(40), default=None)
    # The canary-vs-control field gate (rollouts.field_gate.FieldGate.to_json()), if any.
    field_gate: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    status: Mapped[str] = mapped_column(String(16), index=True)
    active_key: Mapped[str | None] = mapped_column(String(400), unique=True, default=None)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[dt.datetime] = mapped_column()
    failure_window_start: Mapped[dt.datetime] = mapped_column()
    cutoffs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    stage_sizes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    revision: Mapped[int] = mapped_column(Integer, default=1)

    created_by: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    stage_index: Mapped[int] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(16), default="pending")
    from_version: Mapped[str | None] = mapped_column(String(100), default=None)
    assigned_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        Index("ix_rollout_devices_device_id", "device_id"),
        Index("ix_rollout_devices_rollout_stage_result", "rollout_id", "stage_index", "result"),
    )
