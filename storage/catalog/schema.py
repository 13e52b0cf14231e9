"""The catalog's tables, as SQLAlchemy Core metadata.

This metadata is what the repository code queries and what Alembic's autogenerate compares
against; it never creates anything itself: the schema exists only through the migrations in
``storage/migrations`` (a test checks that the two agree, on SQLite and on PostgreSQL).

Constraint names follow one naming convention so that they are the same on every backend and
a later migration can address them. Lifecycles that the catalog owns (roles, statuses,
states) are guarded by CHECK constraints; vocabularies the API owns (codecs, transports) are
validated there, so that adding a codec needs no migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from storage.catalog.records import (
    DATA_CLASSES,
    JOB_STATUSES,
    NODE_STATES,
    OBJECT_STATES,
    RECORDING_STATUSES,
    ROLES,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in and comes out timezone-aware UTC on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time zone type, so the value is stored
    as naive UTC text of fixed width (which also sorts correctly) and UTC is attached again
    on the way out. Naive datetimes are refused: the catalog never guesses a time zone.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the catalog stores aware UTC times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # noqa: S101 - the impl type guarantees it
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


ID = sa.String(64)
"""Ids the catalog or the gateway generates (UUIDs, token ids, tenant slugs)."""

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("region", sa.String(32), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    # The head of the tenant's audit chain. Appends lock this row, which serializes them,
    # and verification compares the last event with it, so that a removed tail is noticed.
    sa.Column("audit_seq", sa.Integer(), nullable=False),
    sa.Column("audit_head", sa.String(64), nullable=False),
    # The operator's overrides of the default limits ({"live_calls": 5}); NULL: none.
    sa.Column("limits", sa.JSON(none_as_null=True), nullable=True),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=True, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    # Minted by the operator for a tenant that had an admin: it may mint no token.
    sa.Column("break_glass", sa.Boolean(), nullable=False, server_default=sa.false()),
    # An operator token that is (or was) the value of CALLVAULT_OPERATOR_TOKEN: a new value
    # revokes it.
    sa.Column("from_env", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.CheckConstraint(_one_of("role", ROLES), name="role"),
    sa.CheckConstraint(
        "(role = 'operator' AND tenant_id IS NULL) "
        "OR (role <> 'operator' AND tenant_id IS NOT NULL)",
        name="operator_has_no_tenant",
    ),
)

instructions = sa.Table(
    "instructions",
    metadata,
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("document", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
)

calls = sa.Table(
    "calls",
    metadata,
    # A PBX may choose call ids, so they are unique per tenant only: a global key would let
    # one tenant learn that another already used an id.
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
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
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    # The PBX paused the call (audio discarded until it resumes); survives a restart.
    sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
    # SHA-256 (hex) of the secret id an audiosocket call's announcement answered with, which
    # its PBX names it by; the id itself is never stored. NULL for other and refused calls.
    sa.Column("audiosocket_id_hash", sa.String(64), nullable=True),
    # AudioSocket only: the IP address of the call's first connection, kept for good
    # (storage.catalog.calls, claim_stream). NULL for other transports.
    sa.Column("audiosocket_peer", sa.String(64), nullable=True),
    # The stream (Twilio, fork or AudioSocket connection) that carries the call and its
    # lease's end (after a release: when it was released; claim_stream). NULL for RTP.
    sa.Column("attached_by", sa.String(128), nullable=True),
    sa.Column("attached_until", UTCDateTime(), nullable=True),
    # When a stream first carried the call (its first claim): the origin of its timeline on
    # every node that carries it (gateway.session). NULL until then, and for RTP.
    sa.Column("first_streamed_at", UTCDateTime(), nullable=True),
    # The node (``nodes.id``) that took the call; NULL for calls from before the registry.
    sa.Column("node_id", sa.String(128), nullable=True),
    sa.ForeignKeyConstraint(
        ["tenant_id", "instructions_version"],
        ["instructions.tenant_id", "instructions.version"],
    ),
    sa.Index(None, "audiosocket_id_hash", unique=True),
    sa.Index(None, "tenant_id", "from_number"),
    sa.Index(None, "tenant_id", "to_number"),
    sa.Index(None, "tenant_id", "started_at"),
    sa.Index(None, "tenant_id", "ended_at"),  # the retention sweep counts from the call's end
    sa.Index(None, "node_id", "ended_at"),  # a dead node's live calls
)

recordings = sa.Table(
    "recordings",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("call_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("instructions_version", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("audio_purged", sa.Boolean(), nullable=False),
    sa.Column("failure_reason", sa.Text(), nullable=True),
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    sa.Column("delete_reason", sa.String(256), nullable=True),
    # The call's timeline length in samples, set when the recording is finalized.
    sa.Column("samples", sa.BigInteger(), nullable=True),
    sa.CheckConstraint(_one_of("status", RECORDING_STATUSES), name="status"),
    sa.ForeignKeyConstraint(["tenant_id", "call_id"], ["calls.tenant_id", "calls.id"]),
    sa.ForeignKeyConstraint(
        ["tenant_id", "instructions_version"],
        ["instructions.tenant_id", "instructions.version"],
    ),
    sa.Index(None, "tenant_id", "created_at"),
    sa.Index(None, "tenant_id", "call_id"),
)

objects = sa.Table(
    "objects",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("recording_id", ID, sa.ForeignKey("recordings.id"), nullable=True, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("track", sa.String(16), nullable=True),
    sa.Column("data_class", sa.String(16), nullable=False),
    sa.Column("store_key", sa.String(512), nullable=False, unique=True),
    sa.Column("size", sa.BigInteger(), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("committed_at", UTCDateTime(), nullable=True),
    sa.Column("deleted_at", UTCDateTime(), nullable=True),
    # The node whose spool holds the object while it is ``writing`` (published from there).
    sa.Column("node_id", sa.String(128), nullable=True),
    sa.CheckConstraint(_one_of("data_class", DATA_CLASSES), name="data_class"),
    sa.CheckConstraint(_one_of("state", OBJECT_STATES), name="state"),
    sa.Index(None, "tenant_id", "state", "created_at"),
)

# THE key table. The wrapped DEK of an object lives here and nowhere else (not in the object,
# not in the objects table), and nothing references this table, so that shredding an object
# is one single-row DELETE with no cascade. A tenant's sealed webhook secret has its DEK here
# too, under a ``whsec_`` id with no objects row (storage.webhooksecret).
object_keys = sa.Table(
    "object_keys",
    metadata,
    sa.Column("object_id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    sa.Column("kek_id", sa.String(128), nullable=False),
    sa.Column("kek_version", sa.Integer(), nullable=False),
    sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("rewrapped_at", UTCDateTime(), nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("recording_id", ID, sa.ForeignKey("recordings.id"), nullable=True, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("run_after", UTCDateTime(), nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # What the job needs besides its recording (a webhook's event); ids and metadata only.
    sa.Column("payload", sa.JSON(), nullable=True),
    sa.CheckConstraint(_one_of("status", JOB_STATUSES), name="status"),
    sa.Index(None, "status", "run_after"),
)

legal_holds = sa.Table(
    "legal_holds",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), nullable=False, index=True),
    # Either every call where this number is a party (later calls too) or these call ids.
    sa.Column("number", sa.String(64), nullable=True),
    sa.Column("call_ids", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    # A released hold stays, so that the audit log's events name a hold that can be shown.
    sa.Column("released_at", UTCDateTime(), nullable=True),
    sa.Column("released_by", sa.String(128), nullable=True),
    sa.CheckConstraint("(number IS NULL) <> (call_ids IS NULL)", name="one_scope"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("object", sa.String(256), nullable=True),
    sa.Column("detail", sa.JSON(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    # The gateway's signatures of the chain's head, kept forever like the events: a
    # checkpoint is made only when the head moved, so (tenant, seq) is unique.
    sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata,
    # The node registry: every ``serve`` of the fleet, its ingest addresses and heartbeat.
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("addresses", sa.JSON(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("dead_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint(_one_of("state", NODE_STATES), name="state"),
)

keyring = sa.Table(
    "keyring",
    metadata,
    # The fleet's keyring (CALLVAULT_KEYS__PROVIDER=catalog): one row, the same document
    # as the local keyring file (every value wrapped by the master key), with a version
    # that every write increments so that a node sees at once that it changed.
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger(), nullable=False),
    sa.Column("document", sa.LargeBinary(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    # Named leases one process of the fleet holds at a time (a tenant's retention sweep).
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("until", UTCDateTime(), nullable=False),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    # A browser console session (gateway.console.sessions): the SHA-256 of the cookie's
    # random id (never the id itself), the token it was signed in with (checked on every
    # request, so a revocation ends the session at once on every node), and its times.
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("token_id", ID, sa.ForeignKey("tokens.id"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)
