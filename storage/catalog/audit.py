"""The tenants' keyed audit logs: appending, reading and verifying them.

Every write that must be proven later (a recording created, a call ended, data deleted, a
hold placed) appends its event with ``append_entries`` inside the write's own transaction,
so that the write and its event commit together or not at all. ``Audit.append`` is for the
events that stand alone (an API call that only reads, an instructions update). The chain's
hashing lives in ``storage.catalog.auditchain``: HMAC-SHA256 under the tenant's audit key,
which comes from the keyring (``CatalogCore.audit_keys``), never from this database.

Whether a tenant's chain is keyed is the keyring's word, not the database's: a tenant whose
audit key is active in the keyring is always verified keyed, so a database writer cannot
declare a chain "legacy" and recompute it with plain SHA-256. ``verify`` also checks the
chain against the latest signed checkpoint (``storage.catalog.checkpoints``), which a
database writer cannot make either, so a chain cut back to an earlier head is noticed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.auditkeys import AuditKeyProvider
from crypto.errors import KeyUnavailable
from crypto.signing import CheckpointSigner, decode_signature
from storage.catalog.auditchain import (
    GENESIS_HASH,
    canonical_json,
    chain_hash,
    checkpoint_message,
    encode_detail,
    event_body,
    keyed_hash,
    legacy_hash,
)
from storage.catalog.core import AnyRow, CatalogCore, lock_tenant, row_values
from storage.catalog.records import AuditCheck, AuditEntry, AuditEvent
from storage.catalog.schema import audit_checkpoints, audit_events, tenants
from storage.errors import NotFound

log = logging.getLogger(__name__)

_AUDIT_CHUNK = 200
"""Events hashed and inserted at a time: thousands at once would hold the event loop (and
with it ingest) for tens of milliseconds."""
_REKEY_PAGE = 1000
"""Events read and rewritten at a time when a legacy chain is re-keyed."""


async def append_entries(
    conn: AsyncConnection,
    tenant_id: str,
    entries: Sequence[AuditEntry],
    now: datetime,
    *,
    keys: AuditKeyProvider,
) -> list[AuditEvent]:
    """Append ``entries`` to the tenant's chain inside the caller's transaction (so that an
    action and its audit event commit together or not at all), keyed by the tenant's audit
    key from ``keys`` (``CatalogCore.audit_keys``). Appends queue on the tenant row, which
    holds the chain's head, so concurrent appends never fork it; the (tenant, seq) key is
    the backstop. Works after the tenant was deleted too, so that its erasure is logged."""
    if not entries:
        return []
    head = await lock_tenant(conn, tenant_id, live=False)
    key = await _chain_key(keys, tenant_id, head.audit_seq)
    return await append_keyed(conn, tenant_id, entries, now, key, head.audit_seq, head.audit_head)


async def _chain_key(keys: AuditKeyProvider, tenant_id: str, seq: int) -> bytes:
    """The key that extends the tenant's chain: its active audit key; an empty chain gets
    one now. A chain with events and no active key is a legacy chain the gateway re-keys
    when it starts (``Audit.rekey_legacy``): nothing is appended to it before."""
    found = await keys.audit_key(tenant_id)
    if found is not None and found.active:
        return found.key
    if seq == 0:
        made = await keys.create_audit_key(tenant_id, pending=False)
        if not made.active:
            await keys.activate_audit_key(tenant_id)
        return made.key
    raise KeyUnavailable(
        f"The audit log of tenant {tenant_id!r} is not keyed yet; callvault re-keys it when "
        "it starts (restart serve, or run `callvault audit verify`)."
    )


async def append_keyed(
    conn: AsyncConnection,
    tenant_id: str,
    entries: Sequence[AuditEntry],
    now: datetime,
    key: bytes,
    seq: int,
    prev: str,
) -> list[AuditEvent]:
    """Append ``entries`` after the head (``seq``, ``prev``) under ``key``, and move the
    head; the caller holds the tenant row's lock."""
    events: list[AuditEvent] = []
    for start in range(0, len(entries), _AUDIT_CHUNK):
        chunk: list[AuditEvent] = []
        for entry in entries[start : start + _AUDIT_CHUNK]:
            detail, detail_json = encode_detail(entry.detail)
            seq += 1
            digest = chain_hash(
                key,
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


def raw_events() -> sa.Select[Any]:
    """``SELECT`` of audit events with ``at`` and ``detail`` as the database holds them,
    undecoded: a row tampered into something that does not decode (SQLite holds both as
    text: ``detail = '{bad'``, ``at = 'yesterday'``) must be a break in the chain at that
    event, not an exception that stops the whole read. ``rehash`` decodes them per row."""
    raw = {"at": sa.type_coerce(audit_events.c.at, sa.Text), "detail": _raw_detail()}
    return sa.select(*(raw[c.name].label(c.name) if c.name in raw else c for c in audit_events.c))


def _raw_detail() -> sa.ColumnElement[Any]:
    return sa.type_coerce(audit_events.c.detail, sa.Text)


def stored_at(value: Any) -> datetime:
    """An event time as ``raw_events`` reads it, aware UTC; ``ValueError`` if it is not one."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError("not a time")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def stored_detail(value: Any) -> Any:
    """An event's detail as ``raw_events`` reads it, decoded; ``ValueError`` if it is not
    JSON."""
    if isinstance(value, bytes | str):
        return json.loads(value)
    return value


def rehash(key: bytes, row: AnyRow, prev_hash: str | None = None) -> str | None:
    """The hash a stored audit event (read with ``raw_events``) should have under ``key``
    (after ``prev_hash``, by default its own); ``None`` if its content cannot even be
    decoded or hashed (tampered into something that is not JSON, not a time)."""
    try:
        return keyed_hash(key, row.prev_hash if prev_hash is None else prev_hash, _body(row))
    except (ValueError, TypeError):
        return None


def _body(row: AnyRow) -> bytes:
    """The body a stored audit event's hash covers (``auditchain.event_body``); ValueError
    or TypeError if the row does not decode into one."""
    return event_body(
        seq=row.seq,
        at=stored_at(row.at),
        actor=row.actor,
        action=row.action,
        object=row.object,
        detail_json=canonical_json(stored_detail(row.detail)),
    )


def checkpoint_signed(signer: CheckpointSigner, tenant_id: str, checkpoint: AnyRow) -> bool:
    """Whether a checkpoint row (``at`` decoded or raw, see ``raw_checkpoints``) carries the
    gateway's valid signature of its own fields; a row that does not even decode does not."""
    if checkpoint.key_id != signer.key_id:
        return False
    try:
        message = checkpoint_message(
            tenant=tenant_id,
            seq=checkpoint.seq,
            hash=checkpoint.hash,
            at=stored_at(checkpoint.at),
            key_id=checkpoint.key_id,
        )
        return signer.verify(message, decode_signature(checkpoint.signature))
    except (ValueError, TypeError):
        return False


def raw_checkpoints() -> sa.Select[Any]:
    """``SELECT`` of checkpoint rows with ``at`` undecoded (see ``raw_events``)."""
    at = sa.type_coerce(audit_checkpoints.c.at, sa.Text).label("at")
    return sa.select(*(at if c.name == "at" else c for c in audit_checkpoints.c))


class Audit:
    """``catalog.audit``: each tenant's keyed, checkpointed log of what was done to its data."""

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
            (event,) = await append_entries(
                conn, tenant_id, [entry], now, keys=self._core.audit_keys
            )
        return event

    async def append_many(
        self, tenant_id: str, entries: Sequence[AuditEntry], now: datetime
    ) -> list[AuditEvent]:
        """Append several events to the tenant's chain in one transaction."""
        subject = f"Audit events of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            return await append_entries(conn, tenant_id, entries, now, keys=self._core.audit_keys)

    async def verify(self, tenant_id: str) -> AuditCheck:
        """Recompute the tenant's chain under its audit key: every event must follow the
        previous one (seq + 1, ``prev_hash``), its HMAC must match its content, and the last
        must be the head kept on the tenant row (so that a removed tail is noticed too).
        Then the latest checkpoint: its signature must verify under the gateway's key, the
        chain must reach its sequence number and hold its hash there. ``broken_at`` names
        the first event that is altered, missing or out of place; ``reason`` says which
        check failed. Reads one consistent snapshot on PostgreSQL (REPEATABLE READ); SQLite
        transactions are snapshots already."""
        keys = self._core.audit_keys
        found = await keys.audit_key(tenant_id)
        key = found.key if found is not None and found.active else None
        signer = await keys.checkpoint_signer()
        broken: int | None = None
        count = 0
        expected_seq, expected_prev = 1, GENESIS_HASH
        at_checkpoint: str | None = None
        async with self._core.transaction(snapshot=True) as conn:
            head = await _head(conn, tenant_id)
            checkpoint = (
                await conn.execute(
                    raw_checkpoints()
                    .where(audit_checkpoints.c.tenant_id == tenant_id)
                    .order_by(audit_checkpoints.c.seq.desc())
                    .limit(1)
                )
            ).one_or_none()
            if key is None:
                count = await _count(conn, tenant_id)
                if count == 0 and head.audit_seq == 0 and checkpoint is None:
                    return AuditCheck(ok=True, broken_at=None, count=0)
                return AuditCheck(ok=False, broken_at=None, count=count, reason="not_keyed")
            result = await conn.stream(
                raw_events()
                .where(audit_events.c.tenant_id == tenant_id)
                .order_by(audit_events.c.seq)
            )
            async for row in result:
                count += 1
                if checkpoint is not None and row.seq == checkpoint.seq:
                    at_checkpoint = row.hash
                if broken is not None:
                    continue
                if row.seq != expected_seq:
                    broken = expected_seq
                elif row.prev_hash != expected_prev or row.hash != rehash(key, row):
                    broken = row.seq
                else:
                    expected_seq, expected_prev = expected_seq + 1, row.hash
        checked = None if checkpoint is None else checkpoint.seq
        if broken is not None:
            return AuditCheck(False, broken, count, reason="chain", checkpoint=checked)
        last_seq = expected_seq - 1
        if (last_seq, expected_prev) != (head.audit_seq, head.audit_head):
            # The rows form a valid chain that is not the one the head describes: missing
            # events at the end, events added past the head, or a re-hashed last event.
            broken = last_seq if last_seq == head.audit_seq else min(last_seq, head.audit_seq) + 1
            return AuditCheck(False, broken, count, reason="head", checkpoint=checked)
        if checkpoint is None:
            return AuditCheck(ok=True, broken_at=None, count=count)
        if not checkpoint_signed(signer, tenant_id, checkpoint):
            return AuditCheck(False, None, count, reason="checkpoint_signature", checkpoint=checked)
        if last_seq < checkpoint.seq:
            # The signed head is past the end: the first event it proves existed is missing.
            return AuditCheck(
                False, last_seq + 1, count, reason="behind_checkpoint", checkpoint=checked
            )
        if at_checkpoint != checkpoint.hash:
            return AuditCheck(
                False, checkpoint.seq, count, reason="checkpoint_mismatch", checkpoint=checked
            )
        return AuditCheck(ok=True, broken_at=None, count=count, checkpoint=checked)

    async def rekey_legacy(self, now: datetime, *, only_pending: bool = False) -> list[str]:
        """Re-key every chain written before audit keys existed (every tenant, deleted ones
        too, with events and no active audit key); the tenants re-keyed now. With
        ``only_pending``, only those whose re-keying was started (a pending key) and not
        finished. A tenant that cannot be re-keyed (a row that does not decode, a head that
        moved since its re-keying started) is logged and left ``not_keyed``: it never stops
        the others, nor the process that runs this at its start."""
        async with self._core.transaction() as conn:
            candidates = (
                await conn.scalars(
                    sa.select(tenants.c.id).where(tenants.c.audit_seq > 0).order_by(tenants.c.id)
                )
            ).all()
        done = []
        for tenant_id in candidates:
            found = await self._core.audit_keys.audit_key(tenant_id)
            if found is None and only_pending:
                continue
            if found is not None and found.active:
                continue
            try:
                if await self.rekey(tenant_id, now):
                    done.append(tenant_id)
            except Exception as e:  # one tenant must not stop the start of the gateway
                log.error(  # the type only: a message could quote stored content
                    "audit log of %s not re-keyed (%s); it stays not_keyed until "
                    "`callvault audit rekey --tenant %s`",
                    tenant_id,
                    type(e).__name__,
                    tenant_id,
                )
        return done

    async def rekey(self, tenant_id: str, now: datetime, *, operator: bool = False) -> bool:
        """Re-key the tenant's legacy (plain SHA-256) chain under a new audit key, from the
        first event, once: every event's ``prev_hash`` and ``hash`` are recomputed with
        HMAC-SHA256, and ``audit.rekeyed`` is appended with the old head and what checking
        the old chain found (``legacy_ok``, ``legacy_broken_at``), so that what the legacy
        chain proved is not lost and a chain broken before re-keying stays on record.

        The key is made *pending* in the keyring first, with the legacy head (seq, hash) it
        is meant for bound to it; the chain is rewritten in one transaction, and the key is
        made *active* after it commits. A crash in between leaves a pending key; the next
        start finds the chain already keyed under it (its head's HMAC matches, which nobody
        without the key can arrange) and only activates it, or finds the legacy head the
        key was made for and re-keys it. Any other head (a database writer rewrote the
        chain in between) is not re-keyed on its own, which would vouch for it: it is
        logged and stays ``not_keyed``, until the operator re-keys it on purpose
        (``operator``: ``callvault audit rekey``). False when nothing was re-keyed."""
        keys = self._core.audit_keys
        async with self._core.transaction() as conn:
            before = await _head(conn, tenant_id)
        if before.audit_seq == 0:
            return False  # an empty chain is keyed by its first event
        found = await keys.create_audit_key(
            tenant_id, pending=True, legacy_head=(before.audit_seq, before.audit_head)
        )
        if found.active:
            return False
        subject = f"Audit log of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            head = await lock_tenant(conn, tenant_id, live=False)
            keyed = head.audit_seq > 0 and await _keyed_head(conn, tenant_id, head, found.key)
            made_for = found.made_for(head.audit_seq, head.audit_head)
            if not keyed and not operator and not made_for:
                log.error(
                    "audit log of %s: its head is not the legacy head its pending key was "
                    "made for (rewritten since?); not re-keyed, it stays not_keyed until "
                    "`callvault audit rekey --tenant %s`",
                    tenant_id,
                    tenant_id,
                )
                return False
            if not keyed:
                await _rekey_chain(conn, tenant_id, head, found.key, now)
        await keys.activate_audit_key(tenant_id)
        return not keyed

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


async def _head(conn: AsyncConnection, tenant_id: str) -> AnyRow:
    """The chain's head kept on the tenant row (``audit_seq``, ``audit_head``), unlocked,
    deleted tenants too; ``NotFound`` if there is no such tenant."""
    head = (
        await conn.execute(
            sa.select(tenants.c.audit_seq, tenants.c.audit_head).where(tenants.c.id == tenant_id)
        )
    ).one_or_none()
    if head is None:
        raise NotFound(f"Tenant {tenant_id!r} not found.")
    return head


async def _count(conn: AsyncConnection, tenant_id: str) -> int:
    count = await conn.scalar(
        sa.select(sa.func.count()).where(audit_events.c.tenant_id == tenant_id)
    )
    return int(count or 0)


async def _keyed_head(conn: AsyncConnection, tenant_id: str, head: AnyRow, key: bytes) -> bool:
    """Whether the head event already carries an HMAC under ``key`` (re-keyed before a
    crash kept the key pending)."""
    row = (
        await conn.execute(
            raw_events().where(
                audit_events.c.tenant_id == tenant_id, audit_events.c.seq == head.audit_seq
            )
        )
    ).one_or_none()
    return row is not None and row.hash == head.audit_head and rehash(key, row) == row.hash


async def _rekey_chain(
    conn: AsyncConnection, tenant_id: str, head: AnyRow, key: bytes, now: datetime
) -> None:
    """Rewrite the tenant's chain under ``key`` a page at a time, checking the legacy chain
    on the way, then append ``audit.rekeyed``; the caller holds the tenant row's lock."""
    update = (
        sa.update(audit_events)
        .where(
            audit_events.c.tenant_id == tenant_id,
            audit_events.c.seq == sa.bindparam("b_seq"),
        )
        .values(prev_hash=sa.bindparam("b_prev"), hash=sa.bindparam("b_hash"))
    )
    legacy_broken: int | None = None
    legacy_seq, legacy_prev = 1, GENESIS_HASH
    new_prev, last_seq, count = GENESIS_HASH, 0, 0
    while True:
        rows = (
            await conn.execute(
                raw_events()
                .where(audit_events.c.tenant_id == tenant_id, audit_events.c.seq > last_seq)
                .order_by(audit_events.c.seq)
                .limit(_REKEY_PAGE)
            )
        ).all()
        if not rows:
            break
        changes = []
        for row in rows:
            if legacy_broken is None:
                if row.seq != legacy_seq:
                    legacy_broken = legacy_seq
                elif row.prev_hash != legacy_prev or row.hash != _legacy_rehash(row):
                    legacy_broken = row.seq
                else:
                    legacy_seq, legacy_prev = legacy_seq + 1, row.hash
            digest = rehash(key, row, new_prev)
            if digest is None:  # content that cannot be hashed: keep it, and its break
                digest = "0" * 64
            changes.append({"b_seq": row.seq, "b_prev": new_prev, "b_hash": digest})
            new_prev, last_seq = digest, row.seq
        count += len(rows)
        await conn.execute(update, changes)
    if legacy_broken is None and (legacy_seq - 1, legacy_prev) != (
        head.audit_seq,
        head.audit_head,
    ):
        legacy_broken = min(legacy_seq - 1, head.audit_seq) + 1
    detail = {
        "old_seq": head.audit_seq,
        "old_head": head.audit_head,
        "events": count,
        "legacy_ok": legacy_broken is None,
        "legacy_broken_at": legacy_broken,
    }
    entry = AuditEntry(actor="gateway", action="audit.rekeyed", object=None, detail=detail)
    await append_keyed(conn, tenant_id, [entry], now, key, last_seq, new_prev)


def _legacy_rehash(row: AnyRow) -> str | None:
    try:
        return legacy_hash(row.prev_hash, _body(row))
    except (ValueError, TypeError):
        return None
