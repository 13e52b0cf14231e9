"""The catalog: callvault's relational store.

Tenants, tokens (hashes only), instruction versions, call records, recordings, object
metadata, THE key table (each object's wrapped DEK, so one row delete shreds one object),
legal holds, the job queue, the keyed audit log with its signed checkpoints and the node
registry, one module per aggregate (``Catalog`` hands them out as attributes:
``catalog.jobs.claim(...)``). SQLite in the data dir by default, PostgreSQL when several
nodes share it; the schema comes only from the Alembic migrations in ``storage/migrations``.
"""

from __future__ import annotations

from storage.catalog.auditchain import GENESIS_HASH, canonical_json, event_hash
from storage.catalog.database import Catalog
from storage.catalog.instructions import CurrentInstructions
from storage.catalog.nodes import NODE_DEAD
from storage.catalog.objects import Rewrap
from storage.catalog.recordings import RECORDING_TRANSITIONS
from storage.catalog.records import (
    AUDIT_REASONS,
    AuditCheck,
    AuditEntry,
    AuditEvent,
    Call,
    CallKey,
    Checkpoint,
    DataClass,
    DueCall,
    DueObject,
    DueRecording,
    Instructions,
    Job,
    JobStatus,
    Lease,
    LegalHold,
    NewJob,
    Node,
    NumberCalls,
    ObjectKeyRow,
    ObjectState,
    Recording,
    RecordingKey,
    RecordingStatus,
    Role,
    StoredObject,
    StreamLease,
    StreamRenewal,
    Tenant,
    TenantLimits,
    Token,
    iso,
)
from storage.catalog.urls import async_database_url, mask_database_url

__all__ = [
    "AUDIT_REASONS",
    "NODE_DEAD",
    "GENESIS_HASH",
    "RECORDING_TRANSITIONS",
    "AuditCheck",
    "AuditEntry",
    "AuditEvent",
    "Call",
    "CallKey",
    "Catalog",
    "Checkpoint",
    "CurrentInstructions",
    "DataClass",
    "DueCall",
    "DueObject",
    "DueRecording",
    "Instructions",
    "Job",
    "JobStatus",
    "Lease",
    "LegalHold",
    "NewJob",
    "Node",
    "NumberCalls",
    "ObjectKeyRow",
    "ObjectState",
    "Recording",
    "RecordingKey",
    "RecordingStatus",
    "Rewrap",
    "Role",
    "StoredObject",
    "StreamLease",
    "StreamRenewal",
    "Tenant",
    "TenantLimits",
    "Token",
    "async_database_url",
    "canonical_json",
    "event_hash",
    "iso",
    "mask_database_url",
]
