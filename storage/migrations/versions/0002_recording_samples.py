"""Recordings know their timeline length; calls remember a pause and can be found by id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

``recordings.samples`` is the length of the call's timeline in samples, set when the
recording is finalized: the WAV export writes its header from it before streaming a byte.
``calls.paused`` keeps a PBX's pause across a restart of the gateway: audio it asked to
discard (a card number being read out) must stay discarded after a crash too.
``ix_calls_id`` serves AudioSocket, whose only identifier is the call's UUID (no tenant).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch:
        batch.add_column(sa.Column("samples", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("calls") as batch:
        batch.add_column(
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_calls_id", "calls", ["id"])


def downgrade() -> None:
    op.drop_index("ix_calls_id", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("paused")
    with op.batch_alter_table("recordings") as batch:
        batch.drop_column("samples")
