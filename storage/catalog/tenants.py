"""Tenants (their API tokens are in ``storage.catalog.tokens``).

A tenant row also holds the head of its audit chain (``storage.catalog.audit``), which is
why it outlives the tenant's deletion: the log of what was done to its data stays.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from storage.catalog.audit import append_entries
from storage.catalog.auditchain import GENESIS_HASH
from storage.catalog.core import CatalogCore, at, record
from storage.catalog.records import AuditEntry, Tenant
from storage.catalog.schema import tenants


class Tenants:
    """``catalog.tenants``: who the catalog holds data for."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def create(
        self,
        id: str,
        name: str,
        region: str,
        now: datetime,
        *,
        audit: AuditEntry | None = None,
    ) -> Tenant:
        """Add a tenant, with its ``audit`` event in the same transaction; ``Conflict`` if
        the id is taken (also by a deleted tenant)."""
        async with self._core.transaction(write=True, subject=f"Tenant {id!r}") as conn:
            row = (
                await conn.execute(
                    sa.insert(tenants)
                    .values(
                        id=id,
                        name=name,
                        region=region,
                        created_at=now,
                        deleted_at=None,
                        audit_seq=0,
                        audit_head=GENESIS_HASH,
                    )
                    .returning(*tenants.c)
                )
            ).one()
            if audit is not None:
                await append_entries(conn, id, [audit], now, keys=self._core.audit_keys)
        return record(Tenant, row)

    async def get(self, tenant_id: str) -> Tenant:
        """The tenant; ``NotFound`` if unknown or deleted."""
        return await self._core.one(
            sa.select(tenants).where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None)),
            Tenant,
            f"Tenant {tenant_id!r} not found.",
        )

    async def mark_deleted(self, tenant_id: str, now: datetime) -> Tenant:
        """Mark the tenant deleted (its audit log stays); repeating it keeps the first time."""
        return await self._core.one(
            sa.update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(deleted_at=sa.func.coalesce(tenants.c.deleted_at, at(now)))
            .returning(*tenants.c),
            Tenant,
            f"Tenant {tenant_id!r} not found.",
            write=True,
        )

    async def list(self, *, include_deleted: bool = False) -> list[Tenant]:
        """All tenants, ordered by id; deleted ones only when asked."""
        stmt = sa.select(tenants).order_by(tenants.c.id)
        if not include_deleted:
            stmt = stmt.where(tenants.c.deleted_at.is_(None))
        return await self._core.all(stmt, Tenant)
