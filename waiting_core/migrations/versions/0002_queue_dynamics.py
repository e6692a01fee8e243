"""Rate bucket, admission-rate estimate, and the index for abandonment sweeps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waiting_core.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'PENDING'")


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(
            sa.Column("rate_allowance", sa.Float(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("rate_checked_at", UTCDateTime(), nullable=True))
        batch.add_column(
            sa.Column("admit_rate_estimate", sa.Float(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("admit_rate_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("admit_rate_since", UTCDateTime(), nullable=True))
    op.create_index(
        "ix_tokens_pending_seen",
        "tokens",
        ["schedule_id", "last_seen_at"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_pending_seen", table_name="tokens")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("admit_rate_since")
        batch.drop_column("admit_rate_at")
        batch.drop_column("admit_rate_estimate")
        batch.drop_column("rate_checked_at")
        batch.drop_column("rate_allowance")
