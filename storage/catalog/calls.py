"""Call records (the CDRs): every announced call, accepted or refused.

An announced call is stored with its decision, the instructions version it was decided
under, its recording when accepted, and its audit event, in one transaction
(``Calls.announce``): a recording never exists without its call record, nor a decision
without its trace in the audit log.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from storage.catalog.audit import append_entries
from storage.catalog.core import CatalogCore, at, lock_tenant, record
from storage.catalog.recordings import new_recording
from storage.catalog.records import AuditEntry, Call, Recording
from storage.catalog.schema import calls, recordings, tenants


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
    ) -> tuple[Call, Recording | None]:
        """Store the call record and, for an accepted call (``recording_id`` given), its
        recording (status ``recording``), with the decision's ``audit`` event, in one
        transaction: a recording never exists without its call record, nor an accepted or
        refused call without its event. ``audiosocket_id_hash``: the hash of the secret id an
        accepted audiosocket call is found by (``find_audiosocket``)."""
        if recording_id is not None and (refusal_code is not None or instructions_version is None):
            raise ValueError("only an accepted call under stored instructions has a recording")
        if audiosocket_id_hash is not None and recording_id is None:
            raise ValueError("only an accepted call has an AudioSocket id")
        async with self._core.transaction(write=True, subject=f"Call {id!r}") as conn:
            await lock_tenant(conn, tenant_id, live=True)
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
    ) -> Call:
        """Store the call record of an announced call (accepted or refused)."""
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

    async def of_number(self, tenant_id: str, number: str) -> list[Call]:
        """Every call record of the tenant where ``number`` is a party, oldest first."""
        return await self._core.all(
            sa.select(calls)
            .where(
                calls.c.tenant_id == tenant_id,
                sa.or_(calls.c.from_number == number, calls.c.to_number == number),
            )
            .order_by(calls.c.started_at, calls.c.id),
            Call,
        )

    async def end(self, tenant_id: str, call_id: str, now: datetime) -> Call:
        """Record the end of the call; ending it again keeps the first end time."""
        return await self._update(
            tenant_id, call_id, ended_at=sa.func.coalesce(calls.c.ended_at, at(now))
        )

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
