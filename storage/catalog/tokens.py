"""API tokens, stored by the SHA-256 of their secret only.

The catalog is the one truth about a token: every request's token is looked up here (no
node keeps a copy), so a revocation or an expiry written by one node is seen by every other
node at its next request. A token is active while it is neither revoked nor expired
(``expires_at`` is compared with the caller's ``now``, never with a clock read here).

A tenant token's minting and revocation are audited in the tenant's chain in the same
transaction as the token row (``token.created``, ``token.revoked``, and ``token.break_glass``
with its webhook job), behind the tenant's lock: a second writer cannot slip an admin token
in between the question "has the tenant ever had an admin?" and the insert that depends on it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.audit import append_entries
from storage.catalog.core import CatalogCore, lock_tenant, record
from storage.catalog.jobs import enqueue_new_jobs
from storage.catalog.records import ROLES, AuditEntry, NewJob, Role, Token, iso
from storage.catalog.schema import tenants, tokens
from storage.errors import AdminExists, NotFound

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _owned_by(tenant_id: str | None) -> sa.ColumnElement[bool]:
    """The tokens of ``tenant_id``; ``None``: the operator tokens."""
    return tokens.c.tenant_id.is_(None) if tenant_id is None else tokens.c.tenant_id == tenant_id


def _active(now: datetime) -> sa.ColumnElement[bool]:
    """Neither revoked nor expired at ``now`` (a token is refused from its expiry on)."""
    return sa.and_(
        tokens.c.revoked_at.is_(None),
        sa.or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now),
    )


def active_token(now: datetime) -> sa.ColumnElement[bool]:
    """A token that may be used at ``now``: active, and its tenant (if any) not deleted.
    For a query that joins ``tokens`` to ``tenants`` (an outer join: operator tokens have
    no tenant)."""
    return sa.and_(
        _active(now), sa.or_(tokens.c.tenant_id.is_(None), tenants.c.deleted_at.is_(None))
    )


async def _has_had_admin(conn: AsyncConnection, tenant_id: str) -> bool:
    """Whether the tenant has, or ever had, an admin token: revoked and expired ones count,
    so revoking a tenant's admins does not make the next operator-minted admin its "first"."""
    found = await conn.execute(
        sa.select(tokens.c.id)
        .where(tokens.c.tenant_id == tenant_id, tokens.c.role == "admin")
        .limit(1)
    )
    return found.first() is not None


class Tokens:
    """``catalog.tokens``: API tokens by the SHA-256 of their secret."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def create(
        self,
        id: str,
        tenant_id: str | None,
        role: Role,
        token_hash: str,
        created_by: str,
        now: datetime,
        *,
        expires_at: datetime | None = None,
        audit: Sequence[AuditEntry] = (),
        jobs: Sequence[NewJob] = (),
        unless_admin: bool = False,
        break_glass: bool = False,
    ) -> Token:
        """Store a token by the SHA-256 hex of its secret (never the secret itself), with
        the tenant's ``audit`` events and ``jobs`` (webhook events) in the same transaction.

        ``unless_admin``: refuse with ``AdminExists`` (nothing stored) when the tenant has,
        or ever had, an admin token (revoked and expired ones count), decided under the
        tenant's lock. ``break_glass``: the token is marked as break-glass access (a tenant
        token that expires)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if (role == "operator") != (tenant_id is None):
            raise ValueError("operator tokens have no tenant; every other token has one")
        if not _SHA256_HEX.match(token_hash):
            raise ValueError("token_hash must be the lowercase hex SHA-256 of the token")
        if expires_at is not None and expires_at <= now:
            raise ValueError("a token must expire after it is minted")
        if tenant_id is None and (audit or jobs or unless_admin or break_glass):
            raise ValueError("operator tokens belong to no tenant's audit log or webhook")
        if break_glass and expires_at is None:
            raise ValueError("a break-glass token must expire")
        async with self._core.transaction(write=True, subject=f"Token {id!r}") as conn:
            if tenant_id is not None:
                await lock_tenant(conn, tenant_id, live=True)
                if unless_admin and await _has_had_admin(conn, tenant_id):
                    raise AdminExists(f"Tenant {tenant_id!r} has had an admin token.")
            row = (
                await conn.execute(
                    sa.insert(tokens)
                    .values(
                        id=id,
                        tenant_id=tenant_id,
                        role=role,
                        token_hash=token_hash,
                        created_at=now,
                        created_by=created_by,
                        revoked_at=None,
                        expires_at=expires_at,
                        break_glass=break_glass,
                        from_env=False,
                    )
                    .returning(*tokens.c)
                )
            ).one()
            if tenant_id is not None:
                await append_entries(conn, tenant_id, audit, now, keys=self._core.audit_keys)
                await enqueue_new_jobs(conn, tenant_id, jobs, now)
        return record(Token, row)

    async def find(self, token_hash: str, *, now: datetime) -> Token | None:
        """The token with this hash if it is active at ``now``: not revoked, not expired,
        its tenant not deleted."""
        found = await self._core.all(
            sa.select(*tokens.c)
            .select_from(tokens.outerjoin(tenants, tokens.c.tenant_id == tenants.c.id))
            .where(
                tokens.c.token_hash == token_hash,
                active_token(now),
            ),
            Token,
        )
        return found[0] if found else None

    async def inactive_among(self, token_ids: Collection[str], *, now: datetime) -> set[str]:
        """Which of ``token_ids`` are no longer active at ``now`` (revoked, expired, their
        tenant deleted, or unknown): one query, for a node that checks the tokens of its
        live ingest streams against revocations made through another node."""
        wanted = set(token_ids)
        if not wanted:
            return set()
        async with self._core.transaction() as conn:
            active = await conn.execute(
                sa.select(tokens.c.id)
                .select_from(tokens.outerjoin(tenants, tokens.c.tenant_id == tenants.c.id))
                .where(
                    tokens.c.id.in_(sorted(wanted)),
                    active_token(now),
                )
            )
            return wanted - set(active.scalars())

    async def by_hash(self, token_hash: str) -> Token | None:
        """The token with this hash whatever its state (revoked and expired ones too)."""
        found = await self._core.all(
            sa.select(tokens).where(tokens.c.token_hash == token_hash), Token
        )
        return found[0] if found else None

    async def get(self, token_id: str) -> Token:
        """The token with this id whatever its state or tenant; ``NotFound`` if unknown."""
        return await self._core.one(
            sa.select(tokens).where(tokens.c.id == token_id),
            Token,
            f"Token {token_id!r} not found.",
        )

    async def revoke(
        self, tenant_id: str | None, token_id: str, now: datetime, *, actor: str | None = None
    ) -> Token:
        """Revoke a token of ``tenant_id`` (``None``: an operator token); ``NotFound`` if it
        is unknown or another tenant's. Repeating it keeps the first time.

        ``actor`` given and a tenant token: ``token.revoked`` (role, expiry) is appended to
        the tenant's chain in the same transaction, once, by the call that revoked it."""
        async with self._core.transaction(write=True, subject=f"Token {token_id!r}") as conn:
            if tenant_id is not None:
                await lock_tenant(conn, tenant_id, live=False)
            row = (
                await conn.execute(
                    sa.select(tokens)
                    .where(tokens.c.id == token_id, _owned_by(tenant_id))
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"Token {token_id!r} not found.")
            if row.revoked_at is not None:
                return record(Token, row)
            row = (
                await conn.execute(
                    sa.update(tokens)
                    .where(tokens.c.id == token_id)
                    .values(revoked_at=now)
                    .returning(*tokens.c)
                )
            ).one()
            if tenant_id is not None and actor is not None:
                entry = AuditEntry(
                    actor=actor,
                    action="token.revoked",
                    object=token_id,
                    detail={"role": row.role, "expires_at": iso(row.expires_at)},
                )
                await append_entries(conn, tenant_id, [entry], now, keys=self._core.audit_keys)
        return record(Token, row)

    async def rotate_env_operator(self, token_hash: str, *, now: datetime) -> list[Token]:
        """Make the operator token with ``token_hash`` the env token (``from_env``, however
        it was minted: the setting may hold a token the bootstrap or the CLI printed) and
        revoke every other env token, in one transaction (the setting's rotation); returns
        those revoked now. ``NotFound`` when no active operator token has that hash."""
        async with self._core.transaction(write=True, subject="Operator tokens") as conn:
            kept = await conn.execute(
                sa.update(tokens)
                .where(
                    tokens.c.token_hash == token_hash,
                    tokens.c.tenant_id.is_(None),
                    _active(now),
                )
                .values(from_env=True)
                .returning(tokens.c.id)
            )
            if kept.first() is None:
                raise NotFound("No active operator token has this hash.")
            rows = (
                await conn.execute(
                    sa.update(tokens)
                    .where(
                        tokens.c.tenant_id.is_(None),
                        tokens.c.from_env.is_(True),
                        tokens.c.token_hash != token_hash,
                        tokens.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=now)
                    .returning(*tokens.c)
                )
            ).all()
        return [record(Token, row) for row in rows]

    async def list(self, tenant_id: str | None) -> list[Token]:
        """The tokens of ``tenant_id`` (``None``: operator tokens), revoked and expired ones
        included, oldest first."""
        return await self._core.all(
            sa.select(tokens)
            .where(_owned_by(tenant_id))
            .order_by(tokens.c.created_at, tokens.c.id),
            Token,
        )
