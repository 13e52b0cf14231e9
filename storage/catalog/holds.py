"""Legal holds: a number's or some calls' data kept past its retention and any erasure.

Placing and releasing a hold take the tenant row's lock, and so do the deletions that a hold
could stop (``storage.catalog.retention`` reads ``active_holds`` under it), so a hold placed
while a sweep or an erasure runs is never overtaken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.audit import append_entries
from storage.catalog.core import AnyRow, CatalogCore, lock_tenant
from storage.catalog.records import AuditEntry, LegalHold
from storage.catalog.schema import calls, legal_holds
from storage.errors import Conflict, NotFound


def _hold(row: AnyRow) -> LegalHold:
    mapping = dict(row._mapping)
    if mapping["call_ids"] is not None:
        mapping["call_ids"] = tuple(mapping["call_ids"])
    return LegalHold(**{field.name: mapping[field.name] for field in fields(LegalHold)})


async def active_holds(conn: AsyncConnection, tenant_id: str) -> list[LegalHold]:
    """The tenant's holds not released, in the caller's transaction (which should hold the
    tenant row's lock, so that no hold is placed meanwhile)."""
    rows = (
        await conn.execute(
            sa.select(legal_holds)
            .where(legal_holds.c.tenant_id == tenant_id, legal_holds.c.released_at.is_(None))
            .order_by(legal_holds.c.created_at, legal_holds.c.id)
        )
    ).all()
    return [_hold(row) for row in rows]


class Holds:
    """``catalog.holds``: the tenants' legal holds."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def create(
        self,
        *,
        id: str,
        tenant_id: str,
        reason: str,
        created_by: str,
        now: datetime,
        number: str | None = None,
        call_ids: Sequence[str] | None = None,
        audit: AuditEntry | None = None,
    ) -> LegalHold:
        """Place a hold on a number or on calls of the tenant (``NotFound`` naming the first
        call id it does not have), with its ``audit`` event in the same transaction."""
        if (number is None) == (call_ids is None):
            raise ValueError("a hold names either a number or call ids")
        async with self._core.transaction(write=True, subject=f"Hold {id!r}") as conn:
            await lock_tenant(conn, tenant_id, live=True)
            if call_ids is not None:
                known = set(
                    (
                        await conn.execute(
                            sa.select(calls.c.id).where(
                                calls.c.tenant_id == tenant_id, calls.c.id.in_(list(call_ids))
                            )
                        )
                    ).scalars()
                )
                missing = [call_id for call_id in call_ids if call_id not in known]
                if missing:
                    raise NotFound(f"Call {missing[0]!r} not found.")
            row = (
                await conn.execute(
                    sa.insert(legal_holds)
                    .values(
                        id=id,
                        tenant_id=tenant_id,
                        number=number,
                        call_ids=None if call_ids is None else list(call_ids),
                        reason=reason,
                        created_at=now,
                        created_by=created_by,
                        released_at=None,
                        released_by=None,
                    )
                    .returning(*legal_holds.c)
                )
            ).one()
            if audit is not None:
                await append_entries(conn, tenant_id, [audit], now, keys=self._core.audit_keys)
        return _hold(row)

    async def get(self, tenant_id: str, hold_id: str) -> LegalHold:
        """The tenant's hold; ``NotFound`` if unknown or another tenant's."""
        async with self._core.transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(legal_holds).where(
                        legal_holds.c.id == hold_id, legal_holds.c.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"Legal hold {hold_id!r} not found.")
        return _hold(row)

    async def release(
        self,
        tenant_id: str,
        hold_id: str,
        *,
        released_by: str,
        now: datetime,
        audit: AuditEntry | None = None,
    ) -> LegalHold:
        """Release a hold (``Conflict`` if it was released already), with its ``audit``
        event in the same transaction."""
        async with self._core.transaction(write=True, subject=f"Hold {hold_id!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(legal_holds)
                    .where(
                        legal_holds.c.id == hold_id,
                        legal_holds.c.tenant_id == tenant_id,
                        legal_holds.c.released_at.is_(None),
                    )
                    .values(released_at=now, released_by=released_by)
                    .returning(*legal_holds.c)
                )
            ).one_or_none()
            if row is None:
                exists = (
                    await conn.execute(
                        sa.select(legal_holds.c.id).where(
                            legal_holds.c.id == hold_id, legal_holds.c.tenant_id == tenant_id
                        )
                    )
                ).one_or_none()
                if exists is None:
                    raise NotFound(f"Legal hold {hold_id!r} not found.")
                raise Conflict(
                    f"Legal hold {hold_id!r} was released already.", code="hold_released"
                )
            if audit is not None:
                await append_entries(conn, tenant_id, [audit], now, keys=self._core.audit_keys)
        return _hold(row)

    async def list(self, tenant_id: str, *, active_only: bool = False) -> list[LegalHold]:
        """The tenant's holds, oldest first; only those not released when asked."""
        stmt = sa.select(legal_holds).where(legal_holds.c.tenant_id == tenant_id)
        if active_only:
            stmt = stmt.where(legal_holds.c.released_at.is_(None))
        async with self._core.transaction() as conn:
            rows = (
                await conn.execute(stmt.order_by(legal_holds.c.created_at, legal_holds.c.id))
            ).all()
        return [_hold(row) for row in rows]
