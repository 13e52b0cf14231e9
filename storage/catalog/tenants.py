"""Tenants and their API tokens (stored as hashes only).

A tenant row also holds the head of its audit chain (``storage.catalog.audit``), which is
why it outlives the tenant's deletion: the log of what was done to its data stays.
"""

from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa

from storage.catalog.audit import append_entries
from storage.catalog.auditchain import GENESIS_HASH
from storage.catalog.core import CatalogCore, at, lock_tenant, record
from storage.catalog.records import ROLES, AuditEntry, Role, Tenant, Token
from storage.catalog.schema import tenants, tokens

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


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


def _owned_by(tenant_id: str | None) -> sa.ColumnElement[bool]:
    """The tokens of ``tenant_id``; ``None``: the operator tokens."""
    return tokens.c.tenant_id.is_(None) if tenant_id is None else tokens.c.tenant_id == tenant_id


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
    ) -> Token:
        """Store a token by the SHA-256 hex of its secret (never the secret itself)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if (role == "operator") != (tenant_id is None):
            raise ValueError("operator tokens have no tenant; every other token has one")
        if not _SHA256_HEX.match(token_hash):
            raise ValueError("token_hash must be the lowercase hex SHA-256 of the token")
        async with self._core.transaction(write=True, subject=f"Token {id!r}") as conn:
            if tenant_id is not None:
                await lock_tenant(conn, tenant_id, live=True)
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
                    )
                    .returning(*tokens.c)
                )
            ).one()
        return record(Token, row)

    async def find(self, token_hash: str) -> Token | None:
        """The token with this hash if it is active: not revoked, tenant not deleted."""
        found = await self._core.all(
            sa.select(*tokens.c)
            .select_from(tokens.outerjoin(tenants, tokens.c.tenant_id == tenants.c.id))
            .where(
                tokens.c.token_hash == token_hash,
                tokens.c.revoked_at.is_(None),
                sa.or_(tokens.c.tenant_id.is_(None), tenants.c.deleted_at.is_(None)),
            ),
            Token,
        )
        return found[0] if found else None

    async def revoke(self, tenant_id: str | None, token_id: str, now: datetime) -> Token:
        """Revoke a token of ``tenant_id`` (``None``: an operator token); ``NotFound`` if it
        is unknown or another tenant's. Repeating it keeps the first time."""
        return await self._core.one(
            sa.update(tokens)
            .where(tokens.c.id == token_id, _owned_by(tenant_id))
            .values(revoked_at=sa.func.coalesce(tokens.c.revoked_at, at(now)))
            .returning(*tokens.c),
            Token,
            f"Token {token_id!r} not found.",
            write=True,
        )

    async def list(self, tenant_id: str | None) -> list[Token]:
        """The tokens of ``tenant_id`` (``None``: operator tokens), revoked ones included,
        oldest first."""
        return await self._core.all(
            sa.select(tokens).where(_owned_by(tenant_id)).order_by(tokens.c.created_at), Token
        )
