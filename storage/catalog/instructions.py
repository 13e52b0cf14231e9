"""The versions of each tenant's documented instructions, and the one in force.

Every PUT stores a new immutable version; what decides a call, a webhook delivery or a
retention sweep is the newest one, parsed (``storage.instructions``), or the defaults when
the tenant never set any. ``CatalogInstructions.current`` is the one place that rule is
written.

A version's webhook secret is stored sealed only (``storage.webhooksecret`` seals it): ``add``
refuses a secret in clear, writes a new sealed secret's key row in the version's transaction,
and deletes (shreds) the key row of the sealed secret the new version no longer uses, so that
only the current secret can ever be opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.catalog.core import AnyRow, CatalogCore, lock_tenant, record, row_values
from storage.catalog.records import Instructions, ObjectKeyRow
from storage.catalog.schema import instructions, object_keys
from storage.errors import InvalidInstructions
from storage.instructions import (
    REDACTED,
    InstructionsDoc,
    SealedSecret,
    default_instructions,
    parse_stored_instructions,
)


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
        self,
        tenant_id: str,
        document: dict[str, Any],
        created_by: str,
        now: datetime,
        *,
        secret_key: ObjectKeyRow | None = None,
    ) -> Instructions:
        """Store a new version of the tenant's instructions, numbered previous + 1.

        ``document["webhook"]["secret"]`` is null, a sealed secret (its key row is
        ``secret_key``, inserted in the same transaction), or `REDACTED`: the current
        version's sealed secret is kept (``InvalidInstructions`` on ``webhook.secret`` when
        it has none). A secret in clear is a programming error (``ValueError``): only
        ``storage.webhooksecret.store_instructions`` hands secrets to the catalog. The key
        row of the secret the current version holds is deleted when the new one does not
        keep it. Concurrent adds queue on the tenant row, so versions never collide or skip.
        """
        secret = _secret_of(document)
        if isinstance(secret, str) and secret != REDACTED:
            raise ValueError("a webhook secret is stored sealed (storage.webhooksecret)")
        subject = f"Instructions of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            await lock_tenant(conn, tenant_id, live=True)
            latest = await _latest_row(conn, tenant_id)
            held = _sealed(latest.document) if latest is not None else None
            if secret == REDACTED:
                if held is None:
                    # A clear one only where an older callvault wrote it since this one
                    # started (each start seals them): kept it would stay in clear.
                    clear = latest is not None and isinstance(_secret_of(latest.document), str)
                    raise InvalidInstructions(
                        "webhook.secret",
                        f"is {REDACTED!r}, which keeps the current secret, but "
                        + ("it is not sealed yet" if clear else "none is set")
                        + "; send the secret",
                    )
                secret = held.model_dump()
                document = {**document, "webhook": {**document["webhook"], "secret": secret}}
            kept = None if secret is None else SealedSecret.model_validate(secret).key_id
            if secret_key is not None:
                if (secret_key.object_id, secret_key.tenant_id) != (kept, tenant_id):
                    raise ValueError("secret_key is not the key of the document's secret")
                await conn.execute(sa.insert(object_keys).values(**row_values(secret_key)))
            elif kept is not None and (held is None or held.key_id != kept):
                raise ValueError("a new sealed secret needs its secret_key")
            row = (
                await conn.execute(
                    sa.insert(instructions)
                    .values(
                        tenant_id=tenant_id,
                        version=(latest.version if latest is not None else 0) + 1,
                        document=document,
                        created_at=now,
                        created_by=created_by,
                    )
                    .returning(*instructions.c)
                )
            ).one()
            shredded = held is not None and held.key_id != kept
            if held is not None and shredded:
                await conn.execute(
                    sa.delete(object_keys).where(
                        object_keys.c.object_id == held.key_id,
                        object_keys.c.tenant_id == tenant_id,
                    )
                )
        if shredded:
            await self._core.forget_deleted_rows()
        return record(Instructions, row)

    async def current(self, tenant_id: str) -> CurrentInstructions:
        """The instructions in force: the newest version parsed, or the defaults."""
        row = await self.latest(tenant_id)
        if row is None:
            return CurrentInstructions(document=default_instructions(), version=None)
        return CurrentInstructions(
            document=parse_stored_instructions(row.document), version=row.version
        )

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

    # --- catalogs from before webhook secrets were sealed ---------------------------------

    async def clear_secrets(self) -> list[Instructions]:
        """Every version (of any tenant, deleted ones too) whose webhook secret is stored in
        clear, by tenant and version; only catalogs written before secrets were sealed have
        any. The JSON type is asked of the database, so a start reads no other document."""
        secret_type = (
            sa.func.json_type(instructions.c.document, "$.webhook.secret")
            if self._core.backend == "sqlite"
            else sa.func.json_typeof(instructions.c.document.op("->")("webhook").op("->")("secret"))
        )
        return await self._core.all(
            sa.select(instructions)
            .where(secret_type.in_(("text", "string")))
            .order_by(instructions.c.tenant_id, instructions.c.version),
            Instructions,
        )

    async def seal_clear_secrets(
        self,
        tenant_id: str,
        sealed: dict[int, tuple[dict[str, Any], dict[str, Any]]],
        *,
        current: int,
        secret_key: ObjectKeyRow | None,
    ) -> int:
        """Replace versions' documents that hold a secret in clear with their sealed form:
        ``sealed`` maps a version to (the document as read, the document to store); a version
        whose document changed since it was read is left alone. ``secret_key``, the key of
        version ``current``'s sealed secret, is inserted only while ``current`` is still the
        newest version and was sealed here (otherwise the secret is superseded: its key is
        dropped unstored). Returns how many versions were replaced."""
        replaced: list[int] = []
        subject = f"Instructions of {tenant_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            await lock_tenant(conn, tenant_id, live=False)
            stored = {
                row.version: row.document
                for row in await conn.execute(
                    sa.select(instructions.c.version, instructions.c.document).where(
                        instructions.c.tenant_id == tenant_id,
                        instructions.c.version.in_(list(sealed)),
                    )
                )
            }
            for version, (read, replacement) in sealed.items():
                if stored.get(version) != read:
                    continue
                await conn.execute(
                    sa.update(instructions)
                    .where(
                        instructions.c.tenant_id == tenant_id,
                        instructions.c.version == version,
                    )
                    .values(document=replacement)
                )
                replaced.append(version)
            latest = await _latest_row(conn, tenant_id)
            if secret_key is not None and current in replaced and latest is not None:
                if latest.version == current:
                    await conn.execute(sa.insert(object_keys).values(**row_values(secret_key)))
        if replaced:
            # The clear secrets' page images leave the WAL (secure_delete zeroes them in the
            # database file).
            await self._core.forget_deleted_rows()
        return len(replaced)


async def _latest_row(conn: AsyncConnection, tenant_id: str) -> AnyRow | None:
    return (
        await conn.execute(
            sa.select(instructions.c.version, instructions.c.document)
            .where(instructions.c.tenant_id == tenant_id)
            .order_by(instructions.c.version.desc())
            .limit(1)
        )
    ).one_or_none()


def _secret_of(document: dict[str, Any]) -> object:
    webhook = document.get("webhook")
    return webhook.get("secret") if isinstance(webhook, dict) else None


def _sealed(document: dict[str, Any]) -> SealedSecret | None:
    """The sealed secret a stored document holds (None: none, or one still in clear)."""
    secret = _secret_of(document)
    return SealedSecret.model_validate(secret) if isinstance(secret, dict) else None
