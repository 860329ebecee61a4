"""Rollouts: rollouts, rollout_devices, device_latency_baselines.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from update_server.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("selector", sa.JSON(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("success_share", sa.Float(), nullable=False),
        sa.Column("failure_share", sa.Float(), nullable=False),
        sa.Column("min_devices", sa.Integer(), nullable=False),
        sa.Column("on_failure", sa.String(length=8), nullable=False),
        sa.Column("allow_downgrade", sa.Boolean(), nullable=False),
        sa.Column("from_version", sa.String(length=100), nullable=True),
        sa.Column("rollback_of", sa.String(length=40), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("active_key", sa.String(length=400), nullable=True),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", UTCDateTime(), nullable=False),
        sa.Column("failure_window_start", UTCDateTime(), nullable=False),
        sa.Column("cutoffs", sa.JSON(), nullable=False),
        sa.Column("stage_sizes", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("active_key", name=op.f("uq_rollouts_active_key")),
    )
    op.create_index(op.f("ix_rollouts_model"), "rollouts", ["model"], unique=False)
    op.create_index(op.f("ix_rollouts_status"), "rollouts", ["status"], unique=False)
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.String(length=100), nullable=True),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_rollout_devices_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.id"],
            name=op.f("fk_rollout_devices_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_rollout_devices")),
    )
    op.create_index("ix_rollout_devices_device_id", "rollout_devices", ["device_id"])
    op.create_index(
        "ix_rollout_devices_rollout_stage_result",
        "rollout_devices",
        ["rollout_id", "stage_index", "result"],
    )
    op.create_table(
        "device_latency_baselines",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("p95_ms", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("last_p95_ms", sa.Float(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_latency_baselines_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_latency_baselines")),
    )


def downgrade() -> None:
    op.drop_table("device_latency_baselines")
    op.drop_index("ix_rollout_devices_rollout_stage_result", table_name="rollout_devices")
    op.drop_index("ix_rollout_devices_device_id", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index(op.f("ix_rollouts_status"), table_name="rollouts")
    op.drop_index(op.f("ix_rollouts_model"), table_name="rollouts")
    op.drop_table("rollouts")
