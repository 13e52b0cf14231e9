"""``catalog.console_sessions`` on both backends (SQLite, and PostgreSQL as a fleet shares it):
a session is found only while it has not ended and its token may be used."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from storage.catalog import Catalog
from tests.functional.test_catalog import T0, add_tenant

LIFETIME, IDLE = timedelta(hours=8), timedelta(minutes=30)


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


async def token(catalog: Catalog, token_id: str, tenant: str | None = "acme") -> str:
    role = "admin" if tenant else "operator"
    await catalog.tokens.create(token_id, tenant, role, digest(token_id + "-secret"), "t", T0)
    return token_id


async def test_a_session_lives_until_its_lifetime_idle_time_token_or_tenant_ends_it(
    catalog: Catalog,
) -> None:
    await add_tenant(catalog)
    sessions = catalog.console_sessions
    admin = await token(catalog, "tok_admin")
    operator = await token(catalog, "tok_op", tenant=None)
    await sessions.create(digest("a"), admin, now=T0, lifetime=LIFETIME)
    await sessions.create(digest("o"), operator, now=T0, lifetime=LIFETIME)
    found = await sessions.find(digest("a"), now=T0 + IDLE / 2, idle=IDLE)
    assert found is not None
    row, tok = found
    assert (row.token_id, tok.id, tok.role, tok.tenant_id) == (admin, admin, "admin", "acme")
    assert row.expires_at == T0 + LIFETIME
    assert await sessions.find(digest("nope"), now=T0, idle=IDLE) is None
    # Idle: found just before, not at; a touch starts the idle time again.
    assert await sessions.find(digest("a"), now=T0 + IDLE, idle=IDLE) is None
    await sessions.touch(digest("a"), now=T0 + IDLE - timedelta(seconds=1))
    assert await sessions.find(digest("a"), now=T0 + IDLE + IDLE / 2, idle=IDLE) is not None
    # The lifetime, however recently used.
    late = T0 + LIFETIME
    await sessions.touch(digest("a"), now=late - timedelta(seconds=1))
    assert await sessions.find(digest("a"), now=late, idle=IDLE) is None
    # The token revoked: every session of it ends; the operator's stays.
    await sessions.create(digest("b"), admin, now=T0, lifetime=LIFETIME)
    await catalog.tokens.revoke("acme", admin, T0 + timedelta(minutes=1))
    assert await sessions.find(digest("b"), now=T0 + timedelta(minutes=2), idle=IDLE) is None
    assert await sessions.find(digest("o"), now=T0 + timedelta(minutes=2), idle=IDLE) is not None
    # The tenant deleted: its tokens' sessions end.
    other = await token(catalog, "tok_admin2")
    await sessions.create(digest("c"), other, now=T0, lifetime=LIFETIME)
    assert await sessions.find(digest("c"), now=T0, idle=IDLE) is not None
    await catalog.tenants.mark_deleted("acme", T0 + timedelta(minutes=3))
    assert await sessions.find(digest("c"), now=T0 + timedelta(minutes=4), idle=IDLE) is None
    # Sign-out removes the row; a new session removes those that ended.
    await sessions.end(digest("o"))
    assert await sessions.find(digest("o"), now=T0, idle=IDLE) is None
    await sessions.create(digest("d"), operator, now=late + timedelta(hours=1), lifetime=LIFETIME)
    async with catalog.core.transaction() as conn:
        left = (await conn.exec_driver_sql("SELECT count(*) FROM console_sessions")).scalar()
    assert left == 1  # "d": a, b and c had ended by then
