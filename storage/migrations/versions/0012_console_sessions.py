"""The browser console's sessions.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

``console_sessions``: one row per signed-in browser (``gateway.console.sessions``), keyed by
the SHA-256 of the session cookie's random id, naming the token the user signed in with
(whose revocation or expiry ends the session), when the session was created, last seen, and
when it ends whatever its use. A row in the catalog, not in a node's memory, so that any
node of a fleet serves any session and a sign-out on one node is a sign-out on all.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tokens.id"], name="fk_console_sessions_token_id_tokens"
        ),
        sa.PrimaryKeyConstraint("id_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_token_id", "console_sessions", ["token_id"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_token_id", "console_sessions")
    op.drop_table("console_sessions")
