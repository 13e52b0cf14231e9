"""AudioSocket attachments are kept with the call, so every node and every restart sees them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

An AudioSocket stream proves nothing but its call's secret id, so the call is held to the
address of its first connection and carried by one connection at a time (API.md). Those
rules lived in one process's memory; they are now on the ``calls`` row:

* ``audiosocket_peer``: the IP address of the call's first connection, set once; a
  connection from any other address is refused.
* ``audiosocket_attached_by``: the connection that carries the call (its node and a random
  part), NULL when none does.
* ``audiosocket_attached_until``: while a connection is attached, when its lease ends
  unless renewed (a crashed node's lease runs out); after it detached, when it did.

All NULL for other transports and for calls of an older gateway until their next
connection.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("audiosocket_peer", sa.String(64), nullable=True))
        batch.add_column(sa.Column("audiosocket_attached_by", sa.String(128), nullable=True))
        batch.add_column(
            sa.Column("audiosocket_attached_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("audiosocket_attached_until")
        batch.drop_column("audiosocket_attached_by")
        batch.drop_column("audiosocket_peer")
