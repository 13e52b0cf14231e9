"""Signed checkpoints of each tenant's audit chain.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

The gateway signs the head of every tenant's keyed audit chain (Ed25519, a key from the
keyring) when it moved, and keeps the signatures here, forever, as the events are kept:
``audit/verify`` checks the chain against the latest. The chains themselves are re-keyed
from SHA-256 to HMAC-SHA256 by the gateway when it starts (the key is in the keyring, out of
a migration's reach), not here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name=op.f("pk_audit_checkpoints")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audit_checkpoints_tenant_id_tenants")
        ),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
