"""The values the catalog hands out.

Every repository method of ``Catalog`` returns these frozen dataclasses, never ORM objects
or rows, so a caller never holds a session, a connection or a lazy attribute that would
touch the database later. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

Role = Literal["operator", "admin", "pbx", "processor"]
RecordingStatus = Literal["recording", "recorded", "processing", "analyzed", "failed", "deleted"]
DataClass = Literal["recordings", "transcripts"]
ObjectState = Literal["writing", "committed", "deleted"]
JobStatus = Literal["queued", "running", "done", "failed"]

ROLES: tuple[Role, ...] = ("operator", "admin", "pbx", "processor")
RECORDING_STATUSES: tuple[RecordingStatus, ...] = (
    "recording",
    "recorded",
    "processing",
    "analyzed",
    "failed",
    "deleted",
)
DATA_CLASSES: tuple[DataClass, ...] = ("recordings", "transcripts")
OBJECT_STATES: tuple[ObjectState, ...] = ("writing", "committed", "deleted")
NodeState = Literal["up", "stopped", "dead"]
NODE_STATES: tuple[NodeState, ...] = ("up", "stopped", "dead")
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "done", "failed")


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """A time as callvault writes it everywhere (API answers, audit details, webhooks, logs,
    the CLI): UTC ISO-8601 with a ``Z``, microseconds when it has any."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


LimitName = Literal["live_calls", "rtp_calls", "announces_per_minute"]
LIMIT_NAMES: tuple[LimitName, ...] = ("live_calls", "rtp_calls", "announces_per_minute")


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's limits on calls, counted across every node that shares the catalog:
    calls live at once, RTP calls live at once, and calls announced in any 60 s."""

    live_calls: int
    rtp_calls: int
    announces_per_minute: int

    def merged(self, overrides: dict[str, int] | None) -> TenantLimits:
        """These limits (the defaults) with the operator's ``overrides`` of the tenant on
        top; a key it does not set keeps its default."""
        merged: dict[str, int] = self.document()
        for name, value in (overrides or {}).items():
            if name in LIMIT_NAMES:
                merged[name] = value
        return TenantLimits(**merged)

    def document(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMIT_NAMES}


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    region: str
    created_at: datetime
    deleted_at: datetime | None
    limits: dict[str, int] | None
    """The operator's overrides of the default limits (``TenantLimits``); a limit it does
    not name follows the setting's default."""


@dataclass(frozen=True, slots=True)
class Token:
    """An API token; only the SHA-256 of the secret is ever stored."""

    id: str
    tenant_id: str | None
    """``None`` for operator tokens, which belong to no tenant."""
    role: Role
    token_hash: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    expires_at: datetime | None = None
    """When the token stops working; ``None``: never (until revoked)."""
    break_glass: bool = False
    """Minted by the operator for a tenant that has had an admin: it mints no token."""
    from_env: bool = False
    """An operator token that is, or was, the value of ``CALLVAULT_OPERATOR_TOKEN``."""

    def active(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now`` (a token is refused from its expiry on)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Instructions:
    """One immutable version of a tenant's documented instructions."""

    tenant_id: str
    version: int
    document: dict[str, Any]
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class Call:
    """The call record (CDR) of an announced call, accepted or refused."""

    tenant_id: str
    id: str
    from_number: str
    to_number: str
    direction: str
    consent: str
    transport: str
    codec: str
    sample_rate: int
    instructions_version: int | None
    decision: dict[str, Any]
    refusal_code: str | None
    started_at: datetime
    ended_at: datetime | None
    paused: bool = False
    """The PBX paused it; its audio is discarded until it resumes."""
    node_id: str | None = None
    """The node (``nodes.id``) that took the call, or the last one that took it up; ``None``
    for calls from before the node registry."""
    first_streamed_at: datetime | None = None
    """When a stream first carried the call (its first claim): the origin of its timeline
    on every node; ``None`` until then, and for RTP calls."""


CallKey = tuple[datetime, str]
"""A call record's place in the oldest-first order of call records, ``(started_at, id)``:
a keyset cursor."""

RecordingKey = tuple[datetime, str, str]
"""A recording's place in the oldest-call-first order, ``(started_at, call id, recording
id)`` of its call and itself: a keyset cursor."""


@dataclass(frozen=True, slots=True)
class NumberCalls:
    """The call records where a number is a party, as one moment saw them: how many, how
    many have a recording, and the place of the last one (``None`` when there are none),
    which bounds a read that pages through them from then on."""

    calls: int
    recordings: int
    last: CallKey | None


@dataclass(frozen=True, slots=True)
class Node:
    """One ``serve`` of the fleet in the catalog's node registry."""

    id: str
    addresses: dict[str, Any]
    """Where its ingest listeners are (what its announcements hand the PBX)."""
    state: NodeState
    """``up`` (heartbeating), ``stopped`` (shut down cleanly) or ``dead`` (declared so by
    another node when its heartbeat stopped)."""
    started_at: datetime
    heartbeat_at: datetime
    dead_at: datetime | None

    def silent(self, now: datetime, dead_after: timedelta) -> bool:
        """Not up at ``now``: stopped, declared dead, or its last heartbeat is older than
        ``dead_after`` (nobody has declared it yet). Its spool is out of reach until it
        comes back."""
        return self.state != "up" or now - self.heartbeat_at > dead_after


@dataclass(frozen=True, slots=True)
class StreamLease:
    """Which stream carries a streamed call (Twilio, fork, AudioSocket), as the catalog
    knows it (``catalog.calls``)."""

    peer: str | None
    """AudioSocket: the IP address of the call's first connection; a connection from any
    other is refused. ``None`` until the first connection, and for other transports."""
    attached_by: str | None
    """The stream (its connection) that carries the call, or ``None``."""
    attached_until: datetime | None
    """With ``attached_by``: when its lease ends unless renewed; without: when the last
    connection detached (``None`` if none ever attached)."""
    ended: bool
    """The call has ended."""
    first_streamed_at: datetime | None = None
    """When a stream first claimed the call: its timeline's origin (``Call``)."""

    def held_by_other(self, holder: str | None, now: datetime) -> bool:
        """Another connection than ``holder`` carries the call and its lease runs at ``now``."""
        return (
            self.attached_by is not None
            and self.attached_by != holder
            and self.attached_until is not None
            and now < self.attached_until
        )


@dataclass(frozen=True, slots=True)
class StreamRenewal:
    """What one renewal of a node's stream leases found (``Calls.renew_streams``)."""

    renewed: dict[tuple[str, str], bool]
    """The ``(tenant, call id)`` renewed, each with whether the call is paused now (a pause
    sent through another node reaches the carrying node this way)."""
    ended: set[tuple[str, str]]
    """Those not renewed because the call has ended (on any node)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A named lease of the fleet (``catalog.leases``): ``owner`` holds ``name`` until
    ``until`` unless it renews it; from then on anyone may take it over."""

    name: str
    owner: str
    until: datetime


@dataclass(frozen=True, slots=True)
class Recording:
    id: str
    tenant_id: str
    call_id: str
    status: RecordingStatus
    instructions_version: int
    created_at: datetime
    ended_at: datetime | None
    audio_purged: bool
    failure_reason: str | None
    deleted_at: datetime | None
    delete_reason: str | None
    samples: int | None = None
    """The call's timeline length in samples, known once the recording is finalized."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A sealed object in the object store (its bytes live there, its DEK in the key table)."""

    id: str
    tenant_id: str
    recording_id: str | None
    kind: str
    track: str | None
    data_class: DataClass
    store_key: str
    size: int | None
    state: ObjectState
    created_at: datetime
    committed_at: datetime | None
    deleted_at: datetime | None
    node_id: str | None = None
    """The node whose spool held the object's bytes while it was ``writing`` (published
    from there); ``None`` for an object written straight to the store."""


@dataclass(frozen=True, slots=True)
class ObjectKeyRow:
    """One row of the key table: the wrapped DEK of one object, and nothing else."""

    object_id: str
    tenant_id: str
    kek_id: str
    kek_version: int
    wrapped_dek: bytes
    created_at: datetime
    rewrapped_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    tenant_id: str
    recording_id: str | None
    kind: str
    status: JobStatus
    attempts: int
    max_attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] | None = None
    """What the job needs besides its recording (a webhook's event); never content."""


@dataclass(frozen=True, slots=True)
class LegalHold:
    """A hold on a tenant's data: by call ids or by a phone number (either party)."""

    id: str
    tenant_id: str
    number: str | None
    call_ids: tuple[str, ...] | None
    reason: str
    created_at: datetime
    created_by: str
    released_at: datetime | None
    released_by: str | None

    def covers(self, call_id: str, from_number: str, to_number: str) -> bool:
        """Whether this hold (released or not) covers the call."""
        if self.number is not None:
            return self.number in (from_number, to_number)
        return self.call_ids is not None and call_id in self.call_ids


@dataclass(frozen=True, slots=True)
class DueObject:
    """An object the retention sweep or an erasure may delete, with what decides it: the
    call it belongs to (its end, its parties, for windows and holds)."""

    id: str
    tenant_id: str
    store_key: str
    kind: str
    data_class: DataClass
    size: int | None
    state: ObjectState
    recording_id: str
    recording_status: RecordingStatus
    delete_reason: str | None
    """Set when an erasure (or the tenant's deletion) was requested for its recording."""
    call_id: str
    from_number: str
    to_number: str
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class DueRecording:
    """A recording that has no object left to delete, and its call."""

    id: str
    tenant_id: str
    status: RecordingStatus
    delete_reason: str | None
    deleted_at: datetime | None
    call_id: str
    from_number: str
    to_number: str
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class DueCall:
    """A call record (CDR) the sweep may delete, with its recording's id if it had one."""

    tenant_id: str
    id: str
    from_number: str
    to_number: str
    ended_at: datetime
    recording_id: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit event to append (the catalog numbers and chains it)."""

    actor: str
    action: str
    object: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to queue with ``catalog.jobs.enqueue_many`` (due now, no attempt made yet)."""

    id: str
    kind: str
    recording_id: str | None = None
    max_attempts: int = 3
    payload: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One link of a tenant's hash-chained audit log (ids and small metadata only)."""

    tenant_id: str
    seq: int
    at: datetime
    actor: str
    action: str
    object: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


AuditReason = Literal[
    "chain",
    "head",
    "behind_checkpoint",
    "checkpoint_mismatch",
    "checkpoint_signature",
    "not_keyed",
]


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """The outcome of ``catalog.audit.verify``; unpacks as ``ok, broken_at, count``."""

    ok: bool
    broken_at: int | None
    """The first sequence number that is altered, missing or out of place."""
    count: int
    """How many events the tenant's log holds."""
    reason: AuditReason | None = None
    """When not ok, what is wrong (``AUDIT_REASONS`` says each in words)."""
    checkpoint: int | None = None
    """The sequence number of the latest checkpoint the chain was checked against."""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ok, self.broken_at, self.count))


AUDIT_REASONS: dict[AuditReason, str] = {
    "chain": "an event does not follow the one before it or its hash does not match its "
    "content under the tenant's audit key: altered, removed, moved or forged",
    "head": "the events form a chain that is not the one the tenant's head names: events "
    "removed from the end, or added past the head",
    "behind_checkpoint": "the chain ends before the latest checkpoint: events it signed are "
    "gone (the log was cut back)",
    "checkpoint_mismatch": "the event at the latest checkpoint's sequence number is not the "
    "one it signed (the log was rewritten)",
    "checkpoint_signature": "the latest checkpoint's signature does not verify under the "
    "gateway's public key (the checkpoint row was altered or forged)",
    "not_keyed": "the tenant's chain has not been re-keyed under its audit key yet",
}
"""Why ``verify`` can fail, in words for the CLI and the API's documentation."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The gateway's signature of a tenant's audit chain head (``seq``, ``hash``) at ``at``."""

    tenant_id: str
    seq: int
    hash: str
    at: datetime
    key_id: str
    signature: str
    """Base64 of the Ed25519 signature of ``auditchain.checkpoint_message``."""
