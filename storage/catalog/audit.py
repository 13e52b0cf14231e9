"""The tenants' hash-chained audit logs: appending, reading and verifying them.

Every write that must be proven later (a recording created, a call ended, data deleted, a
hold placed) appends its event with ``append_entries`` inside the write's own transaction,
so that the write and its event commit together or not at all. ``Audit.append`` is for the
events that stand alone (an API call that only reads, an instructions update). The chain's
hashing lives in ``storage.catalog.auditchain``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.auditchain import GENESIS_HASH, chain_hash, encode_detail, event_hash
from storage.catalog.core import AnyRow, CatalogCore, lock_tenant, row_values
from storage.catalog.records import AuditCheck, AuditEntry, AuditEvent
from storage.catalog.schema import audit_events, tenants
from storage.errors import NotFound

_AUDIT_CHUNK = 200
"""Events hashed and inserted at a time: thousands at once would hold the event loop (and
with it ingest) for tens of milliseconds."""


async def append_entries(
    conn: AsyncConnection, tenant_id: str, entries: Sequence[AuditEntry], now: datetime
) -> list[AuditEvent]:
    """Append ``entries`` to the tenant's chain inside the caller's transaction (so that an
    action and its audit event commit together or not at all). Appends queue on the tenant
    row, which holds the chain's head, so concurrent appends never fork it; the
    (tenant, seq) key is the backstop. Works after the tenant was deleted too, so that its
    erasure is logged."""
    if not entries:
        return []
    head = await lock_tenant(conn, tenant_id, live=False)
    seq, prev = head.audit_seq, head.audit_head
    events: list[AuditEvent] = []
    for start in range(0, len(entries), _AUDIT_CHUNK):
        chunk: list[AuditEvent] = []
        for entry in entries[start : start + _AUDIT_CHUNK]:
            detail, detail_json = encode_detail(entry.detail)
            seq += 1
            digest = chain_hash(
                prev,
                seq=seq,
                at=now,
                actor=entry.actor,
                action=entry.action,
                object=entry.object,
                detail_json=detail_json,
            )
            chunk.append(
                AuditEvent(
                    tenant_id=tenant_id,
                    seq=seq,
                    at=now,
                    actor=entry.actor,
                    action=entry.action,
                    object=entry.object,
                    detail=detail,
                    prev_hash=prev,
                    hash=digest,
                )
            )
            prev = digest
        await conn.execute(sa.insert(audit_events), [row_values(event) for event in chunk])
        events.extend(chunk)
    await conn.execute(
        sa.update(tenants).where(tenants.c.id == tenant_id).values(audit_seq=seq, audit_head=prev)
    )
    return events


def _rehash(row: AnyRow) -> str | None:
    """The hash a stored audit event should have; ``None`` if its content cannot even be
    hashed (tampered into something that is not JSON-able)."""
    try:
        return event_hash(
            row.prev_hash,
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            object=row.object,
            detail=row.detail,
        )
    except (ValueError, TypeError):
        return None


class Audit:
    """``catalog.audit``: each tenant's hash-chained log of what was done to its data."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def append(
        self,
        tenant_id: str,
        actor: str,
        action: str,
        object: str | None,
        detail: dict[str, Any],
        now: datetime,
    ) -> AuditEvent:
        """Append one event to the tenant's chain in a transaction of its own."""
        entry = AuditEntry(actor=actor, action=action, object=object, detail=detail)
        subject = f"Audit event of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            (event,) = await append_entries(conn, tenant_id, [entry], now)
        return event

    async def append_many(
        self, tenant_id: str, entries: Sequence[AuditEntry], now: datetime
    ) -> list[AuditEvent]:
        """Append several events to the tenant's chain in one transaction."""
        subject = f"Audit events of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            return await append_entries(conn, tenant_id, entries, now)

    async def verify(self, tenant_id: str) -> AuditCheck:
        """Recompute the tenant's chain: every event must follow the previous one (seq + 1,
        ``prev_hash``), its hash must match its content, and the last must be the head kept on
        the tenant row (so that a removed tail is noticed too). Reads one consistent snapshot
        on PostgreSQL (REPEATABLE READ); SQLite transactions are snapshots already."""
        broken: int | None = None
        count = 0
        expected_seq, expected_prev = 1, GENESIS_HASH
        async with self._core.transaction(snapshot=True) as conn:
            head = (
                await conn.execute(
                    sa.select(tenants.c.audit_seq, tenants.c.audit_head).where(
                        tenants.c.id == tenant_id
                    )
                )
            ).one_or_none()
            if head is None:
                raise NotFound(f"Tenant {tenant_id!r} not found.")
            result = await conn.stream(
                sa.select(audit_events)
                .where(audit_events.c.tenant_id == tenant_id)
                .order_by(audit_events.c.seq)
            )
            async for row in result:
                count += 1
                if broken is not None:
                    continue
                if row.seq != expected_seq:
                    broken = expected_seq
                elif row.prev_hash != expected_prev or row.hash != _rehash(row):
                    broken = row.seq
                else:
                    expected_seq, expected_prev = expected_seq + 1, row.hash
        last_seq = expected_seq - 1
        if broken is None and (last_seq, expected_prev) != (head.audit_seq, head.audit_head):
            # The rows form a valid chain that is not the one the head describes: missing
            # events at the end, events added past the head, or a re-hashed last event.
            broken = min(last_seq, head.audit_seq) + 1
            if last_seq == head.audit_seq:
                broken = last_seq
        return AuditCheck(ok=broken is None, broken_at=broken, count=count)

    async def list(
        self, tenant_id: str, *, since_seq: int = 0, limit: int = 100
    ) -> list[AuditEvent]:
        """Events with ``seq > since_seq``, oldest first, at most ``limit``."""
        return await self._core.all(
            sa.select(audit_events)
            .where(audit_events.c.tenant_id == tenant_id, audit_events.c.seq > since_seq)
            .order_by(audit_events.c.seq)
            .limit(limit),
            AuditEvent,
        )
