"""The pre-queue: a schedule's opening, the order and seed of its draw, its progress, and each
cohort token's draw key (indexed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waiting_core.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as table:
        table.add_column(sa.Column("opens_at", UTCDateTime(), nullable=True))
        table.add_column(
            sa.Column("prequeue_order", sa.String(8), nullable=False, server_default="SHUFFLED")
        )
        table.add_column(sa.Column("prequeue_seed", sa.LargeBinary(), nullable=True))
        table.add_column(sa.Column("draw_started_at", UTCDateTime(), nullable=True))
        table.add_column(sa.Column("drawn_at", UTCDateTime(), nullable=True))
    op.add_column("tokens", sa.Column("draw_key", sa.LargeBinary(), nullable=True))
    drawn = sa.text("status = 'PENDING' AND draw_key IS NOT NULL")
    op.create_index(
        "ix_tokens_draw",
        "tokens",
        ["schedule_id", "draw_key"],
        sqlite_where=drawn,
        postgresql_where=drawn,
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_draw", table_name="tokens")
    op.drop_column("tokens", "draw_key")
    with op.batch_alter_table("schedules") as table:
        table.drop_column("drawn_at")
        table.drop_column("draw_started_at")
        table.drop_column("prequeue_seed")
        table.drop_column("prequeue_order")
        table.drop_column("opens_at")
