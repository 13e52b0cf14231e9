"""Writes that must be proven commit with their audit event or not at all, on SQLite and
PostgreSQL: a tenant's creation, a call's announcement (with its recording) and a
recording's finish (with its AI job).

The failure is injected where the event is written: the audit module's
insert-in-this-transaction function (as the aggregate module imports it) appends the event
and then fails, as a database failing mid-transaction would; nothing of the write may stay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.auditkeys import AuditKeyProvider
from storage.catalog import AuditEntry, AuditEvent, Catalog
from storage.catalog import audit as audit_module
from storage.errors import CatalogUnavailable, NotFound

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
EVENT = AuditEntry(actor="op", action="tenant.created", object="acme", detail={})


@pytest.fixture
def failing_audit(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the audit insert of the named aggregate module fail after writing its rows."""

    def install(module: str) -> None:
        async def append_then_fail(
            conn: AsyncConnection,
            tenant_id: str,
            entries: Sequence[AuditEntry],
            now: datetime,
            *,
            keys: AuditKeyProvider,
        ) -> list[AuditEvent]:
            await audit_module.append_entries(conn, tenant_id, entries, now, keys=keys)
            raise CatalogUnavailable("the audit insert failed")

        monkeypatch.setattr(f"storage.catalog.{module}.append_entries", append_then_fail)

    return install


async def announce(catalog: Catalog, *, audit: AuditEntry | None) -> None:
    await catalog.calls.announce(
        id="call-1",
        tenant_id="acme",
        from_number="+40211111111",
        to_number="+40722222222",
        direction="inbound",
        consent="granted",
        transport="twilio",
        codec="pcmu",
        sample_rate=8000,
        instructions_version=1,
        decision={"store_recording": True, "ai": []},
        refusal_code=None,
        started_at=T0,
        recording_id="rec-1",
        audit=audit,
    )


async def live_recording(catalog: Catalog) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    await announce(catalog, audit=None)


def created(recording_id: str = "rec-1") -> AuditEntry:
    return AuditEntry(
        actor="pbx", action="recording.created", object=recording_id, detail={"call_id": "call-1"}
    )


def ended(job: str | None) -> AuditEntry:
    return AuditEntry(
        actor="gateway", action="call.ended", object="rec-1", detail={"samples": 8, "job": job}
    )


# --- creating a tenant ----------------------------------------------------------------------


async def test_a_new_tenant_comes_with_exactly_one_event(catalog: Catalog) -> None:
    tenant = await catalog.tenants.create("acme", "Acme", "eu", T0, audit=EVENT)
    assert tenant.id == "acme"
    events = await catalog.audit.list("acme")
    assert [(e.seq, e.action, e.object, e.actor) for e in events] == [
        (1, "tenant.created", "acme", "op")
    ]
    assert (await catalog.audit.verify("acme")).ok


async def test_a_tenant_whose_event_fails_is_not_created(
    catalog: Catalog, failing_audit: Any
) -> None:
    failing_audit("tenants")
    with pytest.raises(CatalogUnavailable):
        await catalog.tenants.create("acme", "Acme", "eu", T0, audit=EVENT)
    with pytest.raises(NotFound):
        await catalog.tenants.get("acme")
    assert await catalog.tenants.list(include_deleted=True) == []
    assert await catalog.audit.list("acme") == []
    # Nothing half-done is in the way: the same creation succeeds once the audit does.
    await catalog.tenants.create("acme", "Acme", "eu", T0)


# --- announcing a call ----------------------------------------------------------------------


async def test_an_announced_call_comes_with_exactly_one_event(catalog: Catalog) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    await announce(catalog, audit=created())
    events = await catalog.audit.list("acme")
    assert [(e.action, e.object, e.detail) for e in events] == [
        ("recording.created", "rec-1", {"call_id": "call-1"})
    ]
    assert (await catalog.recordings.get("acme", "rec-1")).status == "recording"


async def test_a_call_whose_event_fails_is_not_recorded(
    catalog: Catalog, failing_audit: Any
) -> None:
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    failing_audit("calls")
    with pytest.raises(CatalogUnavailable):
        await announce(catalog, audit=created())
    with pytest.raises(NotFound):
        await catalog.calls.get("acme", "call-1")
    with pytest.raises(NotFound):
        await catalog.recordings.get("acme", "rec-1")
    assert await catalog.audit.list("acme") == []


# --- finishing a recording ------------------------------------------------------------------


async def test_a_finished_recording_comes_with_exactly_one_event(catalog: Catalog) -> None:
    await live_recording(catalog)
    end = T0 + timedelta(minutes=2)
    recording = await catalog.recordings.finish(
        "acme", "rec-1", samples=8, now=end, job_id="job-1", audit=ended("job-1")
    )
    assert recording.status == "processing"
    # Finishing again (a shutdown racing the hangup) logs no second end, queues no job.
    again = await catalog.recordings.finish(
        "acme", "rec-1", samples=9, now=end, job_id="job-2", audit=ended("job-2")
    )
    assert again == recording
    events = await catalog.audit.list("acme")
    assert [(e.action, e.object, e.detail["job"]) for e in events] == [
        ("call.ended", "rec-1", "job-1")
    ]
    assert [job.id for job in await catalog.jobs.list("acme")] == ["job-1"]
    assert (await catalog.audit.verify("acme")).ok


async def test_a_finish_whose_event_fails_leaves_the_recording_live(
    catalog: Catalog, failing_audit: Any
) -> None:
    await live_recording(catalog)
    failing_audit("recordings")
    end = T0 + timedelta(minutes=2)
    with pytest.raises(CatalogUnavailable):
        await catalog.recordings.finish(
            "acme", "rec-1", samples=8, now=end, job_id="job-1", audit=ended("job-1")
        )
    recording = await catalog.recordings.get("acme", "rec-1")
    assert (recording.status, recording.samples, recording.ended_at) == ("recording", None, None)
    assert (await catalog.calls.get("acme", "call-1")).ended_at is None
    assert await catalog.jobs.list("acme") == []
    assert await catalog.audit.list("acme") == []
    assert [r.id for r in await catalog.recordings.live()] == ["rec-1"]


# --- finishing while the deleted tenant is settled ------------------------------------------


async def test_a_finish_racing_the_settling_of_its_deleted_tenant_deadlocks_neither(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One node finishes a call while another settles the tenant deleted meanwhile: every
    writer locks the tenant row before the rows it changes, so neither waits on the other's
    rows while holding what the other waits for (PostgreSQL would kill one as a deadlock)."""
    await live_recording(catalog)
    await catalog.tenants.mark_deleted("acme", T0 + timedelta(minutes=1))
    in_finish = asyncio.Event()

    async def slow_append(
        conn: AsyncConnection,
        tenant_id: str,
        entries: Sequence[AuditEntry],
        now: datetime,
        *,
        keys: AuditKeyProvider,
    ) -> list[AuditEvent]:
        # The finish has written what it writes before its event: hold its transaction
        # open while the settling runs.
        in_finish.set()
        await asyncio.sleep(0.3)
        return await audit_module.append_entries(conn, tenant_id, entries, now, keys=keys)

    monkeypatch.setattr("storage.catalog.recordings.append_entries", slow_append)
    end = T0 + timedelta(minutes=2)

    async def settle() -> None:
        await in_finish.wait()
        await catalog.retention.settle_deleted_tenant("acme", end + timedelta(seconds=1))

    finished, _ = await asyncio.gather(
        catalog.recordings.finish(
            "acme", "rec-1", samples=8, now=end, job_id="job-1", audit=ended("job-1")
        ),
        settle(),
    )
    # The finish came first: the recording is finished, its call ended then; the settling
    # found nothing left to settle.
    assert finished.status == "processing"
    recording = await catalog.recordings.get("acme", "rec-1")
    assert (recording.status, recording.samples, recording.ended_at) == ("processing", 8, end)
    assert (await catalog.calls.get("acme", "call-1")).ended_at == end
    assert [job.id for job in await catalog.jobs.list("acme")] == ["job-1"]
    assert [e.action for e in await catalog.audit.list("acme")] == ["call.ended"]
    assert (await catalog.audit.verify("acme")).ok
