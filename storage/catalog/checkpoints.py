"""Signed checkpoints of the tenants' audit chains.

A keyed chain (``storage.catalog.audit``) cannot be forged by a database writer, but it can
be cut back: delete the last events, move the head on the tenant row back, and what is left
verifies. So the gateway signs each chain's head now and then with its Ed25519 key from the
keyring (``crypto.signing``), keeps the signature here, and sends it to the tenant's webhook
(``audit.checkpoint``): ``verify`` then also checks that the chain still reaches, and still
holds, the latest checkpoint's event, and a tenant can check the same against the copies it
received.

A checkpoint is made only when the head moved since the tenant's latest one, and only over
a chain that extends that checkpoint correctly under the tenant's key (the events since
then are checked first: the gateway never signs a head it cannot vouch for). The latest
checkpoint row itself is checked too (the gateway's signature, not past the head): a row a
database writer made up is refused loudly (``AuditBroken``), never taken as the gateway's
word nor handed out. Checkpoints are kept forever, like the events they sign.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from crypto.signing import encode_signature
from storage.catalog.audit import (
    checkpoint_signed,
    raw_checkpoints,
    raw_events,
    rehash,
    stored_at,
)
from storage.catalog.auditchain import GENESIS_HASH, checkpoint_message
from storage.catalog.core import AnyRow, CatalogCore, lock_tenant, row_values
from storage.catalog.jobs import enqueue_new_jobs
from storage.catalog.records import Checkpoint, NewJob
from storage.catalog.schema import audit_checkpoints, audit_events, tenants
from storage.errors import AuditBroken

CheckpointJobs = Callable[[Checkpoint], Sequence[NewJob]]
"""The jobs a new checkpoint queues in its own transaction (its webhook event)."""


class Checkpoints:
    """``catalog.checkpoints``: the gateway's signatures of each tenant's audit head."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def make(
        self,
        tenant_id: str,
        now: datetime,
        *,
        jobs: CheckpointJobs | None = None,
        current: bool = False,
    ) -> Checkpoint | None:
        """Sign the tenant's head at ``now`` if it moved since the latest checkpoint, and
        queue ``jobs(checkpoint)`` in the same transaction. When the head did not move:
        None, or with ``current`` the latest checkpoint (checked as below). None too if the
        chain is empty or not keyed yet. ``AuditBroken``, and nothing signed, if the latest
        checkpoint row does not carry the gateway's signature, is past the head, or the
        chain does not hold it and extend it to the head under the tenant's key: a row a
        database writer made up neither stops checkpointing silently nor is handed out."""
        keys = self._core.audit_keys
        found = await keys.audit_key(tenant_id)
        if found is None or not found.active:
            return None  # a legacy chain is signed once it is re-keyed, not before
        signer = await keys.checkpoint_signer()
        subject = f"Audit checkpoint of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            head = await lock_tenant(conn, tenant_id, live=False)
            latest = await _latest(conn, tenant_id, raw=True)
            if latest is not None:
                if not checkpoint_signed(signer, tenant_id, latest):
                    raise AuditBroken(
                        f"The latest audit checkpoint of {tenant_id!r} (event {latest.seq}) "
                        "does not carry the gateway's signature; nothing was signed. Run "
                        f"`callvault audit verify --tenant {tenant_id}`.",
                        seq=min(latest.seq, head.audit_seq + 1),
                    )
                if latest.seq > head.audit_seq:
                    raise _broken(tenant_id, head.audit_seq + 1)
            elif head.audit_seq == 0:
                return None
            await _check_extension(conn, tenant_id, head, latest, found.key)
            if latest is not None and latest.seq == head.audit_seq:
                return _checkpoint(latest) if current else None
            message = checkpoint_message(
                tenant=tenant_id,
                seq=head.audit_seq,
                hash=head.audit_head,
                at=now,
                key_id=signer.key_id,
            )
            checkpoint = Checkpoint(
                tenant_id=tenant_id,
                seq=head.audit_seq,
                hash=head.audit_head,
                at=now,
                key_id=signer.key_id,
                signature=encode_signature(signer.sign(message)),
            )
            await conn.execute(sa.insert(audit_checkpoints).values(**row_values(checkpoint)))
            if jobs is not None:
                await enqueue_new_jobs(conn, tenant_id, jobs(checkpoint), now)
        return checkpoint

    async def due(self) -> list[str]:
        """Tenants (deleted ones too: their logs go on) whose latest checkpoint is not
        exactly their head (it moved since, or a checkpoint row past the head was made up:
        ``make`` then refuses it loudly), or that have events and no checkpoint yet."""
        latest = (
            sa.select(
                audit_checkpoints.c.tenant_id, sa.func.max(audit_checkpoints.c.seq).label("seq")
            )
            .group_by(audit_checkpoints.c.tenant_id)
            .subquery()
        )
        stmt = (
            sa.select(tenants.c.id)
            .select_from(tenants.outerjoin(latest, latest.c.tenant_id == tenants.c.id))
            .where(tenants.c.audit_seq != sa.func.coalesce(latest.c.seq, 0))
            .order_by(tenants.c.id)
        )
        async with self._core.transaction() as conn:
            return list((await conn.scalars(stmt)).all())

    async def latest(self, tenant_id: str) -> Checkpoint | None:
        """The tenant's checkpoint with the highest sequence number, if any."""
        async with self._core.transaction() as conn:
            row = await _latest(conn, tenant_id)
        return None if row is None else _checkpoint(row)

    async def list(
        self, tenant_id: str, *, since_seq: int = 0, limit: int = 100
    ) -> list[Checkpoint]:
        """Checkpoints with ``seq > since_seq``, oldest first, at most ``limit``."""
        return await self._core.all(
            sa.select(audit_checkpoints)
            .where(audit_checkpoints.c.tenant_id == tenant_id, audit_checkpoints.c.seq > since_seq)
            .order_by(audit_checkpoints.c.seq)
            .limit(limit),
            Checkpoint,
        )


async def _latest(conn: AsyncConnection, tenant_id: str, *, raw: bool = False) -> AnyRow | None:
    """The tenant's checkpoint row with the highest ``seq``; with ``raw``, its ``at``
    undecoded (a row tampered into a non-time must be refused, not raise)."""
    return (
        await conn.execute(
            (raw_checkpoints() if raw else sa.select(audit_checkpoints))
            .where(audit_checkpoints.c.tenant_id == tenant_id)
            .order_by(audit_checkpoints.c.seq.desc())
            .limit(1)
        )
    ).one_or_none()


def _checkpoint(row: AnyRow) -> Checkpoint:
    return Checkpoint(
        tenant_id=row.tenant_id,
        seq=row.seq,
        hash=row.hash,
        at=stored_at(row.at),
        key_id=row.key_id,
        signature=row.signature,
    )


async def _check_extension(
    conn: AsyncConnection, tenant_id: str, head: AnyRow, latest: AnyRow | None, key: bytes
) -> None:
    """Raise ``AuditBroken`` unless the events after ``latest`` (from the first, without
    one) chain from it to the head under ``key``."""
    expected_seq, expected_prev = (1, GENESIS_HASH) if latest is None else (latest.seq, latest.hash)
    if latest is not None:
        at_checkpoint = (
            await conn.execute(
                sa.select(audit_events.c.hash).where(
                    audit_events.c.tenant_id == tenant_id, audit_events.c.seq == latest.seq
                )
            )
        ).scalar()
        if at_checkpoint != latest.hash:
            raise _broken(tenant_id, latest.seq)
        expected_seq += 1
    result = await conn.stream(
        raw_events()
        .where(audit_events.c.tenant_id == tenant_id, audit_events.c.seq >= expected_seq)
        .order_by(audit_events.c.seq)
    )
    async for row in result:
        if row.seq != expected_seq:
            raise _broken(tenant_id, expected_seq)
        if row.prev_hash != expected_prev or row.hash != rehash(key, row):
            raise _broken(tenant_id, row.seq)
        expected_seq, expected_prev = expected_seq + 1, row.hash
    if (expected_seq - 1, expected_prev) != (head.audit_seq, head.audit_head):
        raise _broken(tenant_id, min(expected_seq, head.audit_seq + 1))


def _broken(tenant_id: str, seq: int) -> AuditBroken:
    return AuditBroken(
        f"The audit log of {tenant_id!r} does not extend its latest checkpoint at event "
        f"{seq}; nothing was signed. Run `callvault audit verify --tenant {tenant_id}`.",
        seq=seq,
    )
