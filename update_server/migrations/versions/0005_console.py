"""Console (issue 14): device names and notes, dynamic groups.

Revision ID: 0005
Revises: 0004 (re-chained by the integrator after the parallel branches' migrations)
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from update_server.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch.create_unique_constraint(op.f("uq_devices_name"), ["name"])
    op.create_table(
        "groups",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_groups")),
    )


def downgrade() -> None:
    op.drop_table("groups")
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint(op.f("uq_devices_name"), type_="unique")
        batch.drop_column("notes")
        batch.drop_column("name")
