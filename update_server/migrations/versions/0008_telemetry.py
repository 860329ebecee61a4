"""Field telemetry and webhooks: telemetry_reports, telemetry_intervals, telemetry_rollups,
telemetry_alerts, telemetry_baselines, telemetry_quota, webhook_deliveries, and
rollouts.field_gate.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from update_server.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                   name=op.f(f"fk_{table}_device_id_devices"), ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "telemetry_reports",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("interval_start", UTCDateTime(), nullable=False),
        sa.Column("interval_end", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("dropped_intervals", sa.Integer(), nullable=False),
        *[sa.Column(c, sa.Float(), nullable=True) for c in (
            "cpu_temp_c", "gpu_temp_c", "mem_used_bytes", "mem_total_bytes", "disk_free_bytes",
            "disk_total_bytes", "load1", "uptime_s")],
        _device_fk("telemetry_reports"),
        sa.PrimaryKeyConstraint("device_id", "seq", name=op.f("pk_telemetry_reports")),
    )
    op.create_index("ix_telemetry_reports_device_end", "telemetry_reports",
                    ["device_id", "interval_end"])
    op.create_index("ix_telemetry_reports_end", "telemetry_reports", ["interval_end"])
    op.create_table(
        "telemetry_intervals",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("interval_end", UTCDateTime(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("feedback_labelled", sa.BigInteger(), nullable=False),
        sa.Column("feedback_correct", sa.BigInteger(), nullable=False),
        *[sa.Column(c, sa.Float(), nullable=True) for c in (
            "confidence_mean", "psi", "js", "ks", "confidence_drop", "prediction_shift")],
        sa.Column("summaries", sa.JSON(), nullable=False),
        _device_fk("telemetry_intervals"),
        sa.PrimaryKeyConstraint("device_id", "seq", "model", name=op.f("pk_telemetry_intervals")),
    )
    op.create_index("ix_telemetry_intervals_device_end", "telemetry_intervals",
                    ["device_id", "interval_end"])
    op.create_index("ix_telemetry_intervals_cohort", "telemetry_intervals",
                    ["model", "version", "interval_end"])
    op.create_table(
        "telemetry_rollups",
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("tag", sa.String(length=100), nullable=False),
        sa.Column("bucket", UTCDateTime(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("p95_mean_ms", sa.Float(), nullable=True),
        sa.Column("p95_max_ms", sa.Float(), nullable=True),
        sa.Column("feedback_labelled", sa.BigInteger(), nullable=False),
        sa.Column("feedback_correct", sa.BigInteger(), nullable=False),
        *[sa.Column(c, sa.Float(), nullable=True) for c in (
            "confidence_mean", "psi_mean", "psi_max", "cpu_temp_max_c")],
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("model", "version", "tag", "bucket",
                                name=op.f("pk_telemetry_rollups")),
    )
    op.create_index("ix_telemetry_rollups_bucket", "telemetry_rollups", ["bucket"])
    op.create_table(
        "telemetry_alerts",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("is_open", sa.Boolean(), nullable=False),
        sa.Column("bad_streak", sa.Integer(), nullable=False),
        sa.Column("good_streak", sa.Integer(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_telemetry_alerts")),
    )
    op.create_index(op.f("ix_telemetry_alerts_kind"), "telemetry_alerts", ["kind"])
    op.create_index(op.f("ix_telemetry_alerts_is_open"), "telemetry_alerts", ["is_open"])
    op.create_table(
        "telemetry_baselines",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("p95_ms", sa.Float(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        _device_fk("telemetry_baselines"),
        sa.PrimaryKeyConstraint("device_id", "model", name=op.f("pk_telemetry_baselines")),
    )
    op.create_table(
        "telemetry_quota",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("minute", UTCDateTime(), nullable=False),
        sa.Column("minute_count", sa.Integer(), nullable=False),
        sa.Column("day", UTCDateTime(), nullable=False),
        sa.Column("day_count", sa.Integer(), nullable=False),
        _device_fk("telemetry_quota"),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_telemetry_quota")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index("ix_webhook_deliveries_status_next", "webhook_deliveries",
                    ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"])
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("field_gate", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("field_gate")
    for table in ("webhook_deliveries", "telemetry_quota", "telemetry_baselines",
                  "telemetry_alerts", "telemetry_rollups", "telemetry_intervals",
                  "telemetry_reports"):
        op.drop_table(table)
