"""Rollout schedules: start time, start rate limit, maintenance window (issue 14 item 5).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from update_server.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_schedules",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("start_at", UTCDateTime(), nullable=True),
        sa.Column("max_starts_per_minute", sa.Integer(), nullable=True),
        sa.Column("maintenance_window", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_schedules_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", name=op.f("pk_rollout_schedules")),
    )
    op.create_table(
        "rollout_start_buckets",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("minute", sa.Integer(), nullable=False),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_start_buckets_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "minute", name=op.f("pk_rollout_start_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rollout_start_buckets")
    op.drop_table("rollout_schedules")
