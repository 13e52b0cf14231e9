"""Named leases: work that one process of the fleet does at a time (a tenant's retention sweep).

Why a row and not a PostgreSQL advisory lock: a lease row works the same on SQLite (several
processes on one file) and on PostgreSQL, it needs no connection held for the length of the
work (a session-level advisory lock pins one pooled connection, and is lost silently when
that connection drops), and a holder that dies leaves a row that simply runs out.

A lease is ``(name, owner, until)``. Each step is one conditional write, so two processes
racing for one name never both win:

* **claim**: take the name when nobody holds it, when its lease ran out (``until <= now``),
  or when ``owner`` holds it already: an UPDATE of an existing row under those conditions,
  else an INSERT that does nothing when the row appeared meanwhile. On PostgreSQL the
  UPDATE of a row another claimer just took re-reads it after that claimer commits and finds
  it held; on SQLite the write lock serializes the claimers.
* **renew**: move ``until`` on, only while ``owner`` still holds it (not after someone took
  over a lease that had run out);
* **release**: delete the row, only while ``owner`` still holds it.

Times are the caller's (``now``), never read here. The holders compare ``until`` with their
own clocks, so the nodes' clocks must agree to well within a lease's length.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from storage.catalog.core import CatalogCore, record
from storage.catalog.records import Lease
from storage.catalog.schema import leases


class Leases:
    """``catalog.leases``: named leases held by one owner at a time."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def claim(self, name: str, owner: str, *, now: datetime, ttl: timedelta) -> Lease | None:
        """Take (or keep) the lease ``name`` for ``owner`` until ``now + ttl``; the lease
        held now, or ``None`` while another owner's lease runs at ``now``."""
        until = now + ttl
        held = sa.or_(leases.c.owner == owner, leases.c.until <= now)
        async with self._core.transaction(write=True, subject=f"Lease {name!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(leases)
                    .where(leases.c.name == name, held)
                    .values(owner=owner, until=until)
                    .returning(*leases.c)
                )
            ).one_or_none()
            if row is None:
                insert = (
                    postgresql.insert(leases)
                    if self._core.backend == "postgresql"
                    else sqlite.insert(leases)
                )
                row = (
                    await conn.execute(
                        insert.values(name=name, owner=owner, until=until)
                        .on_conflict_do_nothing(index_elements=[leases.c.name])
                        .returning(*leases.c)
                    )
                ).one_or_none()
        return None if row is None else record(Lease, row)

    async def renew(self, name: str, owner: str, *, now: datetime, ttl: timedelta) -> Lease | None:
        """Move ``owner``'s lease on to ``now + ttl``; ``None`` if ``owner`` no longer holds
        it (released, or taken over after it ran out). A lease that ran out and that nobody
        took over is still ``owner``'s to renew."""
        async with self._core.transaction(write=True, subject=f"Lease {name!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(leases)
                    .where(leases.c.name == name, leases.c.owner == owner)
                    .values(until=now + ttl)
                    .returning(*leases.c)
                )
            ).one_or_none()
        return None if row is None else record(Lease, row)

    async def release(self, name: str, owner: str) -> bool:
        """Give the lease up, if ``owner`` still holds it; whether it did."""
        async with self._core.transaction(write=True, subject=f"Lease {name!r}") as conn:
            result = await conn.execute(
                sa.delete(leases).where(leases.c.name == name, leases.c.owner == owner)
            )
        return bool(result.rowcount)

    async def get(self, name: str) -> Lease | None:
        """The lease row of ``name`` as it stands (it may have run out), or ``None``."""
        found = await self._core.all(sa.select(leases).where(leases.c.name == name), Lease)
        return found[0] if found else None
