"""The retention sweeper: deletes what the tenant's windows, an erasure or the tenant's
deletion say must go, in an order that a crash cannot break.

Windows come from the tenant's *current* instructions, per data class (``recordings``:
audio; ``transcripts``: transcripts and analyses; ``call_records``: the CDR and the
content-free tombstone of its recording), counted from the end of the call, so a shortened
window applies to data already stored at the next sweep. No class outlives the call
record it belongs to. Data a legal hold covers is skipped until the hold is released.

One deletion, for a batch of up to 1000 objects, is four steps, each safe to repeat:

1. shred: delete the objects' key rows (their wrapped DEKs), so the bytes are unreadable
   everywhere, backups included;
2. delete the bytes from the store (every version on S3, in requests of up to 1000 keys);
3. mark the object rows deleted and write the audit receipts (``data.deleted``, one per
   recording) in one catalog transaction;
4. once a finished recording has nothing left, mark it deleted with its receipt
   (``recording.deleted``) and its ``recording.deleted`` webhook event in one transaction,
   only if that transaction moved it (two batches in flight may both find it due); the
   event's id comes from the recording, so one queued by an older version is not queued
   again; the call record and the recording's row stay, content-free, until
   ``call_records`` expires (``call_record.deleted``).

A crash between any two steps leaves the rows where the same queries select them again, so
the next sweep finishes the work and writes each receipt, and queues each event, exactly
once.

One sweeper per tenant at a time, across the fleet: every node's ``serve`` sweeps, and so
may ``callvault retention sweep``, so ``sweep`` takes the catalog lease
``retention:<tenant>`` before it sweeps a tenant, renews it while the tenant's sweep runs
and releases it after; a tenant whose lease another process holds is skipped (the report's
``skipped_tenants``, metric ``callvault_retention_skipped``). The lease spares the fleet
doubled work, not correctness: each step above is a conditional transition (a key row
deleted once, an object or recording moved to ``deleted`` once, its receipt written by the
transaction that moved it), so two sweepers that do meet (a holder that stalled past its
lease, the immediate sweep of a deleted tenant) still delete and audit each object once.

Beside ingest: no catalog transaction is held across store I/O; bulk writes commit 250 rows
at a time, and on SQLite wait their turn behind ingest's writes rather than starving them;
two batches overlap (one's S3 deletion, another's catalog steps). What remains is CPU work
on a batch between awaits, which delays the event loop by tens of milliseconds at times
(``bench/retention.py`` measures it; ``callvault retention sweep`` runs it in a process of
its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter as Counter_
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from crypto.errors import CallvaultError
from storage.catalog import (
    AuditEntry,
    Catalog,
    DataClass,
    DueCall,
    DueObject,
    DueRecording,
    LegalHold,
    NewJob,
    Recording,
    Tenant,
)
from storage.instructions import Duration, RetentionRule, parse_duration
from storage.leaseholder import HeldLease, lease_owner
from storage.store import ObjectStore

log = logging.getLogger(__name__)

ACTOR = "retention"
"""The audit actor of the sweeper's own deletions."""
BATCH = 1000
"""Objects per deletion batch: one S3 ``DeleteObjects`` request holds at most 1000 keys."""
IN_FLIGHT = 2
"""Batches whose deletion overlaps (store I/O of one, catalog I/O of another)."""
MAX_IDS_IN_RECEIPT = 40
"""Object ids listed in one ``data.deleted`` receipt (the count is always complete)."""
LEASE_TTL = timedelta(minutes=5)
"""How long a tenant's retention lease runs unless renewed; its holder renews it every third
of that while it sweeps. A node that dies mid-sweep holds the tenant back this long at most
(sweeps come every minute by default: nothing is late by more than a few of them)."""
LEASE_PREFIX = "retention:"
"""The name of a tenant's retention lease is this prefix and the tenant's id."""

DeleteReason = Literal["retention", "erasure", "tenant"]


@dataclass(frozen=True)
class Windows:
    """A tenant's retention windows, per data class."""

    recordings: Duration
    transcripts: Duration
    call_records: Duration

    @classmethod
    def of(cls, rule: RetentionRule) -> Windows:
        """The windows an instructions document's retention rule sets."""
        return cls(
            recordings=parse_duration(rule.recordings),
            transcripts=parse_duration(rule.transcripts),
            call_records=parse_duration(rule.call_records),
        )

    def _of(self, data_class: DataClass) -> Duration:
        return self.recordings if data_class == "recordings" else self.transcripts

    def expires(self, data_class: DataClass, ended_at: datetime) -> datetime:
        """When data of the class of a call that ended at ``ended_at`` must be gone: at the
        end of its window, and never after its call record's."""
        return min(self._of(data_class).after(ended_at), self.call_records.after(ended_at))

    def first_expires(self, ended_at: datetime) -> datetime:
        """When the first data class of a call that ended at ``ended_at`` expires: from then
        on, a finished recording with nothing left in the store is deleted."""
        return min(self.expires("recordings", ended_at), self.expires("transcripts", ended_at))

    def cutoff(self, data_class: DataClass, now: datetime) -> datetime:
        """A call end after which no data of the class can have expired at ``now`` (the
        catalog pre-selects with it; ``expires`` decides exactly)."""
        shortest = min(self._of(data_class).shortest(), self.call_records.shortest())
        return now - shortest


async def current_windows(catalog: Catalog, tenant: str) -> Windows:
    """The retention windows of the tenant's current instructions (defaults if it has
    none): a changed window applies to data already stored."""
    return Windows.of((await catalog.instructions.current(tenant)).document.retention)


DeletedEvents = Callable[[Sequence[tuple[str, str]]], list[NewJob]]
"""The jobs of the ``recording.deleted`` webhook events of recordings marked deleted now,
given (recording id, reason) pairs; each job's id is ``deleted_event_id`` of its
recording."""


class Notify(Protocol):
    """Reads what a tenant's ``recording.deleted`` webhook events need (its webhook URL)
    once, and returns the builder of their jobs, or ``None`` when the tenant has no webhook
    URL (``gateway.webhooks.deletion_notifier``). The jobs are queued in the transaction
    that marks the recordings deleted, for the recordings it moved only."""

    def __call__(self, *, tenant: str, now: datetime) -> Awaitable[DeletedEvents | None]: ...


class Holds:
    """A tenant's active legal holds, for telling which cover a call."""

    def __init__(self, holds: Iterable[LegalHold]) -> None:
        self.holds = list(holds)
        self._by_call: dict[str, list[LegalHold]] = defaultdict(list)
        self._by_number: dict[str, list[LegalHold]] = defaultdict(list)
        for hold in self.holds:
            if hold.number is not None:
                self._by_number[hold.number].append(hold)
            for call_id in hold.call_ids or ():
                self._by_call[call_id].append(hold)

    def covering(self, call_id: str, from_number: str, to_number: str) -> list[LegalHold]:
        """The holds that cover the call (empty: none), oldest first."""
        found = [
            *self._by_call.get(call_id, ()),
            *self._by_number.get(from_number, ()),
            *self._by_number.get(to_number, ()),
        ]
        unique = {hold.id: hold for hold in found}
        return sorted(unique.values(), key=lambda hold: (hold.created_at, hold.id))


@dataclass
class SweepReport:
    """What one sweep (or one erasure) did."""

    objects_deleted: int = 0
    bytes_deleted: int = 0
    recordings_deleted: int = 0
    call_records_deleted: int = 0
    held: int = 0
    """Objects, recordings and call records that were due but kept for a legal hold."""
    failed_tenants: list[str] = field(default_factory=list)
    skipped_tenants: list[str] = field(default_factory=list)
    """Tenants another process was sweeping (it held their retention lease)."""

    def add(self, other: SweepReport) -> None:
        self.objects_deleted += other.objects_deleted
        self.bytes_deleted += other.bytes_deleted
        self.recordings_deleted += other.recordings_deleted
        self.call_records_deleted += other.call_records_deleted
        self.held += other.held
        self.failed_tenants.extend(other.failed_tenants)
        self.skipped_tenants.extend(other.skipped_tenants)

    def as_dict(self) -> dict[str, Any]:
        return {
            "objects_deleted": self.objects_deleted,
            "bytes_deleted": self.bytes_deleted,
            "recordings_deleted": self.recordings_deleted,
            "call_records_deleted": self.call_records_deleted,
            "held": self.held,
            "failed_tenants": list(self.failed_tenants),
            "skipped_tenants": list(self.skipped_tenants),
        }


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sweeps = Counter(
            "callvault_retention_sweeps",
            "Retention sweeps by outcome (ok, failed: a tenant's sweep failed).",
            ["outcome"],
            registry=registry,
        )
        self.deleted = Counter(
            "callvault_retention_deleted",
            "What retention, erasures and tenant deletions deleted "
            "(objects, recordings, call_records), by reason.",
            ["what", "reason"],
            registry=registry,
        )
        self.bytes = Counter(
            "callvault_retention_deleted_bytes",
            "Bytes of sealed objects deleted, by reason.",
            ["reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "callvault_retention_skipped",
            "Tenants a sweep skipped because another process held their retention lease "
            "(it was sweeping them), or took it over during the sweep.",
            registry=registry,
        )
        self.seconds = Histogram(
            "callvault_retention_sweep_seconds",
            "Wall time of one sweep over every tenant.",
            buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
            registry=registry,
        )


def deleted_event_id(recording_id: str) -> str:
    """The id of a recording's ``recording.deleted`` webhook event: derived, so that a
    sweep finishing a crashed one queues it once."""
    digest = hashlib.sha256(f"{recording_id}|recording.deleted".encode()).hexdigest()[:32]
    return f"evt_{digest}"


def _held_or_erased(
    holds: Holds,
    call_id: str,
    from_number: str,
    to_number: str,
    status: str,
    delete_reason: str | None,
) -> str | None:
    """What decides before any window: ``"held"`` when a hold covers the call (also for an
    erasure that has not finished: a hold placed since wins), the erasure's reason when one
    was requested; ``None`` when the windows decide."""
    if holds.covering(call_id, from_number, to_number):
        return "held"
    if status == "deleted":
        return delete_reason or "erasure"
    return None


class RetentionSweeper:
    """Deletes expired data of every tenant, and finishes erasures and tenant deletions."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ObjectStore,
        notify: Notify | None = None,
        batch_size: int = BATCH,
        registry: CollectorRegistry | None = None,
        owner: str | None = None,
        lease_ttl: timedelta = LEASE_TTL,
        elapsed: Callable[[], float] = time.monotonic,
    ) -> None:
        """``owner``: this sweeper's name in the tenants' retention leases (default: host,
        process and a random part); ``elapsed``: the monotonic clock that renewals count
        by (see ``storage.leaseholder``)."""
        if not 1 <= batch_size <= BATCH:
            raise ValueError(f"batch_size must be 1..{BATCH}")
        self._catalog = catalog
        self._store = store
        self._notify = notify
        self._batch = batch_size
        self.owner = owner or lease_owner("retention")
        self._lease_ttl = lease_ttl
        self._elapsed = elapsed
        self.metrics = RetentionMetrics(registry)

    async def sweep(self, now: datetime) -> SweepReport:
        """One pass over every tenant (deleted ones too, whose leftovers go), each under its
        retention lease: a tenant another process is sweeping is skipped and named in the
        report. A tenant whose sweep fails is logged and named in the report; the others
        are still swept."""
        started = time.perf_counter()
        began = self._elapsed()
        report = SweepReport()
        for tenant in await self._catalog.tenants.list(include_deleted=True):
            # Each tenant's lease is claimed at the pass's ``now`` moved on by the time the
            # pass has taken so far: claimed at ``now`` itself, a tenant swept an hour into a
            # long pass would get a lease that ran out before it was claimed.
            claim_at = now + timedelta(seconds=self._elapsed() - began)
            try:
                report.add(await self._sweep_leased(tenant, now, claim_at))
            except CallvaultError as e:
                log.warning(
                    "retention sweep of tenant %s failed: %s: %s",
                    tenant.id,
                    e.code,
                    e.message,
                    extra={"tenant": tenant.id, "code": e.code},
                )
                report.failed_tenants.append(tenant.id)
        self.metrics.sweeps.labels("failed" if report.failed_tenants else "ok").inc()
        self.metrics.seconds.observe(time.perf_counter() - started)
        return report

    async def _sweep_leased(self, tenant: Tenant, now: datetime, claim_at: datetime) -> SweepReport:
        """``sweep_tenant`` at ``now`` under the tenant's retention lease, claimed at
        ``claim_at``; skipped (named in the report's ``skipped_tenants``) while another
        process holds it. One that another process took over (this sweep stalled past the
        lease) stops at its next page, its batches in flight finished, and is named there
        too, with what it did until then."""
        lease = await HeldLease.claim(
            self._catalog,
            LEASE_PREFIX + tenant.id,
            self.owner,
            now=claim_at,
            ttl=self._lease_ttl,
            elapsed=self._elapsed,
        )
        if lease is None:
            self.metrics.skipped.inc()
            return SweepReport(skipped_tenants=[tenant.id])
        try:
            report = await self.sweep_tenant(tenant, now, lease=lease)
        finally:
            await lease.release()
        if lease.lost:
            log.warning(
                "retention sweep of tenant %s stopped part-way: another process took its "
                "lease over (this one stalled past it) and carries on",
                tenant.id,
                extra={"tenant": tenant.id},
            )
            self.metrics.skipped.inc()
            report.skipped_tenants.append(tenant.id)
        return report

    async def sweep_tenant(
        self, tenant: Tenant, now: datetime, *, lease: HeldLease | None = None
    ) -> SweepReport:
        """Delete the tenant's due objects, then complete its recordings that have nothing
        left, then delete its expired call records. ``lease``: the tenant's retention lease,
        renewed between batches (``sweep`` passes it; a tenant's deletion sweeps at once,
        without one, which its conditional steps make safe beside another sweeper)."""
        if tenant.deleted_at is not None:
            await self._catalog.retention.settle_deleted_tenant(tenant.id, now)
            report = await self._sweep(tenant.id, None, Holds(()), now, "tenant", lease)
            await self._catalog.retention.forget_deleted_tenant(tenant.id)
            return report
        windows = await current_windows(self._catalog, tenant.id)
        holds = Holds(await self._catalog.holds.list(tenant.id, active_only=True))
        return await self._sweep(tenant.id, windows, holds, now, "retention", lease)

    async def _sweep(
        self,
        tenant: str,
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        reason: DeleteReason,
        lease: HeldLease | None,
    ) -> SweepReport:
        report = SweepReport()
        cutoffs: dict[DataClass, datetime] | None = None
        if windows is not None:
            cutoffs = {
                "recordings": windows.cutoff("recordings", now),
                "transcripts": windows.cutoff("transcripts", now),
            }
        after: str | None = None
        # Batches overlap: while one batch's bytes are deleted (store I/O) the next page is
        # read and shredded and the previous batch's rows are marked (catalog I/O); each
        # batch still goes through the steps in order. At most IN_FLIGHT batches at once.
        in_flight: deque[asyncio.Task[SweepReport]] = deque()
        try:
            while page := await self._catalog.retention.due_objects(
                tenant, cutoffs=cutoffs, after=after, limit=self._batch
            ):
                if lease is not None and not await lease.keep():
                    break  # another process took the tenant over: it carries on
                after = page[-1].id
                due: list[tuple[DueObject, str]] = []
                for stored in page:
                    why = self._object_due(stored, windows, holds, now, reason)
                    if why == "held":
                        report.held += 1
                    elif why is not None:
                        due.append((stored, why))
                shredded, held = await self._shred(tenant, due, check_holds=windows is not None)
                report.held += held
                if len(in_flight) >= IN_FLIGHT:
                    report.add(await in_flight.popleft())
                in_flight.append(
                    asyncio.create_task(
                        self._finish_batch(tenant, shredded, windows, holds, now, reason=reason)
                    )
                )
            while in_flight:
                report.add(await in_flight.popleft())
        finally:
            for task in in_flight:  # this sweep failed: the next one redoes what they did
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        report.add(
            await self._complete_recordings(tenant, windows, holds, now, reason=reason, lease=lease)
        )
        report.add(
            await self._delete_call_records(tenant, windows, holds, now, reason=reason, lease=lease)
        )
        return report

    @staticmethod
    def _object_due(
        stored: DueObject,
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        reason: DeleteReason,
    ) -> str | None:
        """Why the object goes now (its reason), ``"held"``, or ``None`` (not yet)."""
        if windows is None:
            return reason
        verdict = _held_or_erased(
            holds, stored.call_id, stored.from_number, stored.to_number,
            stored.recording_status, stored.delete_reason,
        )  # fmt: skip
        if verdict is not None:
            return verdict
        if stored.state != "committed" or stored.ended_at is None:
            return None
        if windows.expires(stored.data_class, stored.ended_at) > now:
            return None
        return reason

    async def _delete_objects(
        self,
        tenant: str,
        due: Sequence[tuple[DueObject, str]],
        now: datetime,
        *,
        check_holds: bool = True,
    ) -> SweepReport:
        """Steps 1 to 3 for one batch; with ``check_holds`` what a hold placed meanwhile
        covers is left alone (counted as held)."""
        shredded, held = await self._shred(tenant, due, check_holds=check_holds)
        report = await self._delete_shredded(tenant, shredded, now)
        report.held += held
        return report

    async def _shred(
        self, tenant: str, due: Sequence[tuple[DueObject, str]], *, check_holds: bool
    ) -> tuple[list[tuple[DueObject, str]], int]:
        """Step 1: the due objects whose keys are gone now, and how many a hold kept."""
        if not due:
            return [], 0
        why_of = {stored.id: why for stored, why in due}
        shredded = await self._catalog.retention.shred_keys(
            tenant, [stored for stored, _ in due], check_holds=check_holds
        )
        return [(stored, why_of[stored.id]) for stored in shredded], len(due) - len(shredded)

    async def _finish_batch(
        self,
        tenant: str,
        shredded: Sequence[tuple[DueObject, str]],
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        *,
        reason: DeleteReason,
    ) -> SweepReport:
        """Steps 2 to 4 for one batch: its bytes, its rows, then its recordings that have
        nothing left and their call records that are due (the passes after the last batch
        find whatever no batch finished)."""
        report = await self._delete_shredded(tenant, shredded, now)
        recording_ids = sorted({stored.recording_id for stored, _ in shredded})
        if recording_ids:
            finished = await self._complete_recordings(
                tenant, windows, holds, now, reason=reason, recording_ids=recording_ids
            )
            calls = await self._delete_call_records(
                tenant,
                windows,
                holds,
                now,
                reason=reason,
                call_ids=sorted({stored.call_id for stored, _ in shredded}),
            )
            # What is held is counted by the passes after the last batch, once.
            report.recordings_deleted += finished.recordings_deleted
            report.call_records_deleted += calls.call_records_deleted
        return report

    async def _delete_shredded(
        self, tenant: str, shredded: Sequence[tuple[DueObject, str]], now: datetime
    ) -> SweepReport:
        """Steps 2 and 3: the bytes, then the rows with their receipts."""
        report = SweepReport()
        if not shredded:
            return report
        ids = [stored.id for stored, _ in shredded]
        await self._store.delete_many([stored.store_key for stored, _ in shredded])
        by_id = {stored.id: (stored, why) for stored, why in shredded}

        def receipts(marked: list[str]) -> list[AuditEntry]:
            grouped: dict[str, list[DueObject]] = defaultdict(list)
            for object_id in marked:
                grouped[by_id[object_id][0].recording_id].append(by_id[object_id][0])
            entries = []
            for recording_id, gone in grouped.items():
                why = by_id[gone[0].id][1]
                entries.append(
                    AuditEntry(
                        actor=ACTOR,
                        action="data.deleted",
                        object=recording_id,
                        detail={
                            "reason": why,
                            "data_classes": sorted({o.data_class for o in gone}),
                            "kinds": sorted({o.kind for o in gone}),
                            "objects": len(gone),
                            "bytes": sum(o.size or 0 for o in gone),
                            "object_ids": [o.id for o in gone[:MAX_IDS_IN_RECEIPT]],
                        },
                    )
                )
            return entries

        marked = await self._catalog.retention.mark_objects_deleted(
            tenant, ids, now, receipts=receipts
        )
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for object_id in marked:
            stored, why = by_id[object_id]
            counts[why][0] += 1
            counts[why][1] += stored.size or 0
        for why, (objects, size) in counts.items():
            report.objects_deleted += objects
            report.bytes_deleted += size
            self.metrics.deleted.labels("objects", why).inc(objects)
            self.metrics.bytes.labels(why).inc(size)
        return report

    async def _complete_recordings(
        self,
        tenant: str,
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        *,
        reason: DeleteReason,
        recording_ids: Sequence[str] | None = None,
        lease: HeldLease | None = None,
    ) -> SweepReport:
        """Step 4: recordings (of ``recording_ids``) with nothing left that are due become
        ``deleted``."""
        report = SweepReport()
        cutoff = None
        if windows is not None:
            cutoff = max(windows.cutoff("recordings", now), windows.cutoff("transcripts", now))
        after: str | None = None
        while page := await self._catalog.retention.due_recordings(
            tenant, cutoff=cutoff, after=after, limit=self._batch, recording_ids=recording_ids
        ):
            if lease is not None and not await lease.keep():
                break
            after = page[-1].id
            reasons: dict[str, str] = {}
            for recording in page:
                why = self._recording_due(recording, windows, holds, now, reason)
                if why == "held":
                    report.held += 1
                elif why is not None:
                    reasons[recording.id] = why
            report.recordings_deleted += await self.complete(
                tenant, reasons, now, notify=windows is not None
            )
        return report

    @staticmethod
    def _recording_due(
        recording: DueRecording,
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        reason: DeleteReason,
    ) -> str | None:
        if windows is None:
            return reason
        verdict = _held_or_erased(
            holds, recording.call_id, recording.from_number, recording.to_number,
            recording.status, recording.delete_reason,
        )  # fmt: skip
        if verdict is not None:
            return verdict
        # A finished recording with nothing left gets no more data; one still processing
        # may (its analysis), and is completed once that is done.
        if recording.status == "processing" or recording.ended_at is None:
            return None
        if windows.first_expires(recording.ended_at) > now:
            return None
        return reason

    async def complete(
        self, tenant: str, reasons: dict[str, str], now: datetime, *, notify: bool = True
    ) -> int:
        """Mark recordings that have nothing left deleted (``reasons``: id -> reason), with
        their receipts and, when ``notify``, their webhook events; returns how many were
        completed now."""
        if not reasons:
            return 0
        build = None
        if self._notify is not None and notify:
            build = await self._notify(tenant=tenant, now=now)

        def receipts(completed: list[Recording]) -> list[AuditEntry]:
            return [
                AuditEntry(
                    actor=ACTOR,
                    action="recording.deleted",
                    object=recording.id,
                    detail={"reason": recording.delete_reason or reasons[recording.id]},
                )
                for recording in completed
            ]

        def events(completed: list[Recording]) -> list[NewJob]:
            # Built inside the transaction that marks them, from the recordings it moved:
            # another batch or sweep that found the same recording due queues nothing.
            if build is None:
                return []
            return build([(recording.id, reasons[recording.id]) for recording in completed])

        completed = await self._catalog.retention.complete_deletions(
            tenant, reasons, now, receipts=receipts, events=events
        )
        for reason, count in Counter_(r.delete_reason or "" for r in completed).items():
            self.metrics.deleted.labels("recordings", reason).inc(count)
        return len(completed)

    async def _delete_call_records(
        self,
        tenant: str,
        windows: Windows | None,
        holds: Holds,
        now: datetime,
        *,
        reason: DeleteReason,
        call_ids: Sequence[str] | None = None,
        lease: HeldLease | None = None,
    ) -> SweepReport:
        """Call records (of ``call_ids``), with their recordings' tombstones, whose window
        ended."""
        report = SweepReport()
        cutoff = None if windows is None else now - windows.call_records.shortest()
        after: str | None = None
        while page := await self._catalog.retention.due_calls(
            tenant, cutoff=cutoff, after=after, limit=self._batch, call_ids=call_ids
        ):
            if lease is not None and not await lease.keep():
                break
            after = page[-1].id
            due: dict[str, DueCall] = {}
            for call in page:
                if windows is not None:
                    if windows.call_records.after(call.ended_at) > now:
                        continue
                    if holds.covering(call.id, call.from_number, call.to_number):
                        report.held += 1
                        continue
                due[call.id] = call

            def receipts(deleted: list[str], due: dict[str, DueCall] = due) -> list[AuditEntry]:
                return [
                    AuditEntry(
                        actor=ACTOR,
                        action="call_record.deleted",
                        object=call_id,
                        detail={"reason": reason, "recording": due[call_id].recording_id},
                    )
                    for call_id in deleted
                ]

            if due:
                deleted = await self._catalog.retention.delete_call_records(
                    tenant, list(due), now, receipts=receipts
                )
                report.call_records_deleted += len(deleted)
                self.metrics.deleted.labels("call_records", reason).inc(len(deleted))
        return report

    async def erase(self, tenant: str, recording_ids: Sequence[str], now: datetime) -> SweepReport:
        """Finish the erasure of recordings already marked for it
        (``catalog.retention.request_deletion``) now, rather than at the next sweep: delete their
        objects, then complete them."""
        report = SweepReport()
        for start in range(0, len(recording_ids), self._batch):
            chunk = recording_ids[start : start + self._batch]
            after: str | None = None
            while page := await self._catalog.retention.due_objects(
                tenant, cutoffs={}, after=after, limit=self._batch, recording_ids=chunk
            ):
                after = page[-1].id
                due = [(stored, stored.delete_reason or "erasure") for stored in page]
                report.add(await self._delete_objects(tenant, due, now))
            recordings = await self._catalog.retention.due_recordings(
                tenant, cutoff=None, limit=len(chunk), recording_ids=chunk
            )
            reasons = {r.id: r.delete_reason or "erasure" for r in recordings}
            report.recordings_deleted += await self.complete(tenant, reasons, now)
        return report
