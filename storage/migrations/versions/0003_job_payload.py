"""Jobs carry a small JSON payload.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

An ``analyze`` job needs nothing but its recording; a webhook delivery needs its event (the
name, the recording, when it happened), kept with the job so that a retry after a restart
sends the same event. The payload holds ids and metadata only, never content.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("payload")
