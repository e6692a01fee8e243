"""Token ids derived with a shared secret: the secrets table, longer ids, a user index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":  # SQLite does not enforce lengths
        op.alter_column("tokens", "token_id", type_=sa.String(64), existing_type=sa.String(32))
    # A user's tokens of a schedule, live or ended: their count derives the next id.
    op.create_index("ix_tokens_user", "tokens", ["schedule_id", "user_id"])


def downgrade() -> None:
    op.drop_index("ix_tokens_user", table_name="tokens")
    op.drop_table("service_secrets")
