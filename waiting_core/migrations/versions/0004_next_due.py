"""When each schedule next needs settling without an event (the sweeper asks only for those).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waiting_core.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("status = 'ACTIVE'")
_DUE = sa.text("next_due_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("next_due_at", UTCDateTime(), nullable=True))
    op.create_index(
        "ix_schedules_next_due",
        "schedules",
        ["next_due_at"],
        sqlite_where=_DUE,
        postgresql_where=_DUE,
    )
    # The earliest expiry of one schedule, instead of every schedule's expiries in time order.
    op.drop_index("ix_tokens_active_expiry", table_name="tokens")
    op.create_index(
        "ix_tokens_active_expiry",
        "tokens",
        ["schedule_id", "expires_at"],
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    # Every schedule with live tokens is due once, so that the sweeper settles it and from
    # then on keeps its next due moment.
    op.execute(
        "UPDATE schedules SET next_due_at = '1970-01-01 00:00:00' "
        "WHERE active_count > 0 OR pending_count > 0"
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_active_expiry", table_name="tokens")
    op.create_index(
        "ix_tokens_active_expiry",
        "tokens",
        ["expires_at"],
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.drop_index("ix_schedules_next_due", table_name="schedules")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("next_due_at")
