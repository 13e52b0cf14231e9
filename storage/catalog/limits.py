"""Counting a tenant's calls against its limits, inside the transaction that stores the next.

The counts are read from the ``calls`` rows, which every node sharing the catalog writes,
so a limit holds for the tenant as a whole, not per node: calls live at once (no end yet),
RTP calls live at once, and calls announced in the last 60 s. The check runs in the write
transaction that inserts the call, after the tenant row is locked (``lock_tenant``: a row
lock on PostgreSQL, the database's write lock on SQLite), so two concurrent announcements
of one tenant are serialized and cannot both take the last place; other tenants' writers
never wait on that lock.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.records import TenantLimits
from storage.catalog.schema import calls
from storage.errors import LimitReached

LIMIT_REFUSAL = "limit_exceeded"
"""The refusal code of a call refused by a limit (its call record keeps it)."""
RATE_WINDOW = timedelta(seconds=60)


async def reached_limit(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    transport: str,
    accepted: bool,
    limits: TenantLimits,
    now: datetime,
) -> LimitReached | None:
    """The limit one more call of the tenant would exceed, or ``None``. The rate counts
    every announced call but those a limit refused (a PBX that retries too early does not
    push its own window further out); the live limits only a call the policy ``accepted``
    (a refused call is never live)."""
    if accepted:
        live, rtp = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(
                        sa.func.sum(sa.case((calls.c.transport == "rtp", 1), else_=0)), 0
                    ),
                ).where(calls.c.tenant_id == tenant_id, calls.c.ended_at.is_(None))
            )
        ).one()
        if live >= limits.live_calls:
            return LimitReached(
                "live_calls",
                limits.live_calls,
                f"The tenant has {live} live calls, its limit (live_calls = "
                f"{limits.live_calls}); retry when one has ended.",
            )
        if transport == "rtp" and rtp >= limits.rtp_calls:
            return LimitReached(
                "rtp_calls",
                limits.rtp_calls,
                f"The tenant has {rtp} live RTP calls, its limit (rtp_calls = "
                f"{limits.rtp_calls}); retry when one has ended.",
            )
    counted = sa.and_(
        calls.c.tenant_id == tenant_id,
        calls.c.started_at > now - RATE_WINDOW,
        sa.or_(calls.c.refusal_code.is_(None), calls.c.refusal_code != LIMIT_REFUSAL),
    )
    recent = (await conn.execute(sa.select(sa.func.count()).where(counted))).scalar_one()
    if recent < limits.announces_per_minute:
        return None
    # The window frees a place when the call (recent - limit) places from its oldest leaves.
    leaves = (
        await conn.execute(
            sa.select(calls.c.started_at)
            .where(counted)
            .order_by(calls.c.started_at)
            .offset(recent - limits.announces_per_minute)
            .limit(1)
        )
    ).scalar_one_or_none()
    retry_after = (
        max(1, math.ceil((leaves + RATE_WINDOW - now).total_seconds()))
        if leaves is not None
        else None
    )
    return LimitReached(
        "announces_per_minute",
        limits.announces_per_minute,
        f"The tenant announced {recent} calls in the last 60 s, its limit "
        f"(announces_per_minute = {limits.announces_per_minute}).",
        retry_after_s=retry_after,
    )
