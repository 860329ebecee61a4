"""Tables of rollout schedules (issue 14 item 5), apart from ``rollouts`` so the schedule can
evolve without touching the engine's row.

``rollout_schedules``: one optional row per rollout: when it starts, how many devices may start
per minute, and the maintenance window sent with its assignments.
``rollout_start_buckets``: devices started per rollout and UNIX minute. The count lives in the
database (a conditional UPDATE takes a slot) so several app nodes share one limit.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base


class RolloutSchedule(Base):
    __tablename__ = "rollout_schedules"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    start_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    max_starts_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    maintenance_window: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class RolloutStartBucket(Base):
    __tablename__ = "rollout_start_buckets"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[int] = mapped_column(Integer, primary_key=True)  # UNIX time // 60
    starts: Mapped[int] = mapped_column(Integer, default=0)
