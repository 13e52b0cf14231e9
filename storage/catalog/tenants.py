"""Tenants (their API tokens are in ``storage.catalog.tokens``).

A tenant row also holds the head of its audit chain (``storage.catalog.audit``), which is
why it outlives the tenant's deletion: the log of what was done to its data stays.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa

from storage.catalog.audit import append_entries
from storage.catalog.auditchain import GENESIS_HASH
from storage.catalog.core import CatalogCore, at, lock_tenant, record
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
        limits: dict[str, int] | None = None,
        audit: AuditEntry | None = None,
    ) -> Tenant:
        """Add a tenant, with the operator's ``limits`` (overrides of the defaults) and its
        ``audit`` event in the same transaction; ``Conflict`` if the id is taken (also by a
        deleted tenant)."""
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
                        limits=limits or None,
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

    async def update(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        limits: dict[str, int | None] | None = None,
        now: datetime,
        audit: AuditEntry | None = None,
    ) -> Tenant:
        """Rename the live tenant and/or change the operator's overrides of its limits
        (a limit set to ``None`` goes back to the default; one not named stays as it is),
        with its ``audit`` event in the same transaction; ``NotFound`` if unknown or
        deleted."""
        async with self._core.transaction(write=True, subject=f"Tenant {tenant_id!r}") as conn:
            await lock_tenant(conn, tenant_id, live=True)
            current = (
                await conn.execute(sa.select(tenants.c.limits).where(tenants.c.id == tenant_id))
            ).scalar_one()
            values: dict[str, object] = {}
            if name is not None:
                values["name"] = name
            if limits is not None:
                merged = {**(current or {}), **limits}
                values["limits"] = {k: v for k, v in merged.items() if v is not None} or None
            if values:
                await conn.execute(
                    sa.update(tenants).where(tenants.c.id == tenant_id).values(**values)
                )
            row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).one()
            if audit is not None:
                await append_entries(conn, tenant_id, [audit], now, keys=self._core.audit_keys)
        return record(Tenant, row)

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

    async def deleted_among(self, tenant_ids: Collection[str]) -> set[str]:
        """Which of ``tenant_ids`` are deleted (or unknown): one query, for a node that
        checks its live calls against deletions made through another node."""
        wanted = set(tenant_ids)
        if not wanted:
            return set()
        async with self._core.transaction() as conn:
            live = await conn.execute(
                sa.select(tenants.c.id).where(
                    tenants.c.id.in_(sorted(wanted)), tenants.c.deleted_at.is_(None)
                )
            )
            return wanted - set(live.scalars())

    async def list(self, *, include_deleted: bool = False) -> list[Tenant]:
        """All tenants, ordered by id; deleted ones only when asked."""
        stmt = sa.select(tenants).order_by(tenants.c.id)
        if not include_deleted:
            stmt = stmt.where(tenants.c.deleted_at.is_(None))
        return await self._core.all(stmt, Tenant)
