"""The job queue: AI analyses and webhook deliveries, leased to one worker at a time.

A job is claimed with a lease; a worker that dies leaves it to be claimed again once the
lease runs out, and a job that ran out of attempts is failed rather than handed out again.
Every new job row is built by ``new_job``, whichever write queues it (``Jobs.enqueue``,
``Jobs.enqueue_many``, a recording's finish in ``storage.catalog.recordings``, or the
completion of a deletion with its webhook events in ``storage.catalog.retention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.core import (
    IN_BATCH,
    MAX_ERROR_CHARS,
    AnyRow,
    CatalogCore,
    record,
    row_values,
)
from storage.catalog.records import Job, NewJob
from storage.catalog.schema import jobs
from storage.errors import Conflict, NotFound


def new_job(
    *,
    id: str,
    tenant_id: str,
    kind: str,
    now: datetime,
    recording_id: str | None = None,
    run_after: datetime | None = None,
    max_attempts: int = 3,
    payload: dict[str, Any] | None = None,
) -> Job:
    """The row of a job queued at ``now``, due at ``run_after`` (default ``now``), with no
    attempt made yet."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    return Job(
        id=id,
        tenant_id=tenant_id,
        recording_id=recording_id,
        kind=kind,
        status="queued",
        attempts=0,
        max_attempts=max_attempts,
        run_after=run_after or now,
        lease_owner=None,
        lease_until=None,
        last_error=None,
        created_at=now,
        updated_at=now,
        payload=payload,
    )


async def insert_jobs(conn: AsyncConnection, new: Sequence[Job]) -> None:
    """Insert job rows (from ``new_job``) inside the caller's transaction."""
    if new:
        await conn.execute(sa.insert(jobs), [row_values(job) for job in new])


async def enqueue_new_jobs(
    conn: AsyncConnection, tenant_id: str, new: Sequence[NewJob], now: datetime
) -> list[Job]:
    """Queue jobs of the tenant, due ``now``, inside the caller's transaction; a job whose
    id is taken already is skipped, so a caller that repeats itself after a crash (or an
    older version that queued the job in a transaction of its own) queues each once.
    Returns the jobs queued now."""
    taken: set[str] = set()
    ids = [job.id for job in new]
    for start in range(0, len(ids), IN_BATCH):
        chunk = ids[start : start + IN_BATCH]
        taken.update(
            (await conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk)))).scalars()
        )
    queued: list[Job] = []
    for job in new:
        if job.id in taken:
            continue
        taken.add(job.id)
        queued.append(
            new_job(
                id=job.id,
                tenant_id=tenant_id,
                kind=job.kind,
                now=now,
                recording_id=job.recording_id,
                max_attempts=job.max_attempts,
                payload=job.payload,
            )
        )
    await insert_jobs(conn, queued)
    return queued


async def _leased_job(conn: AsyncConnection, job_id: str, owner: str) -> AnyRow:
    row = (
        await conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update())
    ).one_or_none()
    if row is None:
        raise NotFound(f"Job {job_id!r} not found.")
    if row.status != "running" or row.lease_owner != owner:
        raise Conflict(f"Job {job_id!r} is not leased to {owner!r} (it is {row.status}).")
    return row


class Jobs:
    """``catalog.jobs``: the queue of work done away from the ingest path."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def enqueue(
        self,
        *,
        id: str,
        tenant_id: str,
        kind: str,
        now: datetime,
        recording_id: str | None = None,
        run_after: datetime | None = None,
        max_attempts: int = 3,
        payload: dict[str, Any] | None = None,
    ) -> Job:
        """Queue a job, due at ``run_after`` (default ``now``)."""
        job = new_job(
            id=id,
            tenant_id=tenant_id,
            kind=kind,
            now=now,
            recording_id=recording_id,
            run_after=run_after,
            max_attempts=max_attempts,
            payload=payload,
        )
        return await self._core.insert(
            sa.insert(jobs).values(**row_values(job)), Job, subject=f"Job {id!r}"
        )

    async def enqueue_many(
        self, tenant_id: str, new: Sequence[NewJob], *, now: datetime
    ) -> list[Job]:
        """Queue several jobs of the tenant in one transaction, due ``now``; a job whose id
        is taken already is skipped (see ``enqueue_new_jobs``). Returns the jobs queued
        now."""
        if not new:
            return []
        async with self._core.transaction(write=True, subject="A job") as conn:
            return await enqueue_new_jobs(conn, tenant_id, new, now)

    async def claim(
        self,
        owner: str,
        now: datetime,
        lease: timedelta,
        *,
        kinds: Sequence[str] | None = None,
        hand_out_exhausted: bool = False,
    ) -> Job | None:
        """Lease one due job to ``owner`` until ``now + lease``: a queued job whose
        ``run_after`` has come, or a running one whose lease ran out (its worker died).

        Two claimers never get the same job: on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
        them pass each other, on SQLite claims are serialized. A running job whose lease ran
        out on its last attempt is marked failed instead of being handed out again, unless
        ``hand_out_exhausted``: then it is handed out with ``attempts > max_attempts``, for
        a claimer that must record the failure itself (the AI worker fails the recording and
        purges its audio).
        """
        kind_filter = [jobs.c.kind.in_(list(kinds))] if kinds is not None else []
        expired = sa.and_(jobs.c.status == "running", jobs.c.lease_until <= now)
        exhausted = (
            sa.select(jobs.c.id)
            .where(expired, jobs.c.attempts >= jobs.c.max_attempts, *kind_filter)
            .with_for_update(skip_locked=True)
        )
        # An expired job with attempts left is retried; one without is failed here, or
        # handed out (see the docstring).
        retried = (
            expired
            if hand_out_exhausted
            else sa.and_(expired, jobs.c.attempts < jobs.c.max_attempts)
        )
        due = (
            sa.select(jobs.c.id)
            .where(
                sa.or_(sa.and_(jobs.c.status == "queued", jobs.c.run_after <= now), retried),
                *kind_filter,
            )
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        async with self._core.transaction(write=True) as conn:
            if not hand_out_exhausted:
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id.in_(exhausted.scalar_subquery()))
                    .values(
                        status="failed",
                        lease_until=None,
                        last_error="The lease ran out on the last attempt.",
                        updated_at=now,
                    )
                )
            job_id = (await conn.execute(due)).scalar()
            if job_id is None:
                return None
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        status="running",
                        attempts=jobs.c.attempts + 1,
                        lease_owner=owner,
                        lease_until=now + lease,
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).one()
        return record(Job, row)

    async def _update_leased(self, job_id: str, owner: str, **values: Any) -> Job:
        """Change a job that ``owner`` holds the lease of; ``Conflict`` if it lost it."""
        async with self._core.transaction(write=True) as conn:
            await _leased_job(conn, job_id, owner)
            row = (
                await conn.execute(
                    sa.update(jobs).where(jobs.c.id == job_id).values(**values).returning(*jobs.c)
                )
            ).one()
        return record(Job, row)

    async def renew_lease(self, job_id: str, owner: str, now: datetime, lease: timedelta) -> Job:
        """Extend ``owner``'s lease to ``now + lease`` (a long job's heartbeat); ``Conflict``
        if the lease was lost (it ran out and another worker took the job). A lease that
        ran out but that nobody took yet is extended: the job is still this owner's."""
        return await self._update_leased(job_id, owner, lease_until=now + lease, updated_at=now)

    async def defer(
        self, job_id: str, owner: str, reason: str, now: datetime, *, run_after: datetime
    ) -> Job:
        """Hand the job back, due again at ``run_after``, without counting the attempt: it
        could not start yet (its audio is still being published), which is no failure."""
        return await self._update_leased(
            job_id,
            owner,
            status="queued",
            attempts=jobs.c.attempts - 1,
            run_after=run_after,
            lease_owner=None,
            lease_until=None,
            last_error=reason[:MAX_ERROR_CHARS],
            updated_at=now,
        )

    async def complete(self, job_id: str, owner: str, now: datetime) -> Job:
        """Mark the job done; ``Conflict`` if ``owner`` no longer holds its lease."""
        return await self._update_leased(
            job_id, owner, status="done", lease_until=None, updated_at=now
        )

    async def fail(
        self,
        job_id: str,
        owner: str,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None = None,
    ) -> Job:
        """Record a failed attempt: queue the job again at ``retry_at`` if given and attempts
        remain, else mark it failed. ``Conflict`` if ``owner`` no longer holds its lease."""
        async with self._core.transaction(write=True) as conn:
            current = await _leased_job(conn, job_id, owner)
            values: dict[str, Any] = {
                "lease_until": None,
                "last_error": error[:MAX_ERROR_CHARS],
                "updated_at": now,
            }
            if retry_at is not None and current.attempts < current.max_attempts:
                values.update(status="queued", run_after=retry_at, lease_owner=None)
            else:
                values.update(status="failed")
            row = (
                await conn.execute(
                    sa.update(jobs).where(jobs.c.id == job_id).values(**values).returning(*jobs.c)
                )
            ).one()
        return record(Job, row)

    async def list(
        self, tenant_id: str, *, recording_id: str | None = None, kind: str | None = None
    ) -> list[Job]:
        """The tenant's jobs (of one recording, of one kind), oldest first."""
        stmt = sa.select(jobs).where(jobs.c.tenant_id == tenant_id)
        if recording_id is not None:
            stmt = stmt.where(jobs.c.recording_id == recording_id)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        return await self._core.all(stmt.order_by(jobs.c.created_at, jobs.c.id), Job)
