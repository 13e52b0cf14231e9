"""AudioSocket calls are found by a secret id the gateway mints, not by their call id.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

``calls.audiosocket_id_hash`` is the SHA-256 (hex) of the id an ``audiosocket`` call's
announcement answered with; the id itself is stored nowhere. It is unique (a lookup names at
most one call, whatever the tenant) and NULL for every other call, refused ones included.
``ix_calls_id`` served the lookup by call id alone, which this replaces: call ids are unique
per tenant only, for AudioSocket as for every transport. Live AudioSocket calls of an older
gateway get no id (their PBX named them by their call id, which is no longer accepted); a
gateway finalizes its live calls when it stops, so only calls a crash left open are cut off.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_calls_id", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("audiosocket_id_hash", sa.String(64), nullable=True))
    op.create_index("ix_calls_audiosocket_id_hash", "calls", ["audiosocket_id_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_calls_audiosocket_id_hash", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("audiosocket_id_hash")
    op.create_index("ix_calls_id", "calls", ["id"])
