"""Alert tables: ``device_latency_baselines``, the per-device p95 baseline the latency alert
compares against (on the server's one :class:`~update_server.db.Base`)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow


class DeviceLatencyBaseline(Base):
    __tablename__ = "device_latency_baselines"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    p95_ms: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer, default=1)
    last_p95_ms: Mapped[float | None] = mapped_column(Float, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
