"""Legal holds, and finding a tenant's data by phone number and by the end of its call.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

A hold covers either a list of call ids or every call where a number is a party (calls that
arrive after the hold too), with the reason an admin gave; releasing it keeps the row (who
and when), so that the audit log's ``hold.placed``/``hold.released`` always name a hold
that can still be shown. ``ix_calls_tenant_id_ended_at`` serves the retention sweep, which
counts every window from the end of the call.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("number", sa.String(64), nullable=True),
        sa.Column("call_ids", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(128), nullable=True),
        sa.CheckConstraint(
            "(number IS NULL) <> (call_ids IS NULL)", name=op.f("ck_legal_holds_one_scope")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_legal_holds_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    op.create_index(op.f("ix_legal_holds_tenant_id"), "legal_holds", ["tenant_id"])
    op.create_index(op.f("ix_calls_tenant_id_ended_at"), "calls", ["tenant_id", "ended_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_calls_tenant_id_ended_at"), table_name="calls")
    op.drop_index(op.f("ix_legal_holds_tenant_id"), table_name="legal_holds")
    op.drop_table("legal_holds")
