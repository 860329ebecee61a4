"""Key grants: the key_grants audit table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from update_server.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_grants",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("target", sa.String(length=512), nullable=False),
        sa.Column("target_sha256", sa.String(length=64), nullable=False),
        sa.Column("release_sha256", sa.String(length=64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("issuer", sa.String(length=120), nullable=False),
        sa.Column("key_service_key_id", sa.String(length=64), nullable=False),
        sa.Column("grant", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_key_grants_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_grants")),
    )
    op.create_index("ix_key_grants_device_target", "key_grants", ["device_id", "target_sha256"])
    op.create_index(op.f("ix_key_grants_issued_at"), "key_grants", ["issued_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_key_grants_issued_at"), table_name="key_grants")
    op.drop_index("ix_key_grants_device_target", table_name="key_grants")
    op.drop_table("key_grants")
