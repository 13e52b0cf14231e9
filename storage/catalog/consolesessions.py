"""The browser console's sessions, by the SHA-256 of their cookie's id only.

A session is a row, not a node's memory, so that any node of a fleet serves it and a
sign-out on one node is a sign-out on every node. It names the token its user signed in
with; ``find`` answers a session only while that token is active (not revoked, not expired,
its tenant not deleted) at the caller's ``now``, so revoking the token ends its sessions at
their next request, on every node, as it ends the token's API access.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from storage.catalog.core import CatalogCore, record, record_prefixed
from storage.catalog.records import Token
from storage.catalog.schema import console_sessions, tenants, tokens
from storage.catalog.tokens import active_token


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in browser: its cookie id's hash, its token, and its times."""

    id_hash: str
    token_id: str
    created_at: datetime
    seen_at: datetime
    expires_at: datetime


class ConsoleSessions:
    """``catalog.console_sessions``: the console's sessions."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def create(
        self, id_hash: str, token_id: str, *, now: datetime, lifetime: timedelta
    ) -> ConsoleSession:
        """Store a session of ``token_id`` that ends ``lifetime`` after ``now`` at the
        latest; the sessions that ended before ``now`` are removed in the same write."""
        async with self._core.transaction(write=True, subject="Console session") as conn:
            await conn.execute(
                sa.delete(console_sessions).where(console_sessions.c.expires_at <= now)
            )
            row = (
                await conn.execute(
                    sa.insert(console_sessions)
                    .values(
                        id_hash=id_hash,
                        token_id=token_id,
                        created_at=now,
                        seen_at=now,
                        expires_at=now + lifetime,
                    )
                    .returning(*console_sessions.c)
                )
            ).one()
        return record(ConsoleSession, row)

    async def find(
        self, id_hash: str, *, now: datetime, idle: timedelta
    ) -> tuple[ConsoleSession, Token] | None:
        """The session with this hash and its token, if at ``now`` the session has not
        ended (its lifetime, or ``idle`` since it was last seen) and its token is active."""
        labelled = [column.label(f"tok__{column.name}") for column in tokens.c]
        statement = (
            sa.select(*console_sessions.c, *labelled)
            .select_from(
                console_sessions.join(tokens, console_sessions.c.token_id == tokens.c.id).outerjoin(
                    tenants, tokens.c.tenant_id == tenants.c.id
                )
            )
            .where(
                console_sessions.c.id_hash == id_hash,
                console_sessions.c.expires_at > now,
                console_sessions.c.seen_at > now - idle,
                active_token(now),
            )
        )
        async with self._core.transaction() as conn:
            row = (await conn.execute(statement)).one_or_none()
        if row is None:
            return None
        return record(ConsoleSession, row), record_prefixed(Token, row, "tok__")

    async def touch(self, id_hash: str, *, now: datetime) -> None:
        """Note that the session was used at ``now`` (its idle time starts again)."""
        async with self._core.transaction(write=True, subject="Console session") as conn:
            await conn.execute(
                sa.update(console_sessions)
                .where(console_sessions.c.id_hash == id_hash)
                .values(seen_at=now)
            )

    async def end(self, id_hash: str) -> None:
        """Remove the session (sign-out); nothing happens if it is gone already."""
        async with self._core.transaction(write=True, subject="Console session") as conn:
            await conn.execute(
                sa.delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
            )
