"""The initial catalog schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out in full (not imported from ``storage.catalog.schema``) so that this revision keeps
describing the schema it created after the models move on; a test compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _ts(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        _ts("created_at", nullable=False),
        _ts("deleted_at", nullable=True),
        sa.Column("audit_seq", sa.Integer(), nullable=False),
        sa.Column("audit_head", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )

    op.create_table(
        "tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        _ts("created_at", nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_tokens_tenant_id_tenants"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
        sa.CheckConstraint(
            "role IN ('operator', 'admin', 'pbx', 'processor')", name="ck_tokens_role"
        ),
        sa.CheckConstraint(
            "(role = 'operator' AND tenant_id IS NULL) "
            "OR (role <> 'operator' AND tenant_id IS NOT NULL)",
            name="ck_tokens_operator_has_no_tenant",
        ),
    )
    op.create_index("ix_tokens_tenant_id", "tokens", ["tenant_id"])

    op.create_table(
        "instructions",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("document", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "version", name="pk_instructions"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_instructions_tenant_id_tenants"
        ),
    )

    op.create_table(
        "calls",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("from_number", sa.String(64), nullable=False),
        sa.Column("to_number", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("consent", sa.String(16), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("instructions_version", sa.Integer(), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("refusal_code", sa.String(64), nullable=True),
        _ts("started_at", nullable=False),
        _ts("ended_at", nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "id", name="pk_calls"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_calls_tenant_id_tenants"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "instructions_version"],
            ["instructions.tenant_id", "instructions.version"],
            name="fk_calls_tenant_id_instructions_version_instructions",
        ),
    )
    op.create_index("ix_calls_tenant_id_from_number", "calls", ["tenant_id", "from_number"])
    op.create_index("ix_calls_tenant_id_to_number", "calls", ["tenant_id", "to_number"])
    op.create_index("ix_calls_tenant_id_started_at", "calls", ["tenant_id", "started_at"])

    op.create_table(
        "recordings",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instructions_version", sa.Integer(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("ended_at", nullable=True),
        sa.Column("audio_purged", sa.Boolean(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        _ts("deleted_at", nullable=True),
        sa.Column("delete_reason", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recordings"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_recordings_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "call_id"],
            ["calls.tenant_id", "calls.id"],
            name="fk_recordings_tenant_id_call_id_calls",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "instructions_version"],
            ["instructions.tenant_id", "instructions.version"],
            name="fk_recordings_tenant_id_instructions_version_instructions",
        ),
        sa.CheckConstraint(
            "status IN ('recording', 'recorded', 'processing', 'analyzed', 'failed', 'deleted')",
            name="ck_recordings_status",
        ),
    )
    op.create_index("ix_recordings_tenant_id_created_at", "recordings", ["tenant_id", "created_at"])
    op.create_index("ix_recordings_tenant_id_call_id", "recordings", ["tenant_id", "call_id"])

    op.create_table(
        "objects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("recording_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("track", sa.String(16), nullable=True),
        sa.Column("data_class", sa.String(16), nullable=False),
        sa.Column("store_key", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("created_at", nullable=False),
        _ts("committed_at", nullable=True),
        _ts("deleted_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_objects"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_objects_tenant_id_tenants"),
        sa.ForeignKeyConstraint(
            ["recording_id"], ["recordings.id"], name="fk_objects_recording_id_recordings"
        ),
        sa.UniqueConstraint("store_key", name="uq_objects_store_key"),
        sa.CheckConstraint(
            "data_class IN ('recordings', 'transcripts')", name="ck_objects_data_class"
        ),
        sa.CheckConstraint("state IN ('writing', 'committed', 'deleted')", name="ck_objects_state"),
    )
    op.create_index("ix_objects_recording_id", "objects", ["recording_id"])
    op.create_index(
        "ix_objects_tenant_id_state_created_at", "objects", ["tenant_id", "state", "created_at"]
    )

    op.create_table(
        "object_keys",
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(128), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("rewrapped_at", nullable=True),
        sa.PrimaryKeyConstraint("object_id", name="pk_object_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_object_keys_tenant_id_tenants"
        ),
    )
    op.create_index("ix_object_keys_tenant_id", "object_keys", ["tenant_id"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("recording_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        _ts("run_after", nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        _ts("lease_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name="fk_jobs_tenant_id_tenants"),
        sa.ForeignKeyConstraint(
            ["recording_id"], ["recordings.id"], name="fk_jobs_recording_id_recordings"
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')", name="ck_jobs_status"
        ),
    )
    op.create_index("ix_jobs_recording_id", "jobs", ["recording_id"])
    op.create_index("ix_jobs_status_run_after", "jobs", ["status", "run_after"])

    op.create_table(
        "audit_events",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False, autoincrement=False),
        _ts("at", nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object", sa.String(256), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "seq", name="pk_audit_events"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_audit_events_tenant_id_tenants"
        ),
    )


def downgrade() -> None:
    for table in (
        "audit_events",
        "jobs",
        "object_keys",
        "objects",
        "recordings",
        "calls",
        "instructions",
        "tokens",
        "tenants",
    ):
        op.drop_table(table)
