"""Recordings: the lifecycle of one accepted call's audio and analysis.

A recording is created with its call record (``Calls.announce``), finished with its AI job
and its ``call.ended`` audit event in one transaction (``Recordings.finish``), and moves
along ``RECORDING_TRANSITIONS`` after that; its erasure is a retention query
(``storage.catalog.retention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.audit import append_entries
from storage.catalog.core import (
    MAX_ERROR_CHARS,
    AnyRow,
    CatalogCore,
    after_key,
    at,
    lock_tenant,
    record,
    record_prefixed,
)
from storage.catalog.jobs import insert_jobs, new_job
from storage.catalog.nodes import lock_node
from storage.catalog.records import (
    RECORDING_STATUSES,
    AuditEntry,
    Call,
    CallKey,
    Recording,
    RecordingKey,
    RecordingStatus,
    StreamLease,
)
from storage.catalog.schema import calls, recordings, tenants
from storage.errors import Conflict, NotFound

# Which statuses a recording may move to; a move to the status it already has is a no-op
# that may still set fields (so that retried workers and sweeps are idempotent).
RECORDING_TRANSITIONS: dict[RecordingStatus, frozenset[RecordingStatus]] = {
    "recording": frozenset({"recorded", "processing", "failed", "deleted"}),
    "processing": frozenset({"analyzed", "failed", "deleted"}),
    "failed": frozenset({"processing", "deleted"}),
    "recorded": frozenset({"deleted"}),
    "analyzed": frozenset({"deleted"}),
    "deleted": frozenset(),
}

_CALL_COLUMNS = [column.label("call__" + column.name) for column in calls.c]


def new_recording(
    id: str, tenant_id: str, call_id: str, instructions_version: int, now: datetime
) -> dict[str, Any]:
    """The row of a recording that starts now (status ``recording``)."""
    return {
        "id": id,
        "tenant_id": tenant_id,
        "call_id": call_id,
        "status": "recording",
        "instructions_version": instructions_version,
        "created_at": now,
        "ended_at": None,
        "audio_purged": False,
        "failure_reason": None,
        "deleted_at": None,
        "delete_reason": None,
        "samples": None,
    }


def calls_of_number(
    tenant_id: str, number: str, after: CallKey | None, through: CallKey | None
) -> list[sa.ColumnElement[bool]]:
    """The calls of the tenant where ``number`` is a party, after the keyset cursor ``after``
    and up to ``through`` ((started_at, id) both): ``Calls.of_number``'s conditions, and
    ``Recordings.of_number``'s on their calls."""
    key = (calls.c.started_at, calls.c.id)
    where = [
        calls.c.tenant_id == tenant_id,
        sa.or_(calls.c.from_number == number, calls.c.to_number == number),
    ]
    if after is not None:
        where.append(after_key(key, after))
    if through is not None:
        where.append(sa.not_(after_key(key, through)))
    return where


async def require_recording(conn: AsyncConnection, tenant_id: str, recording_id: str) -> AnyRow:
    """The tenant's recording row in the caller's transaction; ``NotFound`` if unknown or
    another tenant's."""
    row = (
        await conn.execute(
            sa.select(recordings).where(
                recordings.c.id == recording_id, recordings.c.tenant_id == tenant_id
            )
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"Recording {recording_id!r} not found.")
    return row


class Recordings:
    """``catalog.recordings``: recordings and their lifecycle."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def create(
        self,
        *,
        id: str,
        tenant_id: str,
        call_id: str,
        instructions_version: int,
        now: datetime,
    ) -> Recording:
        """Start a recording of the tenant's call (status ``recording``)."""
        return await self._core.insert(
            sa.insert(recordings).values(
                **new_recording(id, tenant_id, call_id, instructions_version, now)
            ),
            Recording,
            subject=f"Recording {id!r}",
        )

    async def get(self, tenant_id: str, recording_id: str) -> Recording:
        """The tenant's recording; ``NotFound`` if unknown or another tenant's."""
        async with self._core.transaction() as conn:
            row = await require_recording(conn, tenant_id, recording_id)
        return record(Recording, row)

    async def of_call(self, tenant_id: str, call_id: str) -> Recording | None:
        """The recording of the tenant's call, ``None`` if it has none (refused call)."""
        found = await self._core.all(
            sa.select(recordings)
            .where(recordings.c.tenant_id == tenant_id, recordings.c.call_id == call_id)
            .order_by(recordings.c.created_at)
            .limit(1),
            Recording,
        )
        return found[0] if found else None

    async def live(self, *, node_id: str | None = None, unowned: bool = False) -> list[Recording]:
        """Every recording still in progress (status ``recording``) of a live tenant; with
        ``node_id``, only those of calls that node took (and, ``unowned``, of calls from
        before the node registry, which name no node)."""
        joined = recordings.join(tenants, recordings.c.tenant_id == tenants.c.id)
        where = [recordings.c.status == "recording", tenants.c.deleted_at.is_(None)]
        if node_id is not None:
            joined = joined.join(
                calls,
                sa.and_(
                    calls.c.tenant_id == recordings.c.tenant_id,
                    calls.c.id == recordings.c.call_id,
                ),
            )
            mine = calls.c.node_id == node_id
            where.append(sa.or_(mine, calls.c.node_id.is_(None)) if unowned else mine)
        return await self._core.all(
            sa.select(*recordings.c)
            .select_from(joined)
            .where(*where)
            .order_by(recordings.c.created_at),
            Recording,
        )

    async def get_entry(self, tenant_id: str, recording_id: str) -> tuple[Recording, Call]:
        """The tenant's recording with its call record; ``NotFound`` if unknown or another
        tenant's."""
        entries = await self._entries(
            sa.and_(recordings.c.tenant_id == tenant_id, recordings.c.id == recording_id), limit=1
        )
        if not entries:
            raise NotFound(f"Recording {recording_id!r} not found.")
        return entries[0]

    async def list_entries(
        self,
        tenant_id: str,
        *,
        number: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[Recording, Call]]:
        """The tenant's recordings with their call records, newest first: where ``number``
        is either party, started in ``[since, until)``, and strictly after the keyset
        cursor ``after`` = (created_at, id) of the last one of the previous page."""
        where = [recordings.c.tenant_id == tenant_id]
        if number is not None:
            where.append(sa.or_(calls.c.from_number == number, calls.c.to_number == number))
        if since is not None:
            where.append(calls.c.started_at >= since)
        if until is not None:
            where.append(calls.c.started_at < until)
        if after is not None:
            created_at, recording_id = after
            where.append(
                sa.or_(
                    recordings.c.created_at < created_at,
                    sa.and_(recordings.c.created_at == created_at, recordings.c.id < recording_id),
                )
            )
        return await self._entries(sa.and_(*where), limit=limit)

    async def of_number(
        self,
        tenant_id: str,
        number: str,
        *,
        after: RecordingKey | None = None,
        through: CallKey | None = None,
        limit: int,
    ) -> list[tuple[Recording, Call]]:
        """A page of the recordings of the tenant's calls where ``number`` is a party, with
        their calls, oldest call first: strictly after the keyset cursor ``after`` (the
        previous page's last) and of calls up to ``through`` (see ``Calls.of_number``)."""
        where = calls_of_number(tenant_id, number, None, through)
        key = (calls.c.started_at, calls.c.id, recordings.c.id)
        if after is not None:
            where.append(after_key(key, after))
        return await self._entries(sa.and_(*where), limit=limit, order=key)

    async def _entries(
        self,
        where: sa.ColumnElement[bool],
        *,
        limit: int,
        order: Sequence[sa.ColumnElement[Any]] = (
            recordings.c.created_at.desc(),
            recordings.c.id.desc(),
        ),
    ) -> list[tuple[Recording, Call]]:
        stmt = (
            sa.select(recordings, *_CALL_COLUMNS)
            .select_from(
                recordings.join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(where)
            .order_by(*order)
            .limit(limit)
        )
        async with self._core.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(record(Recording, row), record_prefixed(Call, row, "call__")) for row in rows]

    async def finish(
        self,
        tenant_id: str,
        recording_id: str,
        *,
        samples: int,
        now: datetime,
        job_id: str | None = None,
        job_kind: str = "analyze",
        audit: AuditEntry | None = None,
        while_node_dead: str | None = None,
        unless_carried_elsewhere: str | None = None,
    ) -> Recording:
        """Finalize a live recording in one transaction: its timeline length, its end, the
        end of its call, its ``audit`` event and, when ``job_id`` is given, its AI job
        (status ``processing``; else ``recorded``). Finishing it again is a no-op that
        returns it unchanged, so a shutdown racing a hangup cannot queue a second job nor
        log a second end. ``while_node_dead``: another node ends a call of that node, which
        was declared dead; a no-op (the recording returned still ``recording``) if the call
        is no longer that node's (another node took it over: ``Calls.take_over``) or that
        node is no longer dead (it came back and takes its calls up itself), both checked
        under the call's and the node's row locks. ``unless_carried_elsewhere``: the prefix
        of the stream holders of the finishing process (``gateway.attachments``); a no-op
        (likewise) if a stream of any other holder carries the call at ``now``, checked
        under the call's row lock: a claim that landed after the caller last looked is
        not ended under it (a node's graceful shutdown)."""
        status: RecordingStatus = "processing" if job_id is not None else "recorded"
        subject = f"Recording {recording_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            # The tenant row first, as every writer takes it (its audit event needs it
            # anyway): rows first would deadlock with the settling of a deleted tenant,
            # which locks the tenant and then ends its live recordings. Finishing stays
            # allowed after the tenant's deletion.
            await lock_tenant(conn, tenant_id, live=False)
            current = await require_recording(conn, tenant_id, recording_id)
            if current.status != "recording":
                return record(Recording, current)
            if while_node_dead is not None:
                # The call row locked, then its node: a node that took the call over meanwhile
                # (``Calls.take_over``: a reconnect reached it) carries it, whatever the
                # settling node listed; a node that came back takes its calls up itself.
                carrier = (
                    await conn.execute(
                        sa.select(calls.c.node_id)
                        .where(calls.c.tenant_id == tenant_id, calls.c.id == current.call_id)
                        .with_for_update()
                    )
                ).scalar_one_or_none()
                if carrier != while_node_dead:
                    return record(Recording, current)
                node = await lock_node(conn, while_node_dead)
                if node is None or node.state != "dead":
                    return record(Recording, current)
            if unless_carried_elsewhere is not None:
                row = (
                    await conn.execute(
                        sa.select(calls.c.attached_by, calls.c.attached_until)
                        .where(calls.c.tenant_id == tenant_id, calls.c.id == current.call_id)
                        .with_for_update()
                    )
                ).one()
                lease = StreamLease(
                    peer=None,
                    attached_by=row.attached_by,
                    attached_until=row.attached_until,
                    ended=False,
                )
                if lease.held_by_other(None, now) and not (row.attached_by or "").startswith(
                    unless_carried_elsewhere
                ):
                    return record(Recording, current)
            row = (
                await conn.execute(
                    sa.update(recordings)
                    .where(recordings.c.id == recording_id)
                    .values(status=status, samples=samples, ended_at=now)
                    .returning(*recordings.c)
                )
            ).one()
            await conn.execute(
                sa.update(calls)
                .where(calls.c.tenant_id == tenant_id, calls.c.id == current.call_id)
                .values(ended_at=sa.func.coalesce(calls.c.ended_at, at(now)))
            )
            if job_id is not None:
                job = new_job(
                    id=job_id,
                    tenant_id=tenant_id,
                    recording_id=recording_id,
                    kind=job_kind,
                    now=now,
                )
                await insert_jobs(conn, [job])
            if audit is not None:
                await append_entries(conn, tenant_id, [audit], now, keys=self._core.audit_keys)
        return record(Recording, row)

    async def update_status(
        self,
        tenant_id: str,
        recording_id: str,
        status: RecordingStatus,
        now: datetime,
        *,
        ended_at: datetime | None = None,
        audio_purged: bool | None = None,
        failure_reason: str | None = None,
        delete_reason: str | None = None,
    ) -> Recording:
        """Move a recording along its lifecycle (``RECORDING_TRANSITIONS``); a move that the
        lifecycle forbids is a ``Conflict``. Leaving ``recording`` sets ``ended_at`` (to
        ``ended_at`` or ``now``) unless already set; ``deleted`` sets ``deleted_at``."""
        if status not in RECORDING_STATUSES:
            raise ValueError(f"unknown recording status {status!r}")
        sources = [s for s, targets in RECORDING_TRANSITIONS.items() if status in targets]
        values: dict[str, Any] = {"status": status}
        if status != "recording":
            values["ended_at"] = sa.func.coalesce(recordings.c.ended_at, at(ended_at or now))
        if audio_purged is not None:
            values["audio_purged"] = audio_purged
        if failure_reason is not None:
            values["failure_reason"] = failure_reason[:MAX_ERROR_CHARS]
        if status == "deleted":
            values["deleted_at"] = sa.func.coalesce(recordings.c.deleted_at, at(now))
            if delete_reason is not None:
                values["delete_reason"] = delete_reason
        async with self._core.transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(recordings)
                    .where(
                        recordings.c.id == recording_id,
                        recordings.c.tenant_id == tenant_id,
                        recordings.c.status.in_([*sources, status]),
                    )
                    .values(**values)
                    .returning(*recordings.c)
                )
            ).one_or_none()
            if row is None:
                current = await require_recording(conn, tenant_id, recording_id)
                raise Conflict(
                    f"Recording {recording_id!r} is {current.status}; it cannot become {status}."
                )
        return record(Recording, row)
