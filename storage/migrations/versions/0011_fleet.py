"""The fleet: a node registry, the keyring in the catalog, named leases.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- ``nodes``: every ``serve`` of the fleet registers itself (id, ingest addresses) and writes
  a heartbeat; one whose heartbeat stops is declared ``dead`` by the others.
- ``calls.node_id``: the node that took the call; ``objects.node_id``: the node whose spool
  holds an object while it is ``writing``. Both NULL for rows from before the registry.
- ``keyring``: the keyring document when ``CALLVAULT_KEYS__PROVIDER=catalog`` (every value in
  it wrapped by the master key, as in the local keyring file), with a version that every
  write increments.
- ``leases``: named leases held by one process at a time (a tenant's retention sweep).
- ``calls.audiosocket_attached_by`` / ``audiosocket_attached_until`` become ``attached_by`` /
  ``attached_until``: the lease of the stream that carries a call is kept for every streamed
  transport (Twilio and fork as well as AudioSocket), so that two streams of one call on
  two nodes never both record it. ``audiosocket_peer`` stays AudioSocket's own.
- ``calls.first_streamed_at``: when a stream first claimed the call, the origin of its
  timeline on whichever node carries it (a call that moves between nodes keeps one).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('up', 'stopped', 'dead')", name="ck_nodes_state"),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
    )
    op.create_table(
        "keyring",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyring"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("node_id", sa.String(128), nullable=True))
        batch.create_index("ix_calls_node_id_ended_at", ["node_id", "ended_at"])
        batch.alter_column("audiosocket_attached_by", new_column_name="attached_by")
        batch.alter_column("audiosocket_attached_until", new_column_name="attached_until")
        batch.add_column(sa.Column("first_streamed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("node_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("node_id")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("first_streamed_at")
        batch.alter_column("attached_until", new_column_name="audiosocket_attached_until")
        batch.alter_column("attached_by", new_column_name="audiosocket_attached_by")
        batch.drop_index("ix_calls_node_id_ended_at")
        batch.drop_column("node_id")
    op.drop_table("leases")
    op.drop_table("keyring")
    op.drop_table("nodes")
