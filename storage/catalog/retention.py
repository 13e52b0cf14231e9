"""The retention and erasure queries: what is due for deletion, and the deletion steps.

Deleting an object takes four steps, each safe to repeat: shred its key row, delete its
bytes, mark its row deleted together with the audit receipt, and, once a recording has
nothing left, mark the recording deleted with its own receipt. A crash between any two
leaves the object selectable by the same query, so the next sweep finishes the work. The
sweeper that drives these steps, and decides on the exact windows and holds, is
``storage.retention``.

Every write here locks the tenant row (``lock_tenant``) before the rows it changes, as
every other writer of the catalog does (the audit receipt needs that lock anyway): a writer
that took rows first and the tenant last would deadlock on PostgreSQL with one that takes
the tenant and then those rows (``settle_deleted_tenant``, ``request_deletion``, a
recording's finish).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa

from storage.catalog.audit import append_entries
from storage.catalog.core import IN_BATCH, WRITE_CHUNK, CatalogCore, lock_tenant, record
from storage.catalog.holds import active_holds
from storage.catalog.jobs import enqueue_new_jobs
from storage.catalog.recordings import require_recording
from storage.catalog.records import (
    AuditEntry,
    DataClass,
    DueCall,
    DueObject,
    DueRecording,
    NewJob,
    Recording,
)
from storage.catalog.schema import (
    calls,
    instructions,
    jobs,
    legal_holds,
    object_keys,
    objects,
    recordings,
)
from storage.errors import Conflict, HeldByLegalHold
from storage.instructions import SEALED_SECRET_PREFIX


def _has_live_objects() -> sa.Exists:
    """Whether the recording of the enclosing query still has an object not deleted."""
    return (
        sa.select(objects.c.id)
        .where(objects.c.recording_id == recordings.c.id, objects.c.state != "deleted")
        .exists()
    )


class Retention:
    """``catalog.retention``: the queries and writes of retention, erasure and tenant
    deletion."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def due_objects(
        self,
        tenant_id: str,
        *,
        cutoffs: dict[DataClass, datetime] | None,
        after: str | None = None,
        limit: int = 1000,
        recording_ids: Sequence[str] | None = None,
    ) -> list[DueObject]:
        """Objects of the tenant not yet deleted, by id after ``after``: those of recordings
        whose erasure was requested, and committed ones of calls that ended at or before
        their data class's cutoff. ``cutoffs=None``: every object (a deleted tenant).
        ``recording_ids``: only those recordings' objects.

        The cutoffs pre-select; the caller applies the exact window and the holds."""
        stmt = (
            sa.select(
                objects.c.id,
                objects.c.tenant_id,
                objects.c.store_key,
                objects.c.kind,
                objects.c.data_class,
                objects.c.size,
                objects.c.state,
                objects.c.recording_id,
                recordings.c.status.label("recording_status"),
                recordings.c.delete_reason,
                recordings.c.call_id,
                calls.c.from_number,
                calls.c.to_number,
                calls.c.ended_at,
            )
            .select_from(
                objects.join(recordings, recordings.c.id == objects.c.recording_id).join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(objects.c.tenant_id == tenant_id, objects.c.state != "deleted")
        )
        if cutoffs is not None:
            due = [recordings.c.status == "deleted"]
            due.extend(
                sa.and_(
                    objects.c.state == "committed",
                    objects.c.data_class == data_class,
                    calls.c.ended_at <= cutoff,
                )
                for data_class, cutoff in cutoffs.items()
            )
            stmt = stmt.where(sa.or_(*due))
        if recording_ids is not None:
            stmt = stmt.where(objects.c.recording_id.in_(list(recording_ids)))
        return await self._core.page(stmt, objects.c.id, DueObject, after=after, limit=limit)

    async def shred_keys(
        self, tenant_id: str, candidates: Sequence[DueObject], *, check_holds: bool = True
    ) -> list[DueObject]:
        """Shred many objects at once: delete their key rows. With ``check_holds`` the
        tenant's active holds are read in the same transaction, under the lock that placing
        a hold takes, and the objects they cover are left alone, so that a hold placed while
        a sweep or an erasure runs is never overtaken. Returns the candidates not held (whose
        keys are gone now, or were already)."""
        async with self._core.transaction(write=True) as conn:
            kept = list(candidates)
            if check_holds:
                await lock_tenant(conn, tenant_id, live=False)
                holds = await active_holds(conn, tenant_id)
                kept = [
                    o
                    for o in kept
                    if not any(h.covers(o.call_id, o.from_number, o.to_number) for h in holds)
                ]
            for start in range(0, len(kept), IN_BATCH):
                chunk = [o.id for o in kept[start : start + IN_BATCH]]
                await conn.execute(
                    sa.delete(object_keys).where(
                        object_keys.c.tenant_id == tenant_id, object_keys.c.object_id.in_(chunk)
                    )
                )
        await self._core.forget_deleted_rows()
        return kept

    async def mark_objects_deleted(
        self,
        tenant_id: str,
        object_ids: Sequence[str],
        now: datetime,
        *,
        receipts: Callable[[list[str]], Sequence[AuditEntry]],
    ) -> list[str]:
        """Mark the tenant's objects deleted and append ``receipts(marked)`` to its audit log
        in the same transaction, one transaction per ``WRITE_CHUNK`` objects (short, so
        that ingest's writes are not held up); ``marked`` are the ids a transaction moved
        (not ones already deleted, so two sweeps racing write one receipt). Returns all the
        ids moved."""
        marked: list[str] = []
        for start in range(0, len(object_ids), WRITE_CHUNK):
            chunk = list(object_ids[start : start + WRITE_CHUNK])
            async with self._core.transaction(write=True) as conn:
                await lock_tenant(conn, tenant_id, live=False)  # the tenant first
                result = await conn.execute(
                    sa.update(objects)
                    .where(
                        objects.c.tenant_id == tenant_id,
                        objects.c.id.in_(chunk),
                        objects.c.state != "deleted",
                    )
                    .values(state="deleted", deleted_at=now)
                    .returning(objects.c.id)
                )
                moved = list(result.scalars())
                await append_entries(
                    conn, tenant_id, receipts(moved), now, keys=self._core.audit_keys
                )
            marked.extend(moved)
        return marked

    async def request_deletion(
        self,
        tenant_id: str,
        recording_ids: Sequence[str],
        reason: str,
        now: datetime,
        *,
        audit: Sequence[AuditEntry] = (),
    ) -> list[Recording]:
        """Record that the recordings are to be erased (status ``deleted``, ``delete_reason``
        set, ``deleted_at`` still empty until their last object is gone), with ``audit``, in
        one transaction. Readers see them deleted at once; a sweep finishes an erasure that
        a crash interrupted. ``HeldByLegalHold`` if an active hold covers one (checked under
        the lock that placing a hold takes); ``Conflict`` if one is still being recorded."""
        async with self._core.transaction(write=True) as conn:
            await lock_tenant(conn, tenant_id, live=True)
            holds = await active_holds(conn, tenant_id)
            rows = []
            for recording_id in recording_ids:
                current = await require_recording(conn, tenant_id, recording_id)
                call = (
                    await conn.execute(
                        sa.select(calls.c.from_number, calls.c.to_number).where(
                            calls.c.tenant_id == tenant_id, calls.c.id == current.call_id
                        )
                    )
                ).one()
                for hold in holds:
                    if hold.covers(current.call_id, call.from_number, call.to_number):
                        raise HeldByLegalHold(
                            hold.id,
                            f"Legal hold {hold.id!r} covers call {current.call_id!r}; "
                            "release it first.",
                        )
                if current.status == "recording":
                    raise Conflict(
                        f"Recording {recording_id!r} is still being recorded; end the call first.",
                        code="recording_in_progress",
                    )
                if current.status == "deleted":
                    rows.append(current)
                    continue
                rows.append(
                    (
                        await conn.execute(
                            sa.update(recordings)
                            .where(recordings.c.id == recording_id)
                            .values(status="deleted", delete_reason=reason)
                            .returning(*recordings.c)
                        )
                    ).one()
                )
            await append_entries(conn, tenant_id, audit, now, keys=self._core.audit_keys)
        return [record(Recording, row) for row in rows]

    async def due_recordings(
        self,
        tenant_id: str,
        *,
        cutoff: datetime | None,
        after: str | None = None,
        limit: int = 1000,
        recording_ids: Sequence[str] | None = None,
    ) -> list[DueRecording]:
        """Recordings with no object left to delete that are not finally deleted, by id
        after ``after``: those whose erasure was requested, and those of calls that ended at
        or before ``cutoff`` (``None``: all, for a deleted tenant); ``recording_ids``: only
        those."""
        live_objects = _has_live_objects()
        stmt = (
            sa.select(
                recordings.c.id,
                recordings.c.tenant_id,
                recordings.c.status,
                recordings.c.delete_reason,
                recordings.c.deleted_at,
                recordings.c.call_id,
                calls.c.from_number,
                calls.c.to_number,
                calls.c.ended_at,
            )
            .select_from(
                recordings.join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(
                recordings.c.tenant_id == tenant_id,
                recordings.c.deleted_at.is_(None),
                recordings.c.status != "recording",
                ~live_objects,
            )
        )
        if cutoff is not None:
            stmt = stmt.where(sa.or_(recordings.c.status == "deleted", calls.c.ended_at <= cutoff))
        if recording_ids is not None:
            stmt = stmt.where(recordings.c.id.in_(list(recording_ids)))
        return await self._core.page(stmt, recordings.c.id, DueRecording, after=after, limit=limit)

    async def complete_deletions(
        self,
        tenant_id: str,
        reasons: dict[str, str],
        now: datetime,
        *,
        receipts: Callable[[list[Recording]], Sequence[AuditEntry]],
        events: Callable[[list[Recording]], Sequence[NewJob]] | None = None,
    ) -> list[Recording]:
        """Mark recordings finally deleted (``reasons``: recording id -> reason, kept if an
        erasure already named one) when they still have no object left, and append
        ``receipts(completed)`` and queue the jobs ``events(completed)`` (their webhook
        events; an id already queued is skipped) in the same transaction (one per
        ``WRITE_CHUNK`` recordings). ``completed`` are the recordings a transaction moved,
        so two sweeps (or two batches of one) racing to complete a recording write its
        receipt and queue its events once, and a crash never leaves one without the
        other. Returns the completed ones."""
        live_objects = _has_live_objects()
        by_reason: dict[str, list[str]] = {}
        for recording_id, reason in reasons.items():
            by_reason.setdefault(reason, []).append(recording_id)
        completed: list[Recording] = []
        for reason, ids in by_reason.items():
            for start in range(0, len(ids), WRITE_CHUNK):
                async with self._core.transaction(write=True) as conn:
                    await lock_tenant(conn, tenant_id, live=False)  # the tenant first
                    result = await conn.execute(
                        sa.update(recordings)
                        .where(
                            recordings.c.id.in_(ids[start : start + WRITE_CHUNK]),
                            recordings.c.tenant_id == tenant_id,
                            recordings.c.deleted_at.is_(None),
                            recordings.c.status != "recording",
                            ~live_objects,
                        )
                        .values(
                            status="deleted",
                            deleted_at=now,
                            delete_reason=sa.func.coalesce(recordings.c.delete_reason, reason),
                        )
                        .returning(*recordings.c)
                    )
                    moved = sorted((record(Recording, row) for row in result), key=lambda r: r.id)
                    await append_entries(
                        conn, tenant_id, receipts(moved), now, keys=self._core.audit_keys
                    )
                    if events is not None and moved:
                        await enqueue_new_jobs(conn, tenant_id, events(moved), now)
                completed.extend(moved)
        return completed

    async def settle_deleted_tenant(self, tenant_id: str, now: datetime) -> None:
        """For a deleted tenant: mark recordings still ``recording`` (a crash ended its
        calls' sessions before they were finalized) for deletion and end its calls, so that
        the sweep removes them like the rest. ``Conflict`` for a live tenant."""
        async with self._core.transaction(write=True) as conn:
            row = await lock_tenant(conn, tenant_id, live=False)
            if row.deleted_at is None:
                raise Conflict(f"Tenant {tenant_id!r} is not deleted.")
            await conn.execute(
                sa.update(recordings)
                .where(recordings.c.tenant_id == tenant_id, recordings.c.status == "recording")
                .values(status="deleted", delete_reason="tenant")
            )
            await conn.execute(
                sa.update(calls)
                .where(calls.c.tenant_id == tenant_id, calls.c.ended_at.is_(None))
                .values(ended_at=now)
            )

    async def forget_deleted_tenant(self, tenant_id: str) -> bool:
        """For a deleted tenant whose calls are all gone: delete what is left that could
        hold personal data (its holds, whose numbers are phone numbers; its instruction
        versions, with their excluded numbers and sealed webhook secret, and that secret's
        key row; its jobs; rows of deleted objects). The tenant row, its token hashes and its
        audit log stay. Returns whether it was done (``False`` while calls remain)."""
        async with self._core.transaction(write=True) as conn:
            row = await lock_tenant(conn, tenant_id, live=False)
            if row.deleted_at is None:
                raise Conflict(f"Tenant {tenant_id!r} is not deleted.")
            remaining = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(calls)
                    .where(calls.c.tenant_id == tenant_id)
                )
            ).scalar_one()
            if remaining:
                return False
            await conn.execute(sa.delete(jobs).where(jobs.c.tenant_id == tenant_id))
            await conn.execute(sa.delete(legal_holds).where(legal_holds.c.tenant_id == tenant_id))
            await conn.execute(
                sa.delete(objects).where(
                    objects.c.tenant_id == tenant_id, objects.c.state == "deleted"
                )
            )
            await conn.execute(sa.delete(instructions).where(instructions.c.tenant_id == tenant_id))
            await conn.execute(
                sa.delete(object_keys).where(
                    object_keys.c.tenant_id == tenant_id,
                    object_keys.c.object_id.startswith(SEALED_SECRET_PREFIX, autoescape=True),
                )
            )
        await self._core.forget_deleted_rows()
        return True

    async def due_calls(
        self,
        tenant_id: str,
        *,
        cutoff: datetime | None,
        after: str | None = None,
        limit: int = 1000,
        call_ids: Sequence[str] | None = None,
    ) -> list[DueCall]:
        """Call records that ended at or before ``cutoff`` (``None``: every ended one, for a
        deleted tenant) with no recording, or only a finally deleted one, by id after
        ``after``; ``call_ids``: only those."""
        pending = (
            sa.select(recordings.c.id)
            .where(
                recordings.c.tenant_id == calls.c.tenant_id,
                recordings.c.call_id == calls.c.id,
                recordings.c.deleted_at.is_(None),
            )
            .exists()
        )
        recording_id = (
            sa.select(recordings.c.id)
            .where(recordings.c.tenant_id == calls.c.tenant_id, recordings.c.call_id == calls.c.id)
            .limit(1)
            .scalar_subquery()
        )
        stmt = sa.select(
            calls.c.tenant_id,
            calls.c.id,
            calls.c.from_number,
            calls.c.to_number,
            calls.c.ended_at,
            recording_id.label("recording_id"),
        ).where(calls.c.tenant_id == tenant_id, calls.c.ended_at.is_not(None), ~pending)
        if cutoff is not None:
            stmt = stmt.where(calls.c.ended_at <= cutoff)
        if call_ids is not None:
            stmt = stmt.where(calls.c.id.in_(list(call_ids)))
        return await self._core.page(stmt, calls.c.id, DueCall, after=after, limit=limit)

    async def delete_call_records(
        self,
        tenant_id: str,
        call_ids: Sequence[str],
        now: datetime,
        *,
        receipts: Callable[[list[str]], Sequence[AuditEntry]],
    ) -> list[str]:
        """Delete call records and what remains of their recordings (the content-free
        tombstones: recording and object rows, finished jobs), skipping any whose recording
        is not finally deleted, and append ``receipts(deleted call ids)``, in one
        transaction per ``WRITE_CHUNK`` calls. Webhook events not yet delivered are kept,
        unlinked."""
        deleted: list[str] = []
        for start in range(0, len(call_ids), WRITE_CHUNK):
            async with self._core.transaction(write=True) as conn:
                await lock_tenant(conn, tenant_id, live=False)  # the tenant first
                chunk = list(call_ids[start : start + WRITE_CHUNK])
                blocked = set(
                    (
                        await conn.execute(
                            sa.select(recordings.c.call_id).where(
                                recordings.c.tenant_id == tenant_id,
                                recordings.c.call_id.in_(chunk),
                                recordings.c.deleted_at.is_(None),
                            )
                        )
                    ).scalars()
                )
                chunk = [call_id for call_id in chunk if call_id not in blocked]
                if not chunk:
                    continue
                gone = sa.select(recordings.c.id).where(
                    recordings.c.tenant_id == tenant_id, recordings.c.call_id.in_(chunk)
                )
                # A webhook event still to be delivered (a recording.deleted queued in this
                # very sweep) outlives the row it names: it carries the ids in its payload.
                await conn.execute(
                    sa.update(jobs)
                    .where(
                        jobs.c.recording_id.in_(gone),
                        jobs.c.kind == "webhook",
                        jobs.c.status.in_(("queued", "running")),
                    )
                    .values(recording_id=None)
                )
                await conn.execute(sa.delete(jobs).where(jobs.c.recording_id.in_(gone)))
                await conn.execute(
                    sa.delete(object_keys).where(
                        object_keys.c.object_id.in_(
                            sa.select(objects.c.id).where(objects.c.recording_id.in_(gone))
                        )
                    )
                )
                await conn.execute(sa.delete(objects).where(objects.c.recording_id.in_(gone)))
                await conn.execute(
                    sa.delete(recordings).where(
                        recordings.c.tenant_id == tenant_id, recordings.c.call_id.in_(chunk)
                    )
                )
                result = await conn.execute(
                    sa.delete(calls)
                    .where(calls.c.tenant_id == tenant_id, calls.c.id.in_(chunk))
                    .returning(calls.c.id)
                )
                moved = list(result.scalars())
                await append_entries(
                    conn, tenant_id, receipts(moved), now, keys=self._core.audit_keys
                )
            deleted.extend(moved)
        return deleted
