"""When abandonment was switched on for a schedule (reads record "seen" only while it is on).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waiting_core.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("abandonment_since", UTCDateTime(), nullable=True))
    # Schedules that already abandon were recording "seen" all along.
    op.execute(
        "UPDATE schedules SET abandonment_since = '1970-01-01 00:00:00' "
        "WHERE pending_ttl_seconds > 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("abandonment_since")
