"""A tenant keeps the operator's overrides of its limits.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

``tenants.limits``: a JSON object of the limits the operator set for the tenant
(``live_calls``, ``rtp_calls``, ``announces_per_minute``); a limit it does not name, and
every limit of a tenant with NULL here, follows the gateway's default
(``CALLVAULT_LIMITS__*``). The counts the limits are checked against are read from the
``calls`` rows (live calls, calls started in the last 60 s), so nothing else is stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("limits", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("limits")
