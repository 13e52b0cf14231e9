"""Call records (the CDRs): every announced call, accepted or refused.

An announced call is stored with its decision, the instructions version it was decided
under, its recording when accepted, and its audit event, in one transaction
(``Calls.announce``): a recording never exists without its call record, nor a decision
without its trace in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.audit import append_entries
from storage.catalog.core import IN_BATCH, CatalogCore, at, lock_tenant, record
from storage.catalog.limits import LIMIT_REFUSAL, reached_limit
from storage.catalog.recordings import calls_of_number, new_recording
from storage.catalog.records import (
    AuditEntry,
    Call,
    CallKey,
    NumberCalls,
    Recording,
    StreamLease,
    StreamRenewal,
    TenantLimits,
)
from storage.catalog.schema import calls, recordings, tenants
from storage.errors import LimitReached, NotFound

Claim = Literal["attached", "already_attached", "peer_mismatch", "call_ended"]
"""What ``Calls.claim_stream`` did: attached, or why not (AudioSocket's error codes; the
gateway says ``call_in_progress`` for ``already_attached`` on the WebSocket transports)."""


class Calls:
    """``catalog.calls``: the tenants' call records."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def announce(
        self,
        *,
        id: str,
        tenant_id: str,
        from_number: str,
        to_number: str,
        direction: str,
        consent: str,
        transport: str,
        codec: str,
        sample_rate: int,
        instructions_version: int | None,
        decision: dict[str, Any],
        refusal_code: str | None,
        started_at: datetime,
        recording_id: str | None = None,
        audit: AuditEntry | None = None,
        audiosocket_id_hash: str | None = None,
        limits: TenantLimits | None = None,
        node_id: str | None = None,
    ) -> tuple[Call, Recording | None]:
        """Store the call record and, for an accepted call (``recording_id`` given), its
        recording (status ``recording``), with the decision's ``audit`` event, in one
        transaction: a recording never exists without its call record, nor an accepted or
        refused call without its event. ``audiosocket_id_hash``: the hash of the secret id an
        accepted audiosocket call is found by (``find_audiosocket``).

        ``limits``: the default limits, which the tenant's overrides amend. When one more
        call would exceed one (``storage.catalog.limits``), the call is stored as refused
        (``limit_exceeded``, with a ``call.refused`` event naming the limit) instead, and
        ``LimitReached`` is raised once that is committed. A call record that a limit refused
        is replaced by a later announcement of the same call id (a PBX's retry); the audit
        log keeps the refusal. ``node_id``: the node that takes the call (the registry's)."""
        if recording_id is not None and (refusal_code is not None or instructions_version is None):
            raise ValueError("only an accepted call under stored instructions has a recording")
        if audiosocket_id_hash is not None and recording_id is None:
            raise ValueError("only an accepted call has an AudioSocket id")
        reached: LimitReached | None = None
        async with self._core.transaction(write=True, subject=f"Call {id!r}") as conn:
            tenant = await lock_tenant(conn, tenant_id, live=True)
            if limits is not None:
                reached = await reached_limit(
                    conn,
                    tenant_id,
                    transport=transport,
                    accepted=recording_id is not None,
                    limits=limits.merged(tenant.limits),
                    now=started_at,
                )
            if reached is not None:
                refusal_code, recording_id, audiosocket_id_hash = LIMIT_REFUSAL, None, None
                decision = {"store_recording": False, "ai": []}
                audit = AuditEntry(
                    actor=audit.actor if audit is not None else "gateway",
                    action="call.refused",
                    object=id,
                    detail={
                        "code": LIMIT_REFUSAL,
                        "limit": reached.limit,
                        "instructions_version": instructions_version,
                    },
                )
            await conn.execute(
                sa.delete(calls).where(
                    calls.c.tenant_id == tenant_id,
                    calls.c.id == id,
                    calls.c.refusal_code == LIMIT_REFUSAL,
                )
            )
            call_row = (
                await conn.execute(
                    sa.insert(calls)
                    .values(
                        **_call_values(
                            id=id,
                            tenant_id=tenant_id,
                            from_number=from_number,
                            to_number=to_number,
                            direction=direction,
                            consent=consent,
                            transport=transport,
                            codec=codec,
                            sample_rate=sample_rate,
                            instructions_version=instructions_version,
                            decision=decision,
                            refusal_code=refusal_code,
                            started_at=started_at,
                        ),
                        ended_at=started_at if refusal_code is not None else None,
                        audiosocket_id_hash=audiosocket_id_hash,
                        node_id=node_id,
                    )
                    .returning(*calls.c)
                )
            ).one()
            recording: Recording | None = None
            if recording_id is not None:
                assert instructions_version is not None  # noqa: S101 - checked above
                recording_row = (
                    await conn.execute(
                        sa.insert(recordings)
                        .values(
                            **new_recording(
                                recording_id, tenant_id, id, instructions_version, started_at
                            )
                        )
                        .returning(*recordings.c)
                    )
                ).one()
                recording = record(Recording, recording_row)
            if audit is not None:
                await append_entries(
                    conn, tenant_id, [audit], started_at, keys=self._core.audit_keys
                )
        if reached is not None:
            raise reached
        return record(Call, call_row), recording

    async def create(
        self,
        *,
        id: str,
        tenant_id: str,
        from_number: str,
        to_number: str,
        direction: str,
        consent: str,
        transport: str,
        codec: str,
        sample_rate: int,
        instructions_version: int | None,
        decision: dict[str, Any],
        refusal_code: str | None,
        started_at: datetime,
        node_id: str | None = None,
    ) -> Call:
        """Store the call record of an announced call (accepted or refused), taken by node
        ``node_id``."""
        return await self._core.insert(
            sa.insert(calls).values(
                **_call_values(
                    id=id,
                    tenant_id=tenant_id,
                    from_number=from_number,
                    to_number=to_number,
                    direction=direction,
                    consent=consent,
                    transport=transport,
                    codec=codec,
                    sample_rate=sample_rate,
                    instructions_version=instructions_version,
                    decision=decision,
                    refusal_code=refusal_code,
                    started_at=started_at,
                ),
                ended_at=None,
                node_id=node_id,
            ),
            Call,
            subject=f"Call {id!r}",
        )

    async def get(self, tenant_id: str, call_id: str) -> Call:
        """The tenant's call; ``NotFound`` if unknown or another tenant's."""
        return await self._core.one(
            sa.select(calls).where(calls.c.tenant_id == tenant_id, calls.c.id == call_id),
            Call,
            f"Call {call_id!r} not found.",
        )

    async def find_audiosocket(self, id_hash: str) -> Call | None:
        """The call whose AudioSocket id hashes to ``id_hash``, if its tenant is live
        (accepted, live or ended alike); ``None`` otherwise. The hash is unique across
        tenants: the id is a random UUID the gateway minted, not one a PBX chose."""
        found = await self._core.all(
            sa.select(*calls.c)
            .select_from(calls.join(tenants, calls.c.tenant_id == tenants.c.id))
            .where(calls.c.audiosocket_id_hash == id_hash, tenants.c.deleted_at.is_(None)),
            Call,
        )
        return found[0] if found else None

    # --- stream attachment ------------------------------------------------------------------
    # A streamed call (Twilio, fork, AudioSocket) is carried by one stream at a time, on
    # whichever node it reaches: the truth is the calls row, shared by every node and kept
    # across restarts. A claim, the holder's renewals and its release are each one
    # conditional UPDATE, never a read-then-write. AudioSocket proves nothing but the
    # call's secret id, so its call is also held to its first connection's address (API.md).

    async def claim_stream(
        self,
        tenant_id: str,
        call_id: str,
        *,
        holder: str,
        now: datetime,
        until: datetime,
        peer: str | None = None,
        replaces: str | None = None,
    ) -> Claim:
        """Attach stream ``holder`` to the live call, its lease running to ``until``, in one
        conditional UPDATE; one made while another holder's lease runs at ``now`` is
        ``already_attached``. A lease that ran out (its node crashed or stalled) is taken
        over, and so is one still held by ``replaces``: a stream of the claiming node that
        is gone but whose release has not reached the catalog yet (only while it still
        holds the call). ``peer`` (AudioSocket only): the connection's address; the call's
        first claim keeps it for good, and a claim from another address is
        ``peer_mismatch`` (``already_attached`` wins: it says nothing about the address).
        The call's first claim also notes ``now`` as when it first streamed
        (``StreamLease.first_streamed_at``). ``NotFound`` for an unknown call or a deleted
        tenant."""
        free = sa.or_(
            calls.c.attached_by.is_(None),
            calls.c.attached_by == holder,
            calls.c.attached_until <= now,
            *([calls.c.attached_by == replaces] if replaces is not None else []),
        )
        values: dict[str, Any] = {
            "attached_by": holder,
            "attached_until": until,
            # The first claim fixes the origin of the call's timeline for every node.
            "first_streamed_at": sa.func.coalesce(calls.c.first_streamed_at, at(now)),
        }
        where = [calls.c.tenant_id == tenant_id, calls.c.id == call_id, calls.c.ended_at.is_(None)]
        if peer is not None:
            where.append(
                sa.or_(calls.c.audiosocket_peer.is_(None), calls.c.audiosocket_peer == peer)
            )
            values["audiosocket_peer"] = sa.func.coalesce(calls.c.audiosocket_peer, peer)
        async with self._core.transaction(write=True, subject=f"Call {call_id!r}") as conn:
            await lock_tenant(conn, tenant_id, live=True)
            claimed = (
                await conn.execute(
                    sa.update(calls).where(*where, free).values(**values).returning(calls.c.id)
                )
            ).one_or_none()
            if claimed is not None:
                return "attached"
            # Only to say why: the UPDATE above decided.
            lease = await _lease(conn, tenant_id, call_id)
        if lease.ended:
            return "call_ended"
        held = lease.held_by_other(holder, now) and lease.attached_by != replaces
        if peer is not None and lease.peer is not None and lease.peer != peer and not held:
            return "peer_mismatch"
        return "already_attached"

    async def renew_streams(
        self, held: Sequence[tuple[str, str, str]], *, until: datetime
    ) -> StreamRenewal:
        """Extend to ``until`` the leases of the ``(tenant, call id, holder)`` given, where
        that holder still holds its live call; returns those renewed, each with whether the
        call is paused now (a pause sent through another node reaches the carrying node at
        its next renewal), and those that ended. One that is neither was lost: another
        stream took it over after it ran out. A lease that ran out but that nobody took is
        renewed (no other stream carried the call meanwhile)."""
        renewed: dict[tuple[str, str], bool] = {}
        ended: set[tuple[str, str]] = set()
        for start in range(0, len(held), IN_BATCH):
            chunk = list(held[start : start + IN_BATCH])
            async with self._core.transaction(write=True) as conn:
                rows = await conn.execute(
                    sa.update(calls)
                    .where(
                        sa.tuple_(calls.c.tenant_id, calls.c.id, calls.c.attached_by).in_(chunk),
                        calls.c.ended_at.is_(None),
                    )
                    .values(attached_until=until)
                    .returning(calls.c.tenant_id, calls.c.id, calls.c.paused)
                )
                renewed.update({(row.tenant_id, row.id): row.paused for row in rows})
                missed = [(t, c) for t, c, _ in chunk if (t, c) not in renewed]
                if missed:
                    rows = await conn.execute(
                        sa.select(calls.c.tenant_id, calls.c.id).where(
                            sa.tuple_(calls.c.tenant_id, calls.c.id).in_(missed),
                            calls.c.ended_at.is_not(None),
                        )
                    )
                    ended.update((row.tenant_id, row.id) for row in rows)
        return StreamRenewal(renewed=renewed, ended=ended)

    async def release_stream(
        self, tenant_id: str, call_id: str, holder: str, now: datetime
    ) -> bool:
        """Detach ``holder`` from the call if it still holds it (a holder that lost its
        lease releases nothing), noting ``now`` as when the call was last carried; ``True``
        if it held it. AudioSocket's first peer address stays."""
        async with self._core.transaction(write=True) as conn:
            released = (
                await conn.execute(
                    sa.update(calls)
                    .where(
                        calls.c.tenant_id == tenant_id,
                        calls.c.id == call_id,
                        calls.c.attached_by == holder,
                    )
                    .values(attached_by=None, attached_until=now)
                    .returning(calls.c.id)
                )
            ).one_or_none()
        return released is not None

    async def release_streams_of(self, node: str, *, keep: str, now: datetime) -> int:
        """Release every lease of a live call held by a stream named ``<node>:...`` but not
        ``<keep>...``: the streams of an earlier process of this node (it crashed), which no
        process carries any more, so that the restarted node takes its PBXs' reconnects at
        once instead of after those leases ran out. Returns how many were released. Run
        once at start, so a scan of the live calls is acceptable."""
        async with self._core.transaction(write=True) as conn:
            rows = await conn.execute(
                sa.update(calls)
                .where(
                    calls.c.ended_at.is_(None),
                    calls.c.attached_by.startswith(f"{node}:", autoescape=True),
                    sa.not_(calls.c.attached_by.startswith(keep, autoescape=True)),
                )
                .values(attached_by=None, attached_until=now)
                .returning(calls.c.id)
            )
            return len(rows.all())

    async def stream_lease(self, tenant_id: str, call_id: str) -> StreamLease:
        """Which stream carries the call now; ``NotFound`` for an unknown call."""
        async with self._core.transaction() as conn:
            return await _lease(conn, tenant_id, call_id)

    async def of_number(
        self,
        tenant_id: str,
        number: str,
        *,
        after: CallKey | None = None,
        through: CallKey | None = None,
        limit: int | None = None,
    ) -> list[Call]:
        """The tenant's call records where ``number`` is a party, oldest first: every one,
        or a page of ``limit`` strictly after the keyset cursor ``after`` (the previous
        page's last) and up to ``through`` (``NumberCalls.last`` when the read began, so that
        calls announced meanwhile do not join it half way)."""
        stmt = sa.select(calls).where(*calls_of_number(tenant_id, number, after, through))
        stmt = stmt.order_by(calls.c.started_at, calls.c.id)
        return await self._core.all(stmt if limit is None else stmt.limit(limit), Call)

    async def count_of_number(self, tenant_id: str, number: str) -> NumberCalls:
        """How many call records of the tenant have ``number`` as a party, how many of those
        have a recording, and the last one's keyset cursor, in one snapshot."""
        key = (calls.c.started_at, calls.c.id)
        where = calls_of_number(tenant_id, number, None, None)
        async with self._core.transaction(snapshot=True) as conn:
            last = (
                await conn.execute(
                    sa.select(*key).where(*where).order_by(*(c.desc() for c in key)).limit(1)
                )
            ).one_or_none()
            if last is None:
                return NumberCalls(calls=0, recordings=0, last=None)
            counted = (
                await conn.execute(
                    sa.select(sa.func.count(calls.c.id.distinct()), sa.func.count(recordings.c.id))
                    .select_from(
                        calls.outerjoin(
                            recordings,
                            sa.and_(
                                recordings.c.tenant_id == calls.c.tenant_id,
                                recordings.c.call_id == calls.c.id,
                            ),
                        )
                    )
                    .where(*calls_of_number(tenant_id, number, None, (last[0], last[1])))
                )
            ).one()
        return NumberCalls(calls=counted[0], recordings=counted[1], last=(last[0], last[1]))

    async def end(self, tenant_id: str, call_id: str, now: datetime) -> Call:
        """Record the end of the call; ending it again keeps the first end time."""
        return await self._update(
            tenant_id, call_id, ended_at=sa.func.coalesce(calls.c.ended_at, at(now))
        )

    async def take_over(self, tenant_id: str, call_id: str, node_id: str) -> bool:
        """Note that node ``node_id`` carries the live call now (it took it up after a
        restart, or a reconnect reached it): if that node dies, its calls are the ones
        ended. ``False`` if the call has ended."""
        async with self._core.transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(calls)
                    .where(
                        calls.c.tenant_id == tenant_id,
                        calls.c.id == call_id,
                        calls.c.ended_at.is_(None),
                    )
                    .values(node_id=node_id)
                    .returning(calls.c.id)
                )
            ).one_or_none()
        return row is not None

    async def set_paused(self, tenant_id: str, call_id: str, paused: bool) -> Call:
        """Remember that the PBX paused (or resumed) the call."""
        return await self._update(tenant_id, call_id, paused=paused)

    async def _update(self, tenant_id: str, call_id: str, **values: Any) -> Call:
        return await self._core.one(
            sa.update(calls)
            .where(calls.c.tenant_id == tenant_id, calls.c.id == call_id)
            .values(**values)
            .returning(*calls.c),
            Call,
            f"Call {call_id!r} not found.",
            write=True,
        )


async def _lease(conn: AsyncConnection, tenant_id: str, call_id: str) -> StreamLease:
    row = (
        await conn.execute(
            sa.select(
                calls.c.audiosocket_peer,
                calls.c.attached_by,
                calls.c.attached_until,
                calls.c.ended_at,
                calls.c.first_streamed_at,
            ).where(calls.c.tenant_id == tenant_id, calls.c.id == call_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"Call {call_id!r} not found.")
    return StreamLease(
        peer=row.audiosocket_peer,
        attached_by=row.attached_by,
        attached_until=row.attached_until,
        ended=row.ended_at is not None,
        first_streamed_at=row.first_streamed_at,
    )


def _call_values(
    *,
    id: str,
    tenant_id: str,
    from_number: str,
    to_number: str,
    direction: str,
    consent: str,
    transport: str,
    codec: str,
    sample_rate: int,
    instructions_version: int | None,
    decision: dict[str, Any],
    refusal_code: str | None,
    started_at: datetime,
) -> dict[str, Any]:
    """The columns of a new call record but its end (not paused)."""
    return {
        "tenant_id": tenant_id,
        "id": id,
        "from_number": from_number,
        "to_number": to_number,
        "direction": direction,
        "consent": consent,
        "transport": transport,
        "codec": codec,
        "sample_rate": sample_rate,
        "instructions_version": instructions_version,
        "decision": decision,
        "refusal_code": refusal_code,
        "started_at": started_at,
        "paused": False,
    }
