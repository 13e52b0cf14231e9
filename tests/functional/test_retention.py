"""The retention sweeper on real parts: the catalog (SQLite, and PostgreSQL where the backend
matters), the object store (files, and SeaweedFS S3 where it matters), the media vault and a
local keyring.

Data is seeded the way the gateway stores it (instructions, an announced call with its
recording, sealed audio per track, then the transcript and the analysis), and the sweeps run
on a fake clock: every ``now`` is a plain datetime. Each test checks the state a sweep leaves
behind: the object rows, the key rows (shredded or not), the bytes in the store, the
recording's status, the receipts in the audit log and the webhook events it queued.

Crashes are simulated by making one step raise ``Crash`` (not a ``CallvaultError``, so the
sweep stops there, as a killed process would); the next sweep must end where a clean run
ends, with every receipt written once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crypto.auditkeys import AuditKeyring
from crypto.errors import KeyUnavailable
from crypto.keys import LocalKeyring
from gateway.webhooks import JOB_KIND, deletion_notifier
from storage.catalog import (
    AuditEntry,
    Catalog,
    LegalHold,
    NewJob,
    RecordingStatus,
    StoredObject,
)
from storage.errors import HeldByLegalHold, NotFound, StorageUnavailable
from storage.filestore import FileStore
from storage.instructions import parse_instructions
from storage.retention import DeletedEvents, RetentionSweeper, SweepReport, deleted_event_id
from storage.s3 import MIN_PART_SIZE
from storage.store import ObjectStore
from storage.vault import MediaVault
from storage.webhooksecret import store_instructions

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
"""When the tenants and their first instructions were created."""
END = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
"""When the seeded calls ended (windows count from here)."""
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
MASTER = bytes(range(32))

SHORT = {"recordings": "P1D", "transcripts": "P7D", "call_records": "P30D"}
ALL_AT_ONCE = {"recordings": "P1D", "transcripts": "P1D", "call_records": "P30D"}
LONG = {"recordings": "P90D", "transcripts": "P365D", "call_records": "P3Y"}

CALLER = "+40211111111"
AGENT = "+40722222222"
OTHER = "+40733333333"
STRANGER = "+40744444444"

AUDIO = b"".join(b"inbound audio frame %05d | " % i for i in range(400))
TRANSCRIPT = b'{"segments": [{"track": "inbound", "text": "I would like to cancel"}]}'
ANALYSIS = b'{"summary": "The caller cancels.", "sentiment": "neutral"}'


class Crash(Exception):
    """A simulated process death at one step of a sweep (not a ``CallvaultError``, so the
    sweep does not carry on with the next tenant)."""


# --- the parts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """One call of the sweeper's ``notify``."""

    tenant: str
    event: str
    data: dict[str, Any]
    now: datetime
    recording_id: str | None
    event_id: str | None


class RecordingNotify:
    """Stands in for ``gateway.webhooks.deletion_notifier``: remembers every event whose
    job it is asked to build (in the transaction that marks its recording deleted), and
    queues none; ``fail_next`` makes the next build raise ``Crash`` in that transaction."""

    def __init__(self) -> None:
        self.calls: list[Queued] = []
        self.fail_next = False

    async def __call__(self, *, tenant: str, now: datetime) -> DeletedEvents:
        def build(deleted: Sequence[tuple[str, str]]) -> list[NewJob]:
            if self.fail_next:
                self.fail_next = False
                raise Crash("crash while queueing a webhook event")
            for recording_id, reason in deleted:
                data = {"recording_id": recording_id, "reason": reason}
                self.calls.append(
                    Queued(
                        tenant,
                        "recording.deleted",
                        data,
                        now,
                        recording_id,
                        deleted_event_id(recording_id),
                    )
                )
            return []

        return build

    @property
    def queued(self) -> dict[str | None, Queued]:
        """The events as ``queue_event`` keeps them: the first one under each id."""
        kept: dict[str | None, Queued] = {}
        for call in self.calls:
            kept.setdefault(call.event_id, call)
        return kept


@dataclass
class Parts:
    catalog: Catalog
    store: ObjectStore
    vault: MediaVault
    keyring: LocalKeyring
    notify: RecordingNotify
    sweeper: RetentionSweeper

    def new_sweeper(self, **options: Any) -> RetentionSweeper:
        """Another sweeper on the same parts (``batch_size``, another ``notify``)."""
        options.setdefault("notify", self.notify)
        return RetentionSweeper(
            catalog=self.catalog,
            store=self.store,
            **options,
        )


@asynccontextmanager
async def open_parts(database_url: str, store: ObjectStore, keys: Path) -> AsyncIterator[Parts]:
    keyring = LocalKeyring.open(keys, MASTER)
    catalog = await Catalog.open(database_url, audit_keys=AuditKeyring(keyring))
    try:
        await catalog.migrate()
        vault = MediaVault(catalog=catalog, store=store, keys=keyring, segment_size=4096)
        notify = RecordingNotify()
        sweeper = RetentionSweeper(
            catalog=catalog,
            store=store,
            notify=notify,
        )
        yield Parts(catalog, store, vault, keyring, notify, sweeper)
    finally:
        await catalog.close()


@pytest.fixture(
    params=["file", pytest.param("s3", marks=[pytest.mark.integration, pytest.mark.s3])]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """The object store on each backend: files in a temporary dir, or a fresh SeaweedFS
    bucket (under a key prefix, as deployments use one)."""
    chosen: ObjectStore
    if request.param == "file":
        chosen = FileStore(tmp_path / "objects")
    else:
        server = request.getfixturevalue("seaweedfs")  # tests.conftest.S3Server
        bucket: str = request.getfixturevalue("s3_bucket")
        chosen = server.store(bucket, "callvault", part_size=MIN_PART_SIZE)
    try:
        yield chosen
    finally:
        await chosen.close()


@pytest.fixture
async def parts(database_url: str, store: ObjectStore, tmp_path: Path) -> AsyncIterator[Parts]:
    """Every catalog backend with every store backend."""
    async with open_parts(database_url, store, tmp_path / "keys") as opened:
        yield opened


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Parts]:
    """SQLite and the file store only: for tests where the backend does not matter."""
    store = FileStore(tmp_path / "objects")
    try:
        url = f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}"
        async with open_parts(url, store, tmp_path / "keys") as opened:
            yield opened
    finally:
        await store.close()


# --- seeding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """One recorded call as the gateway and the AI worker leave it."""

    tenant: str
    call_id: str
    recording_id: str
    objects: dict[str, StoredObject] = field(default_factory=dict)
    """By role: ``inbound``/``outbound`` (audio), ``transcript``, ``analysis``."""

    @property
    def audio(self) -> list[StoredObject]:
        return [o for role, o in self.objects.items() if role in ("inbound", "outbound")]

    @property
    def text(self) -> list[StoredObject]:
        return [o for role, o in self.objects.items() if role in ("transcript", "analysis")]

    @property
    def size(self) -> int:
        return sum(o.size or 0 for o in self.objects.values())


def instructions(retention: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A validated instructions document with these retention windows."""
    document = {
        "recording": {"enabled": True},
        "ai": {"transcript": True, "summary": True},
        "retention": retention,
        **extra,
    }
    return parse_instructions(document).document()


async def add_tenant(parts: Parts, tenant: str, retention: dict[str, str], **extra: Any) -> None:
    """Create the tenant and store its instructions as a PUT does (a webhook secret sealed)."""
    await parts.catalog.tenants.create(tenant, tenant.title(), "eu", T0)
    document = parse_instructions(instructions(retention, **extra))
    await store_instructions(
        parts.catalog, parts.keyring, tenant, document, created_by="admin", now=T0
    )


async def announce(parts: Parts, tenant: str, call_id: str, **fields: Any) -> None:
    """Announce a call: by default an inbound Twilio call from CALLER to AGENT at END, with
    no instructions version and nothing decided; ``fields`` override any of it (with
    ``recording_id``, its recording is created too)."""
    call: dict[str, Any] = {
        "from_number": CALLER,
        "to_number": AGENT,
        "direction": "inbound",
        "consent": "granted",
        "transport": "twilio",
        "codec": "pcmu",
        "sample_rate": 8000,
        "instructions_version": None,
        "decision": {"store_recording": False, "ai": []},
        "refusal_code": None,
        "started_at": END,
    }
    await parts.catalog.calls.announce(id=call_id, tenant_id=tenant, **{**call, **fields})


async def seed_call(
    parts: Parts,
    tenant: str,
    call_id: str,
    *,
    ended_at: datetime = END,
    from_number: str = CALLER,
    to_number: str = AGENT,
    status: RecordingStatus = "analyzed",
    tracks: tuple[str, ...] = ("inbound", "outbound"),
) -> Seeded:
    """A call of five minutes that ended at ``ended_at``: its call record, its recording,
    audio of ``tracks`` and, by ``status``: ``analyzed``, its transcript and analysis;
    ``processing``, its AI job still queued; ``recorded``, no AI at all."""
    analyzed = status != "recorded"
    catalog, vault = parts.catalog, parts.vault
    current = await catalog.instructions.latest(tenant)
    assert current is not None
    started_at = ended_at - timedelta(minutes=5)
    recording_id = f"rec-{tenant}-{call_id}"
    await announce(
        parts,
        tenant,
        call_id,
        from_number=from_number,
        to_number=to_number,
        instructions_version=current.version,
        decision={"store_recording": True, "ai": ["transcript", "summary"] if analyzed else []},
        started_at=started_at,
        recording_id=recording_id,
    )
    objects: dict[str, StoredObject] = {}
    for track in tracks:
        objects[track] = await vault.put_object(
            AUDIO,
            tenant=tenant,
            kind="audio",
            data_class="recordings",
            track=track,
            recording_id=recording_id,
            now=started_at,
        )
    job_id = f"job-{recording_id}" if analyzed else None
    await catalog.recordings.finish(tenant, recording_id, samples=8000 * 300, now=ended_at,
                                   job_id=job_id)  # fmt: skip
    if status == "analyzed":
        for kind, body in (("transcript", TRANSCRIPT), ("analysis", ANALYSIS)):
            objects[kind] = await vault.put_object(
                body,
                tenant=tenant,
                kind=kind,
                data_class="transcripts",
                recording_id=recording_id,
                now=ended_at,
            )
        await catalog.recordings.update_status(tenant, recording_id, "analyzed", ended_at)
    return Seeded(tenant, call_id, recording_id, objects)


async def seed_refused_call(parts: Parts, tenant: str, call_id: str) -> None:
    """A refused call: a call record (ended when it started) and nothing else."""
    await announce(
        parts,
        tenant,
        call_id,
        from_number=STRANGER,
        consent="refused",
        refusal_code="consent_refused",
    )


# --- inspecting ---------------------------------------------------------------------------


async def has_key(parts: Parts, stored: StoredObject) -> bool:
    """Whether the object's key row (its wrapped DEK) is still in the key table."""
    try:
        row = await parts.catalog.keys.get(stored.id, stored.tenant_id)
    except KeyUnavailable:
        return False
    assert row.object_id == stored.id
    return True


async def state_of(parts: Parts, stored: StoredObject) -> str:
    return (await parts.catalog.objects.get(stored.id, stored.tenant_id)).state


async def content(parts: Parts, objects: list[StoredObject]) -> list[tuple[str, bool, bool]]:
    """Per object: its row's state, whether its key row exists, whether its bytes exist."""

    async def one(o: StoredObject) -> tuple[str, bool, bool]:
        return (
            await state_of(parts, o),
            await has_key(parts, o),
            await parts.store.exists(o.store_key),
        )

    return list(await asyncio.gather(*(one(o) for o in objects)))


KEPT = ("committed", True, True)
GONE = ("deleted", False, False)


async def receipts(parts: Parts, tenant: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The tenant's audit events as (action, object, detail), the object ids of a
    ``data.deleted`` receipt sorted (their order within one receipt is not specified)."""
    events = await parts.catalog.audit.list(tenant, limit=10_000)
    found = []
    for event in events:
        detail = dict(event.detail)
        if event.action == "data.deleted":
            detail["object_ids"] = sorted(detail["object_ids"])
        found.append((event.action, event.object, detail))
    return found


def data_deleted(objects: list[StoredObject], reason: str = "retention") -> dict[str, Any]:
    """The detail of the ``data.deleted`` receipt of these objects of one recording."""
    return {
        "reason": reason,
        "data_classes": sorted({o.data_class for o in objects}),
        "kinds": sorted({o.kind for o in objects}),
        "objects": len(objects),
        "bytes": sum(o.size or 0 for o in objects),
        "object_ids": sorted(o.id for o in objects),
    }


def report(**counts: Any) -> dict[str, Any]:
    """A sweep report as a dict: zeros except ``counts``."""
    return {**SweepReport().as_dict(), **counts}


async def audit_ok(parts: Parts, tenant: str) -> int:
    """Assert the tenant's audit chain verifies; return its length."""
    check = await parts.catalog.audit.verify(tenant)
    assert (check.ok, check.broken_at) == (True, None)
    return check.count


def crash_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    """Make ``owner.name`` raise ``Crash`` on its next call (before doing anything), then
    behave normally."""
    real: Callable[..., Any] = getattr(owner, name)
    armed = [True]

    async def crashing(*args: Any, **kwargs: Any) -> Any:
        if armed[0]:
            armed[0] = False
            raise Crash(f"crash in {name}")
        return await real(*args, **kwargs)

    monkeypatch.setattr(owner, name, crashing)


# --- 1. windows per data class ------------------------------------------------------------


async def test_each_data_class_goes_at_the_end_of_its_window(parts: Parts) -> None:
    await add_tenant(parts, "acme", SHORT)
    await add_tenant(parts, "globex", LONG)
    call = await seed_call(parts, "acme", "call-1")
    await seed_refused_call(parts, "acme", "call-refused")
    kept = await seed_call(parts, "globex", "call-1")
    sweeper, notify = parts.sweeper, parts.notify
    untouched = [KEPT] * 4

    # One second before the recordings window ends: nothing goes.
    assert (await sweeper.sweep(END + DAY - SECOND)).as_dict() == report()
    assert await content(parts, list(call.objects.values())) == untouched
    assert await receipts(parts, "acme") == []

    # At the end of the recordings window exactly: the audio of both tracks, nothing else.
    swept = await sweeper.sweep(END + DAY)
    audio = sum(o.size or 0 for o in call.audio)
    assert swept.as_dict() == report(objects_deleted=2, bytes_deleted=audio)
    assert await content(parts, call.audio) == [GONE, GONE]
    assert await content(parts, call.text) == [KEPT, KEPT]
    for stored in call.audio:
        assert (await parts.catalog.objects.get(stored.id, "acme")).deleted_at == END + DAY
        with pytest.raises(NotFound):
            await parts.vault.read_object("acme", stored.id)
    assert await parts.vault.read_object("acme", call.objects["transcript"].id) == TRANSCRIPT
    recording = await parts.catalog.recordings.get("acme", call.recording_id)
    assert (recording.status, recording.deleted_at, recording.delete_reason) == (
        "analyzed",
        None,
        None,
    )
    assert await receipts(parts, "acme") == [
        ("data.deleted", call.recording_id, data_deleted(call.audio))
    ]
    assert notify.calls == []

    # At the end of the transcripts window: transcript and analysis, then the recording.
    assert (await sweeper.sweep(END + 7 * DAY - SECOND)).as_dict() == report()
    swept = await sweeper.sweep(END + 7 * DAY)
    text = sum(o.size or 0 for o in call.text)
    assert swept.as_dict() == report(objects_deleted=2, bytes_deleted=text, recordings_deleted=1)
    assert await content(parts, list(call.objects.values())) == [GONE] * 4
    recording = await parts.catalog.recordings.get("acme", call.recording_id)
    assert (recording.status, recording.deleted_at, recording.delete_reason) == (
        "deleted",
        END + 7 * DAY,
        "retention",
    )
    assert (await receipts(parts, "acme"))[1:] == [
        ("data.deleted", call.recording_id, data_deleted(call.text)),
        ("recording.deleted", call.recording_id, {"reason": "retention"}),
    ]
    event_id = deleted_event_id(call.recording_id)
    assert event_id.startswith("evt_") and len(event_id) == 36
    assert event_id == deleted_event_id(call.recording_id)
    assert notify.calls == [
        Queued(
            tenant="acme",
            event="recording.deleted",
            data={"recording_id": call.recording_id, "reason": "retention"},
            now=END + 7 * DAY,
            recording_id=call.recording_id,
            event_id=event_id,
        )
    ]
    # The call record and the recording's content-free tombstone stay.
    assert (await parts.catalog.calls.get("acme", "call-1")).ended_at == END

    # At the end of the call records window: both call records, with what was left of
    # the recording (its row, its object rows, its job).
    assert (await sweeper.sweep(END + 30 * DAY - SECOND)).as_dict() == report()
    assert (await sweeper.sweep(END + 30 * DAY)).as_dict() == report(call_records_deleted=2)
    for call_id in ("call-1", "call-refused"):
        with pytest.raises(NotFound):
            await parts.catalog.calls.get("acme", call_id)
    with pytest.raises(NotFound):
        await parts.catalog.recordings.get("acme", call.recording_id)
    assert await parts.catalog.objects.list("acme") == []
    assert await parts.catalog.jobs.list("acme") == []
    assert sorted((await receipts(parts, "acme"))[3:], key=lambda r: str(r[1])) == [
        ("call_record.deleted", "call-1", {"reason": "retention", "recording": call.recording_id}),
        ("call_record.deleted", "call-refused", {"reason": "retention", "recording": None}),
    ]
    assert await audit_ok(parts, "acme") == 5
    assert len(notify.calls) == 1

    # The other tenant's identical call, under longer windows, kept everything.
    assert await content(parts, list(kept.objects.values())) == untouched
    assert (await parts.catalog.recordings.get("globex", kept.recording_id)).status == "analyzed"
    assert (await parts.catalog.calls.get("globex", "call-1")).ended_at == END
    assert await receipts(parts, "globex") == []
    assert await parts.vault.read_object("globex", kept.objects["inbound"].id) == AUDIO


async def test_no_data_class_outlives_its_call_record(local: Parts) -> None:
    await add_tenant(local, "acme", {**LONG, "call_records": "P30D"})
    call = await seed_call(local, "acme", "call-1")
    assert (await local.sweeper.sweep(END + 30 * DAY - SECOND)).as_dict() == report()
    swept = await local.sweeper.sweep(END + 30 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=call.size, recordings_deleted=1, call_records_deleted=1
    )
    assert await local.catalog.objects.list("acme") == []
    with pytest.raises(NotFound):
        await local.catalog.calls.get("acme", "call-1")
    assert [action for action, _, _ in await receipts(local, "acme")] == [
        "data.deleted",
        "recording.deleted",
        "call_record.deleted",
    ]


async def test_a_recording_still_processing_is_completed_once_finished(local: Parts) -> None:
    """Its audio goes with its window, but the recording is not deleted while its analysis
    may still arrive; once that is stored and expired too, the recording goes."""
    await add_tenant(local, "acme", ALL_AT_ONCE)
    call = await seed_call(local, "acme", "call-1", status="processing")
    swept = await local.sweeper.sweep(END + DAY)
    assert swept.as_dict() == report(objects_deleted=2, bytes_deleted=call.size)
    recording = await local.catalog.recordings.get("acme", call.recording_id)
    assert (recording.status, recording.deleted_at) == ("processing", None)
    assert local.notify.calls == []

    later = END + DAY + timedelta(hours=1)
    analysis = await local.vault.put_object(
        ANALYSIS, tenant="acme", kind="analysis", data_class="transcripts",
        recording_id=call.recording_id, now=later,
    )  # fmt: skip
    await local.catalog.recordings.update_status("acme", call.recording_id, "analyzed", later)
    swept = await local.sweeper.sweep(later)
    assert swept.as_dict() == report(
        objects_deleted=1, bytes_deleted=analysis.size, recordings_deleted=1
    )
    assert await content(local, [analysis]) == [GONE]
    recording = await local.catalog.recordings.get("acme", call.recording_id)
    assert (recording.status, recording.deleted_at) == ("deleted", later)
    assert [action for action, _, _ in await receipts(local, "acme")] == [
        "data.deleted",
        "data.deleted",
        "recording.deleted",
    ]


# --- 2. a changed window ------------------------------------------------------------------


async def test_a_shortened_window_applies_to_stored_data_at_the_next_sweep(local: Parts) -> None:
    await add_tenant(local, "acme", {**LONG, "recordings": "P30D", "transcripts": "P30D"})
    call = await seed_call(local, "acme", "call-1")
    assert (await local.sweeper.sweep(END + 2 * DAY)).as_dict() == report()
    assert await content(local, list(call.objects.values())) == [KEPT] * 4

    shorter = instructions({**LONG, "recordings": "P1D", "transcripts": "P2D"})
    await local.catalog.instructions.add("acme", shorter, "admin", END + 2 * DAY)
    swept = await local.sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=call.size, recordings_deleted=1
    )
    assert await content(local, list(call.objects.values())) == [GONE] * 4
    assert (await local.catalog.recordings.get("acme", call.recording_id)).status == "deleted"
    assert await receipts(local, "acme") == [
        ("data.deleted", call.recording_id, data_deleted(list(call.objects.values()))),
        ("recording.deleted", call.recording_id, {"reason": "retention"}),
    ]


async def test_a_lengthened_window_keeps_data_that_the_old_one_would_delete(
    local: Parts,
) -> None:
    await add_tenant(local, "acme", ALL_AT_ONCE)
    call = await seed_call(local, "acme", "call-1")
    await local.catalog.instructions.add("acme", instructions(LONG), "admin", END)
    assert (await local.sweeper.sweep(END + 29 * DAY)).as_dict() == report()
    assert await content(local, list(call.objects.values())) == [KEPT] * 4


# --- 3. legal holds -----------------------------------------------------------------------


async def test_a_hold_on_a_call_keeps_it_until_released(local: Parts) -> None:
    catalog, sweeper = local.catalog, local.sweeper
    await add_tenant(local, "acme", ALL_AT_ONCE)
    held = await seed_call(local, "acme", "call-held")
    free = await seed_call(local, "acme", "call-free")
    hold = await catalog.holds.create(
        id="hold-1",
        tenant_id="acme",
        reason="litigation 2027-17",
        created_by="admin",
        now=END,
        call_ids=["call-held"],
        audit=AuditEntry(actor="admin", action="hold.placed", object="hold-1", detail={}),
    )
    assert hold.call_ids == ("call-held",)

    swept = await sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=free.size, recordings_deleted=1, held=4
    )
    assert await content(local, list(free.objects.values())) == [GONE] * 4
    assert await content(local, list(held.objects.values())) == [KEPT] * 4
    assert (await catalog.recordings.get("acme", held.recording_id)).status == "analyzed"
    assert [n.recording_id for n in local.notify.calls] == [free.recording_id]

    # Past the call records window: the free call's record goes, the held one stays whole.
    swept = await sweeper.sweep(END + 30 * DAY)
    assert swept.as_dict() == report(call_records_deleted=1, held=4)
    with pytest.raises(NotFound):
        await catalog.calls.get("acme", "call-free")
    assert (await catalog.calls.get("acme", "call-held")).ended_at == END
    assert await content(local, list(held.objects.values())) == [KEPT] * 4

    await catalog.holds.release("acme", "hold-1", released_by="admin", now=END + 31 * DAY)
    swept = await sweeper.sweep(END + 31 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=held.size, recordings_deleted=1, call_records_deleted=1
    )
    with pytest.raises(NotFound):
        await catalog.calls.get("acme", "call-held")
    assert await catalog.objects.list("acme") == []
    assert [(action, obj) for action, obj, _ in await receipts(local, "acme")] == [
        ("hold.placed", "hold-1"),
        ("data.deleted", free.recording_id),
        ("recording.deleted", free.recording_id),
        ("call_record.deleted", "call-free"),
        ("data.deleted", held.recording_id),
        ("recording.deleted", held.recording_id),
        ("call_record.deleted", "call-held"),
    ]
    await audit_ok(local, "acme")


async def test_a_hold_on_a_number_covers_it_as_either_party(local: Parts) -> None:
    catalog, sweeper = local.catalog, local.sweeper
    await add_tenant(local, "acme", ALL_AT_ONCE)
    await add_tenant(local, "globex", ALL_AT_ONCE)
    calling = await seed_call(local, "acme", "call-from", from_number=CALLER, to_number=AGENT)
    called = await seed_call(local, "acme", "call-to", from_number=OTHER, to_number=CALLER)
    other = await seed_call(local, "acme", "call-other", from_number=OTHER, to_number=STRANGER)
    await catalog.holds.create(
        id="hold-caller", tenant_id="acme", reason="dispute", created_by="admin", now=END,
        number=CALLER,
    )  # fmt: skip
    # Another tenant's hold on the other call's number does not cover acme's call.
    await catalog.holds.create(
        id="hold-globex", tenant_id="globex", reason="dispute", created_by="admin", now=END,
        number=STRANGER,
    )  # fmt: skip

    swept = await sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=other.size, recordings_deleted=1, held=8
    )
    assert await content(local, list(other.objects.values())) == [GONE] * 4
    for kept in (calling, called):
        assert await content(local, list(kept.objects.values())) == [KEPT] * 4
        assert (await catalog.recordings.get("acme", kept.recording_id)).status == "analyzed"

    await catalog.holds.release("acme", "hold-caller", released_by="admin", now=END + 3 * DAY)
    swept = await sweeper.sweep(END + 3 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=8, bytes_deleted=calling.size + called.size, recordings_deleted=2
    )
    for gone in (calling, called):
        assert await content(local, list(gone.objects.values())) == [GONE] * 4
        assert (await catalog.recordings.get("acme", gone.recording_id)).status == "deleted"
    assert sorted(n.recording_id or "" for n in local.notify.calls) == sorted(
        [other.recording_id, calling.recording_id, called.recording_id]
    )


async def test_a_hold_keeps_an_empty_recording_and_a_call_record(local: Parts) -> None:
    """What a hold keeps once no object is left: a due recording with nothing in the store
    (here one that never stored audio), and a call record whose recording is deleted; each
    is counted as held."""
    catalog, sweeper = local.catalog, local.sweeper
    await add_tenant(local, "acme", SHORT)
    empty = await seed_call(local, "acme", "call-1", status="recorded", tracks=())
    finished = await seed_call(local, "acme", "call-2")
    await catalog.holds.create(
        id="hold-1", tenant_id="acme", reason="audit", created_by="admin", now=END,
        call_ids=["call-1"],
    )  # fmt: skip

    swept = await sweeper.sweep(END + DAY)
    audio = sum(o.size or 0 for o in finished.audio)
    assert swept.as_dict() == report(objects_deleted=2, bytes_deleted=audio, held=1)
    swept = await sweeper.sweep(END + 7 * DAY)
    text = sum(o.size or 0 for o in finished.text)
    assert swept.as_dict() == report(
        objects_deleted=2, bytes_deleted=text, recordings_deleted=1, held=1
    )
    assert (await catalog.recordings.get("acme", empty.recording_id)).status == "recorded"
    assert (await catalog.recordings.get("acme", finished.recording_id)).status == "deleted"

    await catalog.holds.create(
        id="hold-2", tenant_id="acme", reason="audit", created_by="admin", now=END + 8 * DAY,
        call_ids=["call-2"],
    )  # fmt: skip
    assert (await sweeper.sweep(END + 30 * DAY)).as_dict() == report(held=2)
    assert (await catalog.calls.get("acme", "call-2")).ended_at == END
    assert (await catalog.recordings.get("acme", empty.recording_id)).deleted_at is None

    for hold_id in ("hold-1", "hold-2"):
        await catalog.holds.release("acme", hold_id, released_by="admin", now=END + 31 * DAY)
    swept = await sweeper.sweep(END + 31 * DAY)
    assert swept.as_dict() == report(recordings_deleted=1, call_records_deleted=2)
    for call_id in ("call-1", "call-2"):
        with pytest.raises(NotFound):
            await catalog.calls.get("acme", call_id)
    assert [n.recording_id for n in local.notify.calls] == [
        finished.recording_id,
        empty.recording_id,
    ]


# --- 4. crashes ---------------------------------------------------------------------------

# What a crash at each step leaves before the next sweep: (row state, key row, bytes) of
# every object, data.deleted receipts, events built; then what the recovering sweep reports.
CRASHES: dict[str, tuple[tuple[str, bool, bool], int, int, dict[str, int]]] = {
    "none": (GONE, 2, 2, {}),
    "shred": (KEPT, 0, 0, {"objects_deleted": 8, "recordings_deleted": 2}),
    "store_delete": (("committed", False, True), 0, 0, {"objects_deleted": 8,
                                                       "recordings_deleted": 2}),
    "mark": (("committed", False, False), 0, 0, {"objects_deleted": 8, "recordings_deleted": 2}),
    "notify": (GONE, 2, 0, {"recordings_deleted": 2}),
    "complete": (GONE, 2, 0, {"recordings_deleted": 2}),
}  # fmt: skip


@pytest.mark.parametrize("crash", list(CRASHES))
async def test_the_next_sweep_recovers_from_a_crash_at_any_step(
    parts: Parts, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    catalog, sweeper, notify = parts.catalog, parts.sweeper, parts.notify
    await add_tenant(parts, "acme", ALL_AT_ONCE)
    calls = [await seed_call(parts, "acme", f"call-{i}") for i in (1, 2)]
    objects = [o for call in calls for o in call.objects.values()]
    first, second = END + 2 * DAY, END + 2 * DAY + timedelta(hours=1)
    if crash == "shred":
        crash_once(monkeypatch, catalog.retention, "shred_keys")
    elif crash == "store_delete":
        crash_once(monkeypatch, parts.store, "delete_many")
    elif crash == "mark":
        crash_once(monkeypatch, catalog.retention, "mark_objects_deleted")
    elif crash == "notify":
        notify.fail_next = True
    elif crash == "complete":
        crash_once(monkeypatch, catalog.retention, "complete_deletions")
    left, data_receipts, notified, recovered = CRASHES[crash]

    if crash == "none":
        await sweeper.sweep(first)
    else:
        with pytest.raises(Crash):
            await sweeper.sweep(first)
    assert await content(parts, objects) == [left] * 8
    actions = [action for action, _, _ in await receipts(parts, "acme")]
    assert actions.count("data.deleted") == data_receipts
    assert len(notify.calls) == notified
    if crash != "none":
        assert "recording.deleted" not in actions
        for call in calls:
            recording = await catalog.recordings.get("acme", call.recording_id)
            assert (recording.status, recording.deleted_at) == ("analyzed", None)

    # The next sweep ends where a clean run ends.
    swept = await sweeper.sweep(second)
    size = sum(call.size for call in calls)
    expected = {**recovered}
    if expected.get("objects_deleted"):
        expected["bytes_deleted"] = size
    assert swept.as_dict() == report(**expected)
    assert await content(parts, objects) == [GONE] * 8
    assert [key async for key in parts.store.list_keys("acme/")] == []
    for call in calls:
        recording = await catalog.recordings.get("acme", call.recording_id)
        assert (recording.status, recording.delete_reason) == ("deleted", "retention")
        assert recording.deleted_at in (first, second)
    final = await receipts(parts, "acme")
    for call in calls:
        assert [(action, detail) for action, obj, detail in final if obj == call.recording_id] == [
            ("data.deleted", data_deleted(list(call.objects.values()))),
            ("recording.deleted", {"reason": "retention"}),
        ]
    assert len(final) == 4
    assert await audit_ok(parts, "acme") == 4
    ids = {deleted_event_id(call.recording_id) for call in calls}
    assert set(notify.queued) == ids
    assert len(notify.calls) == 2
    for queued in notify.calls:
        assert queued.recording_id is not None
        assert queued.event_id == deleted_event_id(queued.recording_id)
        assert queued.data == {"recording_id": queued.recording_id, "reason": "retention"}

    # A third sweep changes nothing.
    assert (await sweeper.sweep(second)).as_dict() == report()
    assert await receipts(parts, "acme") == final
    assert len(notify.calls) == 2


async def test_a_failing_tenant_is_reported_and_the_others_are_still_swept(
    local: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_tenant(local, "acme", ALL_AT_ONCE)
    await add_tenant(local, "globex", ALL_AT_ONCE)
    failed = await seed_call(local, "acme", "call-1")
    swept_call = await seed_call(local, "globex", "call-1")
    real = local.store.delete_many
    armed = [True]

    async def unavailable_once(keys: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise StorageUnavailable("the store is down", store_code="SlowDown")
        await real(keys)

    monkeypatch.setattr(local.store, "delete_many", unavailable_once)
    swept = await local.sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=swept_call.size, recordings_deleted=1,
        failed_tenants=["acme"],
    )  # fmt: skip
    assert await content(local, list(failed.objects.values())) == [("committed", False, True)] * 4
    assert await content(local, list(swept_call.objects.values())) == [GONE] * 4

    swept = await local.sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=failed.size, recordings_deleted=1
    )
    assert await content(local, list(failed.objects.values())) == [GONE] * 4


async def test_a_crash_before_completion_queues_the_real_webhook_event_once(
    local: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    webhook = {"url": "https://hooks.example.com/callvault", "secret": "s3cret-s3cret-s3cret"}
    await add_tenant(local, "acme", ALL_AT_ONCE, webhook=webhook)
    call = await seed_call(local, "acme", "call-1")
    sweeper = local.new_sweeper(notify=deletion_notifier(local.catalog, max_attempts=3))
    crash_once(monkeypatch, local.catalog.retention, "complete_deletions")
    with pytest.raises(Crash):
        await sweeper.sweep(END + 2 * DAY)
    assert (await sweeper.sweep(END + 2 * DAY)).recordings_deleted == 1
    jobs = await local.catalog.jobs.list("acme", kind=JOB_KIND)
    assert [(job.id, job.recording_id, job.status) for job in jobs] == [
        (deleted_event_id(call.recording_id), call.recording_id, "queued")
    ]
    assert jobs[0].payload is not None
    assert jobs[0].payload["data"] == {"recording_id": call.recording_id, "reason": "retention"}


async def test_the_deletion_event_survives_its_call_record_expiring_in_the_same_sweep(
    local: Parts,
) -> None:
    webhook = {"url": "https://hooks.example.com/callvault", "secret": "s3cret-s3cret-s3cret"}
    windows = {"recordings": "P1D", "transcripts": "P1D", "call_records": "P1D"}
    await add_tenant(local, "acme", windows, webhook=webhook)
    call = await seed_call(local, "acme", "call-1")
    sweeper = local.new_sweeper(notify=deletion_notifier(local.catalog, max_attempts=3))
    swept = await sweeper.sweep(END + DAY)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=call.size, recordings_deleted=1, call_records_deleted=1
    )
    jobs = await local.catalog.jobs.list("acme", kind=JOB_KIND)
    assert [job.id for job in jobs] == [deleted_event_id(call.recording_id)]


# --- 5. erasure ---------------------------------------------------------------------------


async def request_erasure(parts: Parts, recording_id: str, now: datetime) -> None:
    (recording,) = await parts.catalog.retention.request_deletion(
        "acme",
        [recording_id],
        "erasure",
        now,
        audit=[AuditEntry(actor="admin", action="recording.erasure_requested",
                          object=recording_id, detail={})],
    )  # fmt: skip
    assert (recording.status, recording.delete_reason, recording.deleted_at) == (
        "deleted",
        "erasure",
        None,
    )


async def test_erase_deletes_a_requested_recording_now(local: Parts) -> None:
    await add_tenant(local, "acme", LONG)
    erased = await seed_call(local, "acme", "call-1")
    kept = await seed_call(local, "acme", "call-2")
    now = END + timedelta(hours=1)
    await request_erasure(local, erased.recording_id, now)

    swept = await local.sweeper.erase("acme", [erased.recording_id], now)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=erased.size, recordings_deleted=1
    )
    assert await content(local, list(erased.objects.values())) == [GONE] * 4
    assert await content(local, list(kept.objects.values())) == [KEPT] * 4
    recording = await local.catalog.recordings.get("acme", erased.recording_id)
    assert (recording.status, recording.delete_reason, recording.deleted_at) == (
        "deleted",
        "erasure",
        now,
    )
    assert await receipts(local, "acme") == [
        ("recording.erasure_requested", erased.recording_id, {}),
        ("data.deleted", erased.recording_id,
         data_deleted(list(erased.objects.values()), "erasure")),
        ("recording.deleted", erased.recording_id, {"reason": "erasure"}),
    ]  # fmt: skip
    assert [(n.event, n.data, n.event_id) for n in local.notify.calls] == [
        (
            "recording.deleted",
            {"recording_id": erased.recording_id, "reason": "erasure"},
            deleted_event_id(erased.recording_id),
        )
    ]
    # The call record stays until its own window; a sweep finds nothing more to do.
    assert (await local.catalog.calls.get("acme", "call-1")).ended_at == END
    assert (await local.sweeper.sweep(now)).as_dict() == report()
    assert (await local.sweeper.erase("acme", [erased.recording_id], now)).as_dict() == report()
    assert len(await receipts(local, "acme")) == 3
    await audit_ok(local, "acme")


@pytest.mark.parametrize("crash", ["before_erase", "store_delete"])
async def test_the_next_sweep_finishes_an_interrupted_erasure(
    local: Parts, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    await add_tenant(local, "acme", LONG)
    erased = await seed_call(local, "acme", "call-1")
    kept = await seed_call(local, "acme", "call-2")
    now = END + timedelta(hours=1)
    await request_erasure(local, erased.recording_id, now)
    if crash == "store_delete":
        crash_once(monkeypatch, local.store, "delete_many")
        with pytest.raises(Crash):
            await local.sweeper.erase("acme", [erased.recording_id], now)
    # else: the process died between the request and the erase.

    swept = await local.sweeper.sweep(now + SECOND)
    assert swept.as_dict() == report(
        objects_deleted=4, bytes_deleted=erased.size, recordings_deleted=1
    )
    assert await content(local, list(erased.objects.values())) == [GONE] * 4
    assert await content(local, list(kept.objects.values())) == [KEPT] * 4
    recording = await local.catalog.recordings.get("acme", erased.recording_id)
    assert (recording.status, recording.delete_reason, recording.deleted_at) == (
        "deleted",
        "erasure",
        now + SECOND,
    )
    assert [(action, detail.get("reason")) for action, _, detail in await receipts(local, "acme")
            ] == [("recording.erasure_requested", None), ("data.deleted", "erasure"),
                  ("recording.deleted", "erasure")]  # fmt: skip
    assert [n.data["reason"] for n in local.notify.calls] == ["erasure"]


# --- 6. a deleted tenant ------------------------------------------------------------------


async def test_a_deleted_tenants_data_goes_at_the_next_sweep(local: Parts) -> None:
    await add_tenant(local, "acme", LONG)
    await add_tenant(local, "globex", LONG)
    calls = [
        await seed_call(local, "acme", "call-1"),
        await seed_call(local, "acme", "call-2", status="recorded"),
    ]
    await seed_refused_call(local, "acme", "call-refused")
    kept = await seed_call(local, "globex", "call-1")
    await local.catalog.holds.create(
        id="hold-1", tenant_id="globex", reason="dispute", created_by="admin", now=END,
        number=CALLER,
    )  # fmt: skip
    now = END + timedelta(hours=1)
    await local.catalog.tenants.mark_deleted("acme", now)

    swept = await local.sweeper.sweep(now)
    assert swept.as_dict() == report(
        objects_deleted=6,
        bytes_deleted=sum(call.size for call in calls),
        recordings_deleted=2,
        call_records_deleted=3,
    )
    assert await local.catalog.objects.list("acme") == []
    objects = [o for call in calls for o in call.objects.values()]
    assert [await has_key(local, o) for o in objects] == [False] * 6
    assert [await local.store.exists(o.store_key) for o in objects] == [False] * 6
    for call in calls:
        with pytest.raises(NotFound):
            await local.catalog.recordings.get("acme", call.recording_id)
    for call_id in ("call-1", "call-2", "call-refused"):
        with pytest.raises(NotFound):
            await local.catalog.calls.get("acme", call_id)
    found = await receipts(local, "acme")
    for call in calls:
        assert [(a, d) for a, o, d in found if o == call.recording_id] == [
            ("data.deleted", data_deleted(list(call.objects.values()), "tenant")),
            ("recording.deleted", {"reason": "tenant"}),
        ]
    assert sorted((o, d) for a, o, d in found if a == "call_record.deleted") == [
        ("call-1", {"reason": "tenant", "recording": calls[0].recording_id}),
        ("call-2", {"reason": "tenant", "recording": calls[1].recording_id}),
        ("call-refused", {"reason": "tenant", "recording": None}),
    ]
    assert await audit_ok(local, "acme") == 7
    assert local.notify.calls == []
    # The live tenant lost nothing.
    assert await content(local, list(kept.objects.values())) == [KEPT] * 4
    assert await receipts(local, "globex") == []
    assert (await local.sweeper.sweep(now)).as_dict() == report()


async def test_a_deleted_tenants_call_left_live_by_a_crash_goes_too(local: Parts) -> None:
    await add_tenant(local, "acme", LONG)
    current = await local.catalog.instructions.latest("acme")
    assert current is not None
    # Announced and recording when the process died: never finalized, never ended.
    await announce(
        local, "acme", "call-live", instructions_version=current.version,
        decision={"store_recording": True, "ai": []}, recording_id="rec-live",
    )  # fmt: skip
    audio = await local.vault.put_object(
        AUDIO, tenant="acme", kind="audio", data_class="recordings", track="inbound",
        recording_id="rec-live", now=END,
    )  # fmt: skip
    now = END + timedelta(minutes=1)
    await local.catalog.tenants.mark_deleted("acme", now)

    swept = await local.sweeper.sweep(now)
    assert swept.as_dict() == report(
        objects_deleted=1,
        bytes_deleted=audio.size,
        recordings_deleted=1,
        call_records_deleted=1,
    )
    assert not await local.store.exists(audio.store_key)
    with pytest.raises(NotFound):
        await local.catalog.calls.get("acme", "call-live")
    assert [(a, o) for a, o, _ in await receipts(local, "acme")] == [
        ("data.deleted", "rec-live"),
        ("recording.deleted", "rec-live"),
        ("call_record.deleted", "call-live"),
    ]


# --- 7. batches ---------------------------------------------------------------------------


async def test_small_batches_delete_everything_in_one_sweep(local: Parts) -> None:
    await add_tenant(local, "acme", ALL_AT_ONCE)
    calls = [await seed_call(local, "acme", f"call-{i:02}") for i in range(10)]
    held = await seed_call(local, "acme", "call-05-held")  # sorts inside the pages
    await local.catalog.holds.create(
        id="hold-1", tenant_id="acme", reason="dispute", created_by="admin", now=END,
        call_ids=["call-05-held"],
    )  # fmt: skip
    sweeper = local.new_sweeper(batch_size=3)

    swept = await sweeper.sweep(END + 2 * DAY)
    assert swept.as_dict() == report(
        objects_deleted=40,
        bytes_deleted=sum(call.size for call in calls),
        recordings_deleted=10,
        held=4,
    )
    found = await receipts(local, "acme")
    for call in calls:
        assert await content(local, list(call.objects.values())) == [GONE] * 4
        mine = [(a, d) for a, o, d in found if o == call.recording_id]
        # A recording's objects may span two batches: one receipt per batch, none lost.
        deleted = [d for a, d in mine if a == "data.deleted"]
        assert sum(d["objects"] for d in deleted) == 4
        assert sorted(i for d in deleted for i in d["object_ids"]) == sorted(
            o.id for o in call.objects.values()
        )
        assert {d["reason"] for d in deleted} == {"retention"}
        assert [a for a, _ in mine if a == "recording.deleted"] == ["recording.deleted"]
    assert await content(local, list(held.objects.values())) == [KEPT] * 4
    assert sorted(n.recording_id or "" for n in local.notify.calls) == sorted(
        call.recording_id for call in calls
    )

    swept = await sweeper.sweep(END + 30 * DAY)
    assert swept.as_dict() == report(call_records_deleted=10, held=4)
    assert [c.id for c in await local.catalog.calls.of_number("acme", CALLER)] == ["call-05-held"]
    await audit_ok(local, "acme")


async def test_a_batch_that_fails_while_the_next_is_shredded_is_finished_by_the_next_sweep(
    local: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two batches in flight: the first one's store deletion fails after the second page
    # was read and shredded. Nothing is marked without its bytes gone, and the next sweep
    # finishes both batches with one receipt per object.
    await add_tenant(local, "acme", ALL_AT_ONCE)
    calls = [await seed_call(local, "acme", f"call-{i}", tracks=("inbound",)) for i in range(4)]
    sweeper = local.new_sweeper(batch_size=3)
    real = local.store.delete_many
    deletions = [0]

    async def second_fails(keys: Sequence[str]) -> None:
        deletions[0] += 1
        if deletions[0] == 1:
            await asyncio.sleep(0.05)  # still deleting when the next batch is shredded
            raise Crash("the store went away")
        await real(keys)

    monkeypatch.setattr(local.store, "delete_many", second_fails)
    with pytest.raises(Crash):
        await sweeper.sweep(END + 2 * DAY)
    # The failed batch (the first three by id): keys gone, rows not marked, so selectable
    # again. No row anywhere is marked deleted while its bytes are still stored.
    rows = sorted(await local.catalog.objects.list("acme"), key=lambda o: o.id)
    assert [o.state for o in rows[:3]] == ["committed"] * 3
    assert [await has_key(local, o) for o in rows[:3]] == [False] * 3
    for row in rows:
        if row.state == "deleted":
            assert not await local.store.exists(row.store_key)
    monkeypatch.undo()

    swept = await sweeper.sweep(END + 2 * DAY)
    assert swept.objects_deleted >= 3
    assert {o.state for o in await local.catalog.objects.list("acme")} == {"deleted"}
    found = await receipts(local, "acme")
    assert [a for a, _, _ in found].count("recording.deleted") == 4
    for call in calls:
        assert await content(local, list(call.objects.values())) == [GONE] * 3
        mine = [d for a, o, d in found if o == call.recording_id and a == "data.deleted"]
        assert sum(d["objects"] for d in mine) == 3
    await audit_ok(local, "acme")
    assert (await sweeper.sweep(END + 2 * DAY)).as_dict() == report()


# --- 8. calendar windows ------------------------------------------------------------------


async def test_month_and_year_windows_are_checked_exactly(local: Parts) -> None:
    """The catalog pre-selects with the shortest length of a window (a month is 28 days, a
    year 365); the sweeper must still wait for the calendar date."""
    await add_tenant(local, "acme", {"recordings": "P1M", "transcripts": "P1Y",
                                     "call_records": "P2Y"})  # fmt: skip
    jan31 = datetime(2028, 1, 31, 10, 0, tzinfo=UTC)  # 2028 is a leap year
    call = await seed_call(local, "acme", "call-jan31", ended_at=jan31)
    sweeper = local.sweeper

    # P1M after Jan 31, 2028 is Feb 29; Feb 28 is 28 days on (pre-selected, not due).
    for early in (datetime(2028, 2, 28, 10, 0, tzinfo=UTC), datetime(2028, 2, 29, 9, 59, 59,
                                                                      tzinfo=UTC)):  # fmt: skip
        assert (await sweeper.sweep(early)).as_dict() == report()
        assert await content(local, call.audio) == [KEPT, KEPT]
    swept = await sweeper.sweep(datetime(2028, 2, 29, 10, 0, tzinfo=UTC))
    assert swept.objects_deleted == 2
    assert await content(local, call.audio) == [GONE, GONE]
    assert await content(local, call.text) == [KEPT, KEPT]

    # P1Y after Jan 31, 2028 is Jan 31, 2029: 366 days, one more than a year's shortest.
    assert (await sweeper.sweep(datetime(2029, 1, 30, 10, 0, tzinfo=UTC))).as_dict() == report()
    assert await content(local, call.text) == [KEPT, KEPT]
    swept = await sweeper.sweep(datetime(2029, 1, 31, 10, 0, tzinfo=UTC))
    assert (swept.objects_deleted, swept.recordings_deleted) == (2, 1)

    # P2Y after Jan 31, 2028 is Jan 31, 2030: 731 days.
    assert (await sweeper.sweep(datetime(2030, 1, 30, 10, 0, tzinfo=UTC))).as_dict() == report()
    assert (await local.catalog.calls.get("acme", "call-jan31")).ended_at == jan31
    swept = await sweeper.sweep(datetime(2030, 1, 31, 10, 0, tzinfo=UTC))
    assert swept.as_dict() == report(call_records_deleted=1)


async def test_a_month_from_the_31st_ends_on_the_last_day_of_a_short_month(local: Parts) -> None:
    await add_tenant(local, "acme", {**LONG, "recordings": "P1M"})
    mar31 = datetime(2027, 3, 31, 23, 30, tzinfo=UTC)
    aug31 = datetime(2027, 8, 31, 23, 30, tzinfo=UTC)
    april = await seed_call(local, "acme", "call-mar31", ended_at=mar31)
    september = await seed_call(local, "acme", "call-aug31", ended_at=aug31)
    sweeper = local.sweeper

    assert (await sweeper.sweep(datetime(2027, 4, 30, 23, 29, 59, tzinfo=UTC))).as_dict() == (
        report()
    )
    assert (await sweeper.sweep(datetime(2027, 4, 30, 23, 30, tzinfo=UTC))).objects_deleted == 2
    assert await content(local, april.audio) == [GONE, GONE]
    assert await content(local, september.audio) == [KEPT, KEPT]
    assert (await sweeper.sweep(datetime(2027, 9, 30, 23, 29, 59, tzinfo=UTC))).as_dict() == (
        report()
    )
    assert (await sweeper.sweep(datetime(2027, 9, 30, 23, 30, tzinfo=UTC))).objects_deleted == 2
    assert await content(local, september.audio) == [GONE, GONE]


# --- holds placed while a deletion is under way ------------------------------------------


async def test_a_hold_placed_while_a_sweep_runs_keeps_its_data(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_tenant(parts, "acme", SHORT)
    call = await seed_call(parts, "acme", "call-1")
    catalog = parts.catalog
    real = catalog.retention.due_objects
    placed: list[LegalHold] = []

    async def due_objects(*args: Any, **kwargs: Any) -> Any:
        page = await real(*args, **kwargs)
        if not placed:  # the admin's hold commits (201) after the sweep read its page
            placed.append(
                await catalog.holds.create(
                    id="hold-1", tenant_id="acme", reason="lawsuit", created_by="admin",
                    now=END + DAY, number=CALLER,
                )
            )  # fmt: skip
        return page

    monkeypatch.setattr(catalog.retention, "due_objects", due_objects)
    swept = await parts.sweeper.sweep(END + DAY)
    assert placed
    assert (swept.objects_deleted, swept.held) == (0, 2)  # the two audio tracks were due
    assert await content(parts, call.audio) == [KEPT, KEPT]


async def test_a_hold_placed_after_an_interrupted_erasure_keeps_its_data(parts: Parts) -> None:
    await add_tenant(parts, "acme", SHORT)
    call = await seed_call(parts, "acme", "call-1")
    catalog = parts.catalog
    # The erasure was recorded, then the process died before deleting anything.
    await catalog.retention.request_deletion(
        "acme", [call.recording_id], "erasure", END,
        audit=[AuditEntry(actor="admin", action="erasure.requested", object="e1", detail={})],
    )  # fmt: skip
    # A hold is placed on the number afterwards (it is accepted: nothing was destroyed yet).
    await catalog.holds.create(
        id="hold-1", tenant_id="acme", reason="lawsuit", created_by="admin", now=END,
        number=CALLER,
    )  # fmt: skip
    swept = await parts.sweeper.sweep(END)
    assert (swept.held, swept.objects_deleted) == (4, 0)
    assert await content(parts, call.audio) == [KEPT, KEPT]
    # And an erasure requested while the hold is active is refused in the catalog itself.
    other = await seed_call(parts, "acme", "call-2")
    with pytest.raises(HeldByLegalHold) as refused:
        await catalog.retention.request_deletion("acme", [other.recording_id], "erasure", END)
    assert refused.value.hold == "hold-1"
    assert (await catalog.recordings.get("acme", other.recording_id)).status == "analyzed"


class Rendezvous:
    """Holds its first ``count`` callers until all of them arrived (or ``timeout_s``
    passed, where fewer come); later ones pass at once."""

    def __init__(self, count: int, timeout_s: float = 1.0) -> None:
        self._count = count
        self._timeout_s = timeout_s
        self._arrived = 0
        self._all = asyncio.Event()

    async def wait(self) -> None:
        self._arrived += 1
        if self._arrived >= self._count:
            self._all.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all.wait(), self._timeout_s)


def meet_after(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, at: Rendezvous) -> None:
    """Make ``owner.name`` wait at the rendezvous once it has done its work."""
    real: Callable[..., Any] = getattr(owner, name)

    async def meeting(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        await at.wait()
        return result

    monkeypatch.setattr(owner, name, meeting)


@pytest.mark.parametrize("notifier", ["recorded", "webhooks"])
async def test_two_batches_sharing_a_recording_queue_its_event_once(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notifier: str
) -> None:
    """Two batches in flight hold objects of the same recording; both mark theirs, then
    both find the recording with nothing left: only the one whose completion moves it
    queues its ``recording.deleted`` event (on PostgreSQL the second insert of the same
    event id would fail the tenant's sweep)."""
    store = FileStore(tmp_path / "objects")
    try:
        async with open_parts(database_url, store, tmp_path / "keys") as parts:
            webhook = {
                "url": "https://hooks.example.com/callvault",
                "secret": "s3cret-s3cret-s3cret",
            }
            await add_tenant(parts, "acme", ALL_AT_ONCE, webhook=webhook)
            call = await seed_call(parts, "acme", "call-1")  # 4 objects: batches of 3 and 1
            sweeper = parts.new_sweeper(batch_size=3)
            if notifier == "webhooks":
                sweeper = parts.new_sweeper(
                    batch_size=3, notify=deletion_notifier(parts.catalog, max_attempts=3)
                )
            # Both batches' objects are marked before either batch looks for recordings
            # with nothing left, and both look before either completes one.
            marked, looked = Rendezvous(2), Rendezvous(2)
            meet_after(monkeypatch, parts.catalog.retention, "mark_objects_deleted", marked)
            meet_after(monkeypatch, parts.catalog.retention, "due_recordings", looked)

            swept = await sweeper.sweep(END + 2 * DAY)
            assert swept.as_dict() == report(
                objects_deleted=4, bytes_deleted=call.size, recordings_deleted=1
            )
            actions = [(a, o) for a, o, _ in await receipts(parts, "acme")]
            assert actions.count(("recording.deleted", call.recording_id)) == 1
            event_id = deleted_event_id(call.recording_id)
            if notifier == "recorded":
                assert [(n.event_id, n.data) for n in parts.notify.calls] == [
                    (event_id, {"recording_id": call.recording_id, "reason": "retention"})
                ]
            else:
                jobs = await parts.catalog.jobs.list("acme", kind=JOB_KIND)
                assert [(job.id, job.recording_id) for job in jobs] == [
                    (event_id, call.recording_id)
                ]
    finally:
        await store.close()
