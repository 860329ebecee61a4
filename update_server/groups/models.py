"""The ``groups`` table: a named, saved selector (see :mod:`.selector`).

Membership is never stored: it is the selector evaluated on the devices' current tags and facts,
so a device enrolled (or re-tagged) later joins its groups at its next evaluation.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from update_server.db import Base, utcnow


class Group(Base):
    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    selector: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    created_by: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
