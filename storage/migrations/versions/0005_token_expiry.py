"""Tokens can expire.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

``tokens.expires_at`` is when a token stops working (null: never, until revoked); a token is
refused from that instant on, as a revoked one is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("expires_at")
