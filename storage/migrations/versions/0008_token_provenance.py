"""A token says whether it is break-glass access, and whether it is the configured operator
token.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

``tokens.break_glass``: minted by the operator for a tenant that has had an admin token (a
reason, audited, sent to the tenant's webhook, an hour at most); such a token mints no other
token, so the hour cannot be stretched. The tokens minted before are marked from their
``token.break_glass`` audit events (written in the transaction that minted each one).

``tokens.from_env``: an operator token that is, or was, the value of
``CALLVAULT_OPERATOR_TOKEN``; the next start with another value revokes it. Until now that was
read from ``created_by``, which only covered values the gateway registered itself (not a
printed bootstrap token the operator then put in the variable), so those rows are marked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(
            sa.Column("break_glass", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("from_env", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    tokens = sa.table(
        "tokens",
        sa.column("id", sa.String()),
        sa.column("tenant_id", sa.String()),
        sa.column("created_by", sa.String()),
        sa.column("break_glass", sa.Boolean()),
        sa.column("from_env", sa.Boolean()),
    )
    events = sa.table(
        "audit_events",
        sa.column("action", sa.String()),
        sa.column("object", sa.String()),
    )
    glass = sa.select(events.c.object).where(events.c.action == "token.break_glass")
    op.execute(sa.update(tokens).where(tokens.c.id.in_(glass)).values(break_glass=True))
    op.execute(
        sa.update(tokens)
        .where(tokens.c.tenant_id.is_(None), tokens.c.created_by == "CALLVAULT_OPERATOR_TOKEN")
        .values(from_env=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("from_env")
        batch.drop_column("break_glass")
