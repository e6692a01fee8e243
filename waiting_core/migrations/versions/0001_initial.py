"""Schedules, tokens and the outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waiting_core.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LIVE = sa.text("status IN ('PENDING', 'ACTIVE')")
_PENDING = sa.text("status = 'PENDING'")
_ACTIVE = sa.text("status = 'ACTIVE'")
_DEPARTED = sa.text("status IN ('CANCELLED', 'EXPIRED') AND activated_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("active_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("pending_ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("admit_rate_per_second", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("active_count", sa.Integer(), nullable=False),
        sa.Column("pending_count", sa.BigInteger(), nullable=False),
        sa.Column("admitted_total", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("schedule_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("schedule_id", "seq", name="uq_tokens_schedule_seq"),
    )
    op.create_index(
        "uq_tokens_live_user",
        "tokens",
        ["schedule_id", "user_id"],
        unique=True,
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )
    op.create_index(
        "ix_tokens_pending",
        "tokens",
        ["schedule_id", "seq"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_tokens_departed",
        "tokens",
        ["schedule_id", "seq"],
        sqlite_where=_DEPARTED,
        postgresql_where=_DEPARTED,
    )
    op.create_index(
        "ix_tokens_active_expiry",
        "tokens",
        ["expires_at"],
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        # Never reuse an id: relays delete published rows by id, and SQLite would otherwise
        # hand a deleted row's id to the next event while another relay still holds it.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_origin", "outbox", ["origin", "id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("tokens")
    op.drop_table("schedules")
