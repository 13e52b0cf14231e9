"""The catalog: callvault's relational store.

Tenants, tokens (hashes only), instruction versions, call records, recordings, object
metadata, THE key table (each object's wrapped DEK, so one row delete shreds one object), the
job queue and the hash-chained audit log. SQLite in the data dir by default, PostgreSQL when
several nodes share it; the schema comes only from the Alembic migrations in
``storage/migrations``.
"""

from __future__ import annotations

from storage.catalog.auditchain import GENESIS_HASH, canonical_json, event_hash
from storage.catalog.database import RECORDING_TRANSITIONS, Catalog, Rewrap
from storage.catalog.records import (
    AuditCheck,
    AuditEntry,
    AuditEvent,
    Call,
    DataClass,
    DueCall,
    DueObject,
    DueRecording,
    Instructions,
    Job,
    JobStatus,
    LegalHold,
    NewJob,
    ObjectKeyRow,
    ObjectState,
    Recording,
    RecordingStatus,
    Role,
    StoredObject,
    Tenant,
    Token,
)
from storage.catalog.urls import async_database_url, mask_database_url

__all__ = [
    "GENESIS_HASH",
    "RECORDING_TRANSITIONS",
    "AuditCheck",
    "AuditEntry",
    "AuditEvent",
    "Call",
    "Catalog",
    "DataClass",
    "DueCall",
    "DueObject",
    "DueRecording",
    "Instructions",
    "Job",
    "JobStatus",
    "LegalHold",
    "NewJob",
    "ObjectKeyRow",
    "ObjectState",
    "Recording",
    "RecordingStatus",
    "Rewrap",
    "Role",
    "StoredObject",
    "Tenant",
    "Token",
    "async_database_url",
    "canonical_json",
    "event_hash",
    "mask_database_url",
]
