"""The versions of each tenant's documented instructions, and the one in force.

Every PUT stores a new immutable version; what decides a call, a webhook delivery or a
retention sweep is the newest one, parsed (``storage.instructions``), or the defaults when
the tenant never set any. ``CatalogInstructions.current`` is the one place that rule is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from storage.catalog.core import CatalogCore, lock_tenant, record
from storage.catalog.records import Instructions
from storage.catalog.schema import instructions
from storage.instructions import InstructionsDoc, default_instructions, parse_instructions


@dataclass(frozen=True, slots=True)
class CurrentInstructions:
    """The instructions in force for a tenant, parsed."""

    document: InstructionsDoc
    version: int | None
    """The stored version; ``None`` for the defaults of a tenant that never set any."""


class CatalogInstructions:
    """``catalog.instructions``: the tenants' instruction versions."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def add(
        self, tenant_id: str, document: dict[str, Any], created_by: str, now: datetime
    ) -> Instructions:
        """Store a new version of the tenant's instructions, numbered previous + 1.

        Concurrent adds queue on the tenant row, so versions never collide or skip.
        """
        subject = f"Instructions of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            await lock_tenant(conn, tenant_id, live=True)
            latest = (
                await conn.execute(
                    sa.select(sa.func.max(instructions.c.version)).where(
                        instructions.c.tenant_id == tenant_id
                    )
                )
            ).scalar()
            row = (
                await conn.execute(
                    sa.insert(instructions)
                    .values(
                        tenant_id=tenant_id,
                        version=(latest or 0) + 1,
                        document=document,
                        created_at=now,
                        created_by=created_by,
                    )
                    .returning(*instructions.c)
                )
            ).one()
        return record(Instructions, row)

    async def current(self, tenant_id: str) -> CurrentInstructions:
        """The instructions in force: the newest version parsed, or the defaults."""
        row = await self.latest(tenant_id)
        if row is None:
            return CurrentInstructions(document=default_instructions(), version=None)
        return CurrentInstructions(document=parse_instructions(row.document), version=row.version)

    async def latest(self, tenant_id: str) -> Instructions | None:
        """The newest stored version as stored (who and when included), or ``None`` when
        the tenant never set any; for views of the version itself."""
        found = await self._core.all(
            sa.select(instructions)
            .where(instructions.c.tenant_id == tenant_id)
            .order_by(instructions.c.version.desc())
            .limit(1),
            Instructions,
        )
        return found[0] if found else None

    async def get(self, tenant_id: str, version: int) -> Instructions:
        """One version; ``NotFound`` if the tenant has no such version."""
        return await self._core.one(
            sa.select(instructions).where(
                instructions.c.tenant_id == tenant_id, instructions.c.version == version
            ),
            Instructions,
            f"Instructions version {version} of {tenant_id!r} not found.",
        )

    async def history(self, tenant_id: str) -> list[Instructions]:
        """Every version, oldest first."""
        return await self._core.all(
            sa.select(instructions)
            .where(instructions.c.tenant_id == tenant_id)
            .order_by(instructions.c.version),
            Instructions,
        )
