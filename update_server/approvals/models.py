"""Four-eyes approvals of rollouts: one row per rollout that needed (or got) an approval."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base


class RolloutApproval(Base):
    """``requested_by`` / ``approved_by`` are *principals*: a user's name, or for an API token
    the user who created it (``token:<name>`` for a token nobody owns), so one person cannot
    approve their own rollout with a second token."""

    __tablename__ = "rollout_approvals"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    requested_by: Mapped[str] = mapped_column(String(120))
    requested_at: Mapped[dt.datetime] = mapped_column()
    approved_by: Mapped[str | None] = mapped_column(String(120), default=None)
    approved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
