"""The node registry: every ``serve`` of a fleet that shares one catalog, and the work a
node leaves behind when it stops without saying so.

A node registers itself at start (its id, its ingest addresses), writes a heartbeat every
``CALLVAULT_NODE__HEARTBEAT_INTERVAL`` and marks itself ``stopped`` on a clean shutdown
(only once every live call of it was finalized: one that stops with calls it could not end
stays ``up``, silent, so that it is declared dead and they are ended).
One whose heartbeat is older than ``CALLVAULT_NODE__DEAD_AFTER`` is declared ``dead`` by
another, in one conditional UPDATE, so that of several nodes looking at once exactly one
wins each declaration.

What a dead node leaves: its live calls (``calls.node_id``), ended elsewhere with what it
published (``Recordings.finish`` with ``while_node_dead``: not a call another node took
over meanwhile, ``Calls.take_over``), and the AI jobs whose audio waits
in its spool (audio objects still ``writing`` with its ``objects.node_id``): those are failed
at once with a reason that starts with ``NODE_DEAD`` and names the node (``fail_waiting``),
never purged, since the node publishes that audio when it comes back. Back, it publishes its
spool and reopens exactly those jobs (``failed_while_away``, ``reopen``).

The node's row is the lock of its return: every write that acts on a node being away
(failing its jobs, ending its calls) takes the row ``FOR SHARE`` and checks it in the same
transaction, and ``register`` updates the row, so a node that registered again can trust
that nothing more is failed on its account once its registration committed, and one
reopening pass after it finds everything that was.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.core import AnyRow, CatalogCore, after_key, lock_tenant, record
from storage.catalog.records import Call, Job, Node, iso
from storage.catalog.schema import calls, jobs, nodes, objects, recordings, tenants
from storage.errors import Conflict

NODE_DEAD = "node_dead"
"""The code a failure reason starts with when a job was failed because its audio waits in
the spool of a node that is not up; such jobs, and only those, are reopened when the node is
back."""
ANALYZE_JOB = "analyze"
AUDIO_KIND = "audio"


async def lock_node(conn: AsyncConnection, node_id: str) -> Node | None:
    """The node's row, locked ``FOR SHARE`` for the rest of the transaction (PostgreSQL;
    SQLite holds its write lock already), so that its registration waits for this
    transaction; ``None`` for an unknown id."""
    row = (
        await conn.execute(sa.select(nodes).where(nodes.c.id == node_id).with_for_update(read=True))
    ).one_or_none()
    return None if row is None else record(Node, row)


def away_reason(node: Node, recording_id: str) -> str:
    """The failure reason of a job whose audio waits in ``node``'s spool."""
    if node.state == "dead" and node.dead_at is not None:
        why = f"was declared dead at {iso(node.dead_at)}"
    elif node.state == "stopped":
        why = f"stopped at {iso(node.heartbeat_at)}"
    else:
        why = f"has sent no heartbeat since {iso(node.heartbeat_at)}"
    return (
        f"{NODE_DEAD}: the audio of recording {recording_id} waits in the spool of node "
        f"{node.id!r}, which {why}; it is analysed when that node is back"
    )


class Nodes:
    """``catalog.nodes``: the node registry and the work of nodes that went away."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    # --- the registry -----------------------------------------------------------------------

    async def register(self, node_id: str, addresses: dict[str, Any], now: datetime) -> Node:
        """Register the node, or register it again (a restart, or after it was declared
        dead): up, with these addresses, started and heartbeating ``now``. Waits for any
        transaction that is acting on the node being away (see the module's docstring)."""
        values = {
            "addresses": addresses,
            "state": "up",
            "started_at": now,
            "heartbeat_at": now,
            "dead_at": None,
        }
        subject = f"Node {node_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            row = (
                await conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.id == node_id)
                    .values(**values)
                    .returning(*nodes.c)
                )
            ).one_or_none()
            if row is None:
                row = (
                    await conn.execute(
                        sa.insert(nodes).values(id=node_id, **values).returning(*nodes.c)
                    )
                ).one()
        return record(Node, row)

    async def heartbeat(self, node_id: str, now: datetime) -> bool:
        """Write the node's heartbeat (one UPDATE). ``False`` when its row is not ``up``
        (another node declared it dead while it was cut off or stalled, or the row is
        gone): it must register again and take up what was done in its absence."""
        async with self._core.transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.id == node_id, nodes.c.state == "up")
                    .values(heartbeat_at=now)
                    .returning(nodes.c.id)
                )
            ).one_or_none()
        return row is not None

    async def stop(self, node_id: str, now: datetime) -> bool:
        """Mark the node ``stopped`` (a clean shutdown: its calls were finalized); ``False``
        if it was not up."""
        async with self._core.transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(nodes)
                    .where(nodes.c.id == node_id, nodes.c.state == "up")
                    .values(state="stopped", heartbeat_at=now)
                    .returning(nodes.c.id)
                )
            ).one_or_none()
        return row is not None

    async def declare_dead(
        self, now: datetime, dead_after: timedelta, *, by: str | None = None
    ) -> list[Node]:
        """Declare dead every node that is up but whose heartbeat is older than
        ``dead_after`` at ``now`` (never ``by``, the declaring node itself), in one
        conditional UPDATE: of several nodes declaring at once, each dead node is declared
        by exactly one (the others' UPDATE finds it dead already). The nodes declared."""
        where = [nodes.c.state == "up", nodes.c.heartbeat_at < now - dead_after]
        if by is not None:
            where.append(nodes.c.id != by)
        async with self._core.transaction(write=True) as conn:
            rows = (
                await conn.execute(
                    sa.update(nodes)
                    .where(*where)
                    .values(state="dead", dead_at=now)
                    .returning(*nodes.c)
                )
            ).all()
        return sorted((record(Node, row) for row in rows), key=lambda node: node.id)

    async def get(self, node_id: str) -> Node:
        """The node; ``NotFound`` if it never registered."""
        return await self._core.one(
            sa.select(nodes).where(nodes.c.id == node_id), Node, f"Node {node_id!r} not found."
        )

    # --- what a dead node left ----------------------------------------------------------------

    async def live_calls_of_dead(
        self, *, after: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Call]:
        """Live accepted calls (no end yet) taken by a node that is declared dead, oldest
        first: to be ended with what their node published. A page of ``limit`` after the
        keyset cursor ``after`` (the last page's last call's ``(started_at, id)``), so that
        one look walks them all, whichever of them it cannot end."""
        where = [
            nodes.c.state == "dead",
            calls.c.ended_at.is_(None),
            calls.c.refusal_code.is_(None),
        ]
        if after is not None:
            where.append(after_key([calls.c.started_at, calls.c.id], after))
        return await self._core.all(
            sa.select(*calls.c)
            .select_from(calls.join(nodes, nodes.c.id == calls.c.node_id))
            .where(*where)
            .order_by(calls.c.started_at, calls.c.id)
            .limit(limit),
            Call,
        )

    async def jobs_of_dead(
        self, *, after: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[tuple[Job, str]]:
        """Queued AI jobs whose recording has audio still ``writing`` in the spool of a node
        declared dead, with that node's id: to be failed at once (``fail_waiting``). A page
        of ``limit`` after the keyset cursor ``after`` (the last page's last job's
        ``(run_after, id)``)."""
        waiting = (
            sa.select(objects.c.node_id)
            .select_from(objects.join(nodes, nodes.c.id == objects.c.node_id))
            .where(
                objects.c.recording_id == jobs.c.recording_id,
                objects.c.kind == AUDIO_KIND,
                objects.c.state == "writing",
                nodes.c.state == "dead",
            )
            .order_by(objects.c.node_id)
            .limit(1)
            .correlate(jobs)
            .scalar_subquery()
        )
        where = [
            jobs.c.kind == ANALYZE_JOB,
            jobs.c.status == "queued",
            waiting.is_not(None),
        ]
        if after is not None:
            where.append(after_key([jobs.c.run_after, jobs.c.id], after))
        stmt = (
            sa.select(*jobs.c, waiting.label("waits_on"))
            .where(*where)
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(limit)
        )
        async with self._core.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(record(Job, row), row.waits_on) for row in rows]

    async def fail_waiting(
        self,
        job: Job,
        node_id: str,
        now: datetime,
        *,
        dead_after: timedelta,
        owner: str | None = None,
    ) -> Job | None:
        """Fail the AI job at once, without counting an attempt and without purging
        anything, because its audio waits in the spool of ``node_id`` and that node is not
        up (``Node.silent``): the job and its recording become ``failed`` with a reason
        that starts with ``NODE_DEAD`` and names the node, and are reopened when it is back.

        ``owner``: the worker that holds the job's lease (``Conflict`` if it lost it); else
        the job must still be queued. ``None`` (nothing changed) when the node is up after
        all, is unknown, or the job moved on meanwhile."""
        async with self._core.transaction(write=True, subject=f"Job {job.id!r}") as conn:
            await lock_tenant(conn, job.tenant_id, live=False)
            node = await lock_node(conn, node_id)
            if node is None or not node.silent(now, dead_after):
                return None
            current = (
                await conn.execute(sa.select(jobs).where(jobs.c.id == job.id).with_for_update())
            ).one_or_none()
            if current is None:
                return None
            if owner is not None:
                if current.status != "running" or current.lease_owner != owner:
                    raise Conflict(f"Job {job.id!r} is not leased to {owner!r}.")
            elif current.status != "queued":
                return None
            reason = away_reason(node, job.recording_id or "?")
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(
                        status="failed",
                        attempts=jobs.c.attempts - (1 if owner is not None else 0),
                        lease_owner=None,
                        lease_until=None,
                        last_error=reason,
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).one()
            if job.recording_id is not None:
                await conn.execute(
                    sa.update(recordings)
                    .where(recordings.c.id == job.recording_id, recordings.c.status == "processing")
                    .values(status="failed", failure_reason=reason)
                )
        return record(Job, row)

    async def failed_while_away(
        self, node_id: str, *, after: tuple[datetime, str] | None = None, limit: int = 100
    ) -> list[Job]:
        """The AI jobs failed because their audio waited in this node's spool, whose audio
        is all published now (none of it ``writing`` in this node's spool): the jobs to
        ``reopen`` once the node is back and has published its spool, a page of ``limit``
        in creation order after the keyset cursor ``after`` (the last page's last job's
        ``(created_at, id)``), so that a pass walks them all, whichever of them it cannot
        reopen. Jobs that ``reopen`` would refuse for good are left out: their recording is
        no longer ``failed`` (erased meanwhile, or moved on) or their tenant is deleted."""
        mine = sa.and_(
            objects.c.recording_id == jobs.c.recording_id,
            objects.c.kind == AUDIO_KIND,
            objects.c.node_id == node_id,
        )
        where = [
            jobs.c.kind == ANALYZE_JOB,
            jobs.c.status == "failed",
            jobs.c.last_error.startswith(NODE_DEAD + ":", autoescape=True),
            recordings.c.status == "failed",
            tenants.c.deleted_at.is_(None),
            sa.exists().where(mine),
            ~sa.exists().where(mine, objects.c.state == "writing"),
        ]
        if after is not None:
            where.append(after_key([jobs.c.created_at, jobs.c.id], after))
        stmt = (
            sa.select(*jobs.c)
            .select_from(
                jobs.join(recordings, recordings.c.id == jobs.c.recording_id).join(
                    tenants, tenants.c.id == jobs.c.tenant_id
                )
            )
            .where(*where)
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(limit)
        )
        return await self._core.all(stmt, Job)

    async def reopen(self, job: Job, *, samples: int, now: datetime) -> Job | None:
        """Queue again, due ``now``, a job failed with ``NODE_DEAD``, and move its recording
        back from ``failed`` to ``processing`` with its timeline at least ``samples`` long
        (what the node published on its return), in one transaction. ``None`` (nothing
        changed) when the job was reopened already, failed since for another reason, or its
        recording is no longer ``failed`` (erased meanwhile) or its tenant is deleted: a
        job is reopened once, so an analysis never runs twice for one failure."""
        if job.recording_id is None:
            return None
        async with self._core.transaction(write=True, subject=f"Job {job.id!r}") as conn:
            tenant = await lock_tenant(conn, job.tenant_id, live=False)
            recording = await _locked(conn, recordings, job.recording_id)
            current = await _locked(conn, jobs, job.id)
            if (
                tenant.deleted_at is not None
                or recording is None
                or recording.status != "failed"
                or current is None
                or current.status != "failed"
                or not (current.last_error or "").startswith(NODE_DEAD + ":")
            ):
                return None
            await conn.execute(
                sa.update(recordings)
                .where(recordings.c.id == job.recording_id)
                .values(
                    status="processing",
                    failure_reason=None,
                    samples=max(recording.samples or 0, samples),
                )
            )
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(
                        status="queued",
                        run_after=now,
                        lease_owner=None,
                        lease_until=None,
                        last_error=None,
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).one()
        return record(Job, row)

    async def list(self) -> list[Node]:
        """Every node of the registry, by id (for an operator's view and the metrics)."""
        return await self._core.all(sa.select(nodes).order_by(nodes.c.id), Node)


async def _locked(conn: AsyncConnection, table: sa.Table, row_id: str) -> AnyRow | None:
    return (
        await conn.execute(sa.select(table).where(table.c.id == row_id).with_for_update())
    ).one_or_none()
