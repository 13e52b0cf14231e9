"""``Catalog``: the engine of the catalog database and every query callvault makes of it.

One class holds the connection pool and the repository methods, so that transactions, the
translation of driver errors into ``crypto.errors`` and the backend differences (SQLite in the
data dir by default, PostgreSQL when nodes share one catalog) are decided in one place.

Each public method is its own short transaction and returns frozen records
(``storage.catalog.records``), never rows or ORM objects. Time is always passed in (``now``),
never read from the clock here. Writes that read-then-write (instruction versions, audit
sequence numbers, job claims) are serialized: on PostgreSQL by row locks (the tenant row,
``FOR UPDATE SKIP LOCKED`` for jobs), on SQLite by taking the write lock at ``BEGIN
IMMEDIATE``, so that two writers can never both read the same "last" value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from crypto.errors import (
    CallvaultError,
    CatalogUnavailable,
    ConfigError,
    Conflict,
    Gone,
    HeldByLegalHold,
    KeyUnavailable,
    NotFound,
)
from storage.catalog.auditchain import GENESIS_HASH, chain_hash, encode_detail, event_hash
from storage.catalog.records import (
    DATA_CLASSES,
    RECORDING_STATUSES,
    ROLES,
    AuditCheck,
    AuditEntry,
    AuditEvent,
    Call,
    DataClass,
    DueCall,
    DueObject,
    DueRecording,
    Instructions,
    Job,
    LegalHold,
    NewJob,
    ObjectKeyRow,
    ObjectState,
    Recording,
    RecordingStatus,
    Role,
    StoredObject,
    Tenant,
    Token,
)
from storage.catalog.schema import (
    UTCDateTime,
    audit_events,
    calls,
    instructions,
    jobs,
    legal_holds,
    object_keys,
    objects,
    recordings,
    tenants,
    tokens,
)
from storage.catalog.urls import SETTING, async_database_url, mask_database_url

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")
AnyRow = sa.Row[*tuple[Any, ...]]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_LOCK_KEY = 0x63616C6C7661756C  # "callvaul": one advisory lock for all migrators
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MAX_ERROR_CHARS = 2000
_IN_BATCH = 500
_AUDIT_CHUNK = 200
_WRITE_CHUNK = 250
"""Rows one bulk write transaction moves (with their audit receipts): on SQLite a write
transaction holds the database's only write lock, so the retention sweep keeps them short
and ingest's own writes wait for one chunk at most."""
"""Ids per ``IN (...)`` list: far below SQLite's and asyncpg's parameter limits."""

Rewrap = Callable[[ObjectKeyRow], Awaitable[tuple[str, int, bytes]]]
"""Re-wraps one DEK: given the row, returns ``(kek_id, kek_version, wrapped_dek)``."""

# Which statuses a recording may move to; a move to the status it already has is a no-op
# that may still set fields (so that retried workers and sweeps are idempotent).
RECORDING_TRANSITIONS: dict[RecordingStatus, frozenset[RecordingStatus]] = {
    "recording": frozenset({"recorded", "processing", "failed", "deleted"}),
    "processing": frozenset({"analyzed", "failed", "deleted"}),
    "failed": frozenset({"processing", "deleted"}),
    "recorded": frozenset({"deleted"}),
    "analyzed": frozenset({"deleted"}),
    "deleted": frozenset(),
}


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls))


def _record(cls: type[R], row: AnyRow) -> R:
    mapping = row._mapping
    return cls(**{name: mapping[name] for name in _field_names(cls)})


def _has_live_objects() -> sa.Exists:
    """Whether the recording of the enclosing query still has an object not deleted."""
    return (
        sa.select(objects.c.id)
        .where(objects.c.recording_id == recordings.c.id, objects.c.state != "deleted")
        .exists()
    )


def _hold(row: AnyRow) -> LegalHold:
    mapping = dict(row._mapping)
    if mapping["call_ids"] is not None:
        mapping["call_ids"] = tuple(mapping["call_ids"])
    return LegalHold(**{field.name: mapping[field.name] for field in fields(LegalHold)})


def _record_prefixed(cls: type[R], row: AnyRow, prefix: str) -> R:
    """A record from a joined row whose columns of ``cls`` are labelled ``prefix + name``."""
    mapping = row._mapping
    return cls(**{field.name: mapping[prefix + field.name] for field in fields(cls)})


_CALL_COLUMNS = [column.label("call__" + column.name) for column in calls.c]


def _new_recording(
    id: str, tenant_id: str, call_id: str, instructions_version: int, now: datetime
) -> dict[str, Any]:
    return {
        "id": id,
        "tenant_id": tenant_id,
        "call_id": call_id,
        "status": "recording",
        "instructions_version": instructions_version,
        "created_at": now,
        "ended_at": None,
        "audio_purged": False,
        "failure_reason": None,
        "deleted_at": None,
        "delete_reason": None,
        "samples": None,
    }


def _key_values(row: DataclassInstance) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _field_names(type(row))}


def _at(value: datetime) -> sa.BindParameter[datetime]:
    """A timestamp bound with the catalog's UTC type where SQL cannot infer it (COALESCE)."""
    return sa.bindparam(None, value, type_=UTCDateTime())


def _rehash(row: AnyRow) -> str | None:
    """The hash a stored audit event should have; ``None`` if its content cannot even be
    hashed (tampered into something that is not JSON-able)."""
    try:
        return event_hash(
            row.prev_hash,
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            object=row.object,
            detail=row.detail,
        )
    except (ValueError, TypeError):
        return None


def _create_owner_only(path: Path) -> None:
    """Create a new SQLite file with mode 0600 before SQLite does (it would use the umask):
    SQLite gives the -wal and -shm files the database file's mode, and the catalog holds
    wrapped keys and phone numbers. A path that exists, or cannot be made, is left to
    SQLite, which reports it on the first connection."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


def _enable_wal(cursor: Any, timeout_s: float) -> None:
    """Switch the database to WAL. The switch takes an exclusive lock without calling the
    busy handler, so two processes opening a new database at once can see "database is
    locked" here however long busy_timeout is: retried until the timeout instead."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_s: float) -> None:
    """WAL (readers do not block the writer), enforced foreign keys, waiting instead of
    failing on a busy database, zeroing deleted content (a shredded DEK does not linger in
    free pages), and SQLAlchemy in charge of BEGIN so that writes can BEGIN IMMEDIATE."""
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _enable_wal(cursor, busy_timeout_s)
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("callvault_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Catalog:
    """The catalog database: tenants, tokens, instructions, calls, recordings, objects,
    the key table, jobs and the audit log."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self._engine = engine
        # Same pool; on SQLite its transactions BEGIN IMMEDIATE (see _configure_sqlite).
        self._writer = engine.execution_options(callvault_write=True)
        # For reads that must see one snapshot across statements (audit verification);
        # SQLite read transactions are snapshots already.
        self._snapshot = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._masked_url = mask_database_url(url)
        self._head: str | None = None
        # SQLite has one write lock, and its busy handler is not fair: a writer polling for
        # it can starve behind a stream of others (a retention sweep's batches). The writers
        # of this process take turns in order here instead.
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> Catalog:
        """Create the engine for ``url`` (any form ``async_database_url`` accepts).

        Nothing is connected yet: ``check()`` tells whether the database answers, and
        ``migrate()`` brings its schema to the current version.
        """
        if not url.strip():
            raise ConfigError(SETTING, "the catalog URL is empty.")
        url = async_database_url(url, Path("."))
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if not database.startswith("file:"):
                try:
                    Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise CatalogUnavailable(
                        f"The catalog's directory for {mask_database_url(url)} cannot be "
                        f"created: {exc.strerror or exc}."
                    ) from exc
                _create_owner_only(Path(database))
            engine = create_async_engine(url, connect_args={"timeout": busy_timeout_s})
            _configure_sqlite(engine, busy_timeout_s)
        else:
            engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=connect_timeout_s,
                connect_args={"timeout": connect_timeout_s},
            )
        return cls(engine, url)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    # --- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(
        self, *, write: bool = False, snapshot: bool = False, subject: str = "the row"
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction; foreign errors are translated here and nowhere else."""
        engine = self._writer if write else self._snapshot if snapshot else self._engine
        turn = self._write_turn if write else None
        try:
            async with turn or contextlib.nullcontext(), engine.begin() as connection:
                yield connection
        except IntegrityError as exc:
            raise self._integrity_error(exc, subject) from exc
        except DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except StatementError as exc:
            # A value our column types refused (a naive datetime): the caller's bug.
            if isinstance(exc.orig, ValueError):
                raise ValueError(str(exc.orig)) from exc
            raise
        except (PoolTimeoutError, DisconnectionError, OSError) as exc:
            raise self._unavailable(exc) from exc

    @staticmethod
    def _integrity_error(exc: IntegrityError, subject: str) -> CallvaultError:
        text = str(exc.orig).lower()
        if "foreign key" in text:
            return NotFound(f"{subject} refers to something that does not exist.")
        if "unique" in text or "duplicate" in text or "primary key" in text:
            return Conflict(f"{subject} already exists.")
        return Conflict(f"{subject} conflicts with a rule of the catalog.")

    def _unavailable(self, exc: BaseException) -> CatalogUnavailable:
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).strip().splitlines()
        detail = lines[0][:200] if lines else ""
        name = type(orig).__name__
        return CatalogUnavailable(
            f"The catalog database at {self._masked_url} failed or could not be reached "
            f"({name}{': ' + detail if detail else ''})."
        )

    async def _one(
        self,
        stmt: sa.Executable,
        record_type: type[R],
        missing: str,
        *,
        write: bool = False,
        error: type[CallvaultError] = NotFound,
    ) -> R:
        """Run one statement in its own transaction and return the one row it gives as a
        ``record_type``; ``error(missing)`` (after the transaction) if it gives none."""
        async with self._transaction(write=write) as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            raise error(missing)
        return _record(record_type, row)

    async def _insert(self, stmt: sa.Insert, record_type: type[R], *, subject: str) -> R:
        """Insert one row in its own write transaction and return it, every column, as a
        ``record_type``; integrity errors name ``subject``."""
        async with self._transaction(write=True, subject=subject) as conn:
            row = (await conn.execute(stmt.returning(*stmt.table.c))).one()
        return _record(record_type, row)

    def _head_revision(self) -> str | None:
        if self._head is None:
            self._head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        return self._head

    # --- lifecycle ------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``).

        Safe to run from several nodes at once: on PostgreSQL the migrators queue on an
        advisory lock, on SQLite on the write lock, and the later ones find nothing to do.
        """
        try:
            async with self._transaction(write=True, subject="the catalog schema") as conn:
                if self.backend == "postgresql":
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _MIGRATION_LOCK_KEY},
                    )
                await conn.run_sync(self._upgrade)
        except CommandError as exc:
            raise CatalogUnavailable(
                f"The catalog database at {self._masked_url} cannot be migrated: {exc}."
            ) from exc

    @staticmethod
    def _upgrade(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async def check(self) -> None:
        """Raise ``CatalogUnavailable`` unless the database answers and its schema is at the
        newest migration (for readiness probes)."""
        async with self._transaction() as conn:
            await conn.execute(sa.text("SELECT 1"))
            migrated = await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            current = None
            if migrated:
                current = (
                    await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                ).scalar()
        head = self._head_revision()
        if current != head:
            raise CatalogUnavailable(
                f"The catalog database at {self._masked_url} is at schema version "
                f"{current or 'none'}, not {head}; run the migrations."
            )

    # --- tenants --------------------------------------------------------------------------

    async def create_tenant(self, id: str, name: str, region: str, now: datetime) -> Tenant:
        """Add a tenant; ``Conflict`` if the id is taken (also by a deleted tenant)."""
        return await self._insert(
            sa.insert(tenants).values(
                id=id,
                name=name,
                region=region,
                created_at=now,
                deleted_at=None,
                audit_seq=0,
                audit_head=GENESIS_HASH,
            ),
            Tenant,
            subject=f"Tenant {id!r}",
        )

    async def get_tenant(self, tenant_id: str) -> Tenant:
        """The tenant; ``NotFound`` if unknown or deleted."""
        return await self._one(
            sa.select(tenants).where(tenants.c.id == tenant_id, tenants.c.deleted_at.is_(None)),
            Tenant,
            f"Tenant {tenant_id!r} not found.",
        )

    async def list_tenants(self, *, include_deleted: bool = False) -> list[Tenant]:
        """All tenants, ordered by id; deleted ones only when asked."""
        stmt = sa.select(tenants).order_by(tenants.c.id)
        if not include_deleted:
            stmt = stmt.where(tenants.c.deleted_at.is_(None))
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(Tenant, row) for row in rows]

    async def mark_tenant_deleted(self, tenant_id: str, now: datetime) -> Tenant:
        """Mark the tenant deleted (its audit log stays); repeating it keeps the first time."""
        return await self._one(
            sa.update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(deleted_at=sa.func.coalesce(tenants.c.deleted_at, _at(now)))
            .returning(*tenants.c),
            Tenant,
            f"Tenant {tenant_id!r} not found.",
            write=True,
        )

    async def _lock_tenant(self, conn: AsyncConnection, tenant_id: str, *, live: bool) -> AnyRow:
        """Lock the tenant row for the rest of the transaction (PostgreSQL; SQLite already
        holds the database's write lock). ``FOR NO KEY UPDATE`` serializes the writers that
        take it without blocking inserts that merely reference the tenant."""
        row = (
            await conn.execute(
                sa.select(tenants.c.deleted_at, tenants.c.audit_seq, tenants.c.audit_head)
                .where(tenants.c.id == tenant_id)
                .with_for_update(key_share=True)
            )
        ).one_or_none()
        if row is None or (live and row.deleted_at is not None):
            raise NotFound(f"Tenant {tenant_id!r} not found.")
        return row

    # --- tokens ---------------------------------------------------------------------------

    async def create_token(
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
        async with self._transaction(write=True, subject=f"Token {id!r}") as conn:
            if tenant_id is not None:
                await self._lock_tenant(conn, tenant_id, live=True)
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
        return _record(Token, row)

    async def find_token(self, token_hash: str) -> Token | None:
        """The token with this hash if it is active: not revoked, tenant not deleted."""
        stmt = (
            sa.select(*tokens.c)
            .select_from(tokens.outerjoin(tenants, tokens.c.tenant_id == tenants.c.id))
            .where(
                tokens.c.token_hash == token_hash,
                tokens.c.revoked_at.is_(None),
                sa.or_(tokens.c.tenant_id.is_(None), tenants.c.deleted_at.is_(None)),
            )
        )
        async with self._transaction() as conn:
            row = (await conn.execute(stmt)).one_or_none()
        return None if row is None else _record(Token, row)

    async def list_tokens(self, tenant_id: str | None) -> list[Token]:
        """The tokens of ``tenant_id`` (``None``: operator tokens), revoked ones included,
        oldest first."""
        owner = (
            tokens.c.tenant_id.is_(None) if tenant_id is None else tokens.c.tenant_id == tenant_id
        )
        async with self._transaction() as conn:
            rows = (
                await conn.execute(sa.select(tokens).where(owner).order_by(tokens.c.created_at))
            ).all()
        return [_record(Token, row) for row in rows]

    async def revoke_token(self, tenant_id: str | None, token_id: str, now: datetime) -> Token:
        """Revoke a token of ``tenant_id`` (``None``: an operator token); ``NotFound`` if it
        is unknown or another tenant's. Repeating it keeps the first time."""
        owner = (
            tokens.c.tenant_id.is_(None) if tenant_id is None else tokens.c.tenant_id == tenant_id
        )
        return await self._one(
            sa.update(tokens)
            .where(tokens.c.id == token_id, owner)
            .values(revoked_at=sa.func.coalesce(tokens.c.revoked_at, _at(now)))
            .returning(*tokens.c),
            Token,
            f"Token {token_id!r} not found.",
            write=True,
        )

    # --- instructions ---------------------------------------------------------------------

    async def add_instructions(
        self, tenant_id: str, document: dict[str, Any], created_by: str, now: datetime
    ) -> Instructions:
        """Store a new version of the tenant's instructions, numbered previous + 1.

        Concurrent adds queue on the tenant row, so versions never collide or skip.
        """
        async with self._transaction(write=True, subject=f"Instructions of {tenant_id!r}") as conn:
            await self._lock_tenant(conn, tenant_id, live=True)
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
        return _record(Instructions, row)

    async def current_instructions(self, tenant_id: str) -> Instructions | None:
        """The newest version, or ``None`` when the tenant never set any (all defaults)."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(instructions)
                    .where(instructions.c.tenant_id == tenant_id)
                    .order_by(instructions.c.version.desc())
                    .limit(1)
                )
            ).one_or_none()
        return None if row is None else _record(Instructions, row)

    async def instructions_history(self, tenant_id: str) -> list[Instructions]:
        """Every version, oldest first."""
        async with self._transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(instructions)
                    .where(instructions.c.tenant_id == tenant_id)
                    .order_by(instructions.c.version)
                )
            ).all()
        return [_record(Instructions, row) for row in rows]

    async def get_instructions(self, tenant_id: str, version: int) -> Instructions:
        """One version; ``NotFound`` if the tenant has no such version."""
        return await self._one(
            sa.select(instructions).where(
                instructions.c.tenant_id == tenant_id, instructions.c.version == version
            ),
            Instructions,
            f"Instructions version {version} of {tenant_id!r} not found.",
        )

    # --- the key table --------------------------------------------------------------------

    async def put_object_key(self, row: ObjectKeyRow) -> None:
        """Store the wrapped DEK of a new object; ``Conflict`` if the object has one."""
        async with self._transaction(write=True, subject=f"The key of {row.object_id!r}") as conn:
            await conn.execute(sa.insert(object_keys).values(**_key_values(row)))

    async def get_object_key(self, object_id: str, tenant_id: str) -> ObjectKeyRow:
        """The key row of the tenant's object; ``KeyUnavailable`` if there is none (shredded,
        never stored, or another tenant's object: the three are not told apart)."""
        return await self._one(
            sa.select(object_keys).where(
                object_keys.c.object_id == object_id, object_keys.c.tenant_id == tenant_id
            ),
            ObjectKeyRow,
            f"The data key of object {object_id!r} was shredded or never existed.",
            error=KeyUnavailable,
        )

    async def delete_object_key(self, object_id: str) -> bool:
        """Shred: delete the object's key row (one row, nothing cascades). ``False`` if there
        was none, so shredding twice is harmless."""
        async with self._transaction(write=True) as conn:
            result = await conn.execute(
                sa.delete(object_keys).where(object_keys.c.object_id == object_id)
            )
        await self._forget_deleted_rows()
        return result.rowcount == 1

    async def delete_tenant_object_keys(self, tenant_id: str) -> int:
        """Shred every object of the tenant; returns how many keys were deleted."""
        async with self._transaction(write=True) as conn:
            result = await conn.execute(
                sa.delete(object_keys).where(object_keys.c.tenant_id == tenant_id)
            )
        await self._forget_deleted_rows()
        return result.rowcount

    async def _forget_deleted_rows(self) -> None:
        """On SQLite, move the write-ahead log into the database and truncate it, so that
        the page images holding a shredded wrapped DEK leave the WAL file (secure_delete
        already zeroes it in the database file). PostgreSQL keeps dead tuples until VACUUM;
        there the KEK, not the row's absence, protects such leftovers and backups."""
        if self.backend != "sqlite":
            return
        try:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                if driver is not None:
                    async with driver.execute("PRAGMA wal_checkpoint(TRUNCATE)"):
                        pass
        except (DBAPIError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def list_object_keys(
        self, tenant_id: str, *, page_size: int = 500
    ) -> AsyncIterator[ObjectKeyRow]:
        """Every key row of the tenant by object id, read a page per transaction (no
        connection is held while the caller works on a page)."""
        after: str | None = None
        while True:
            stmt = sa.select(object_keys).where(object_keys.c.tenant_id == tenant_id)
            if after is not None:
                stmt = stmt.where(object_keys.c.object_id > after)
            async with self._transaction() as conn:
                rows = (
                    await conn.execute(stmt.order_by(object_keys.c.object_id).limit(page_size))
                ).all()
            for row in rows:
                yield _record(ObjectKeyRow, row)
            if len(rows) < page_size:
                return
            after = rows[-1].object_id

    async def rewrap_object_keys(
        self,
        tenant_id: str,
        rewrap: Rewrap,
        now: datetime,
        *,
        target_version: int,
        batch_size: int = 100,
    ) -> int:
        """Re-wrap every DEK of the tenant whose KEK version is older than ``target_version``.

        Rows go in batches: a batch is read, ``rewrap`` is awaited for each row with no
        transaction open (it may call a KMS), then the batch is written in one transaction.
        A row is written only if it still has the KEK version it was read with, so a
        concurrent rewrap or shred is never overwritten, and a crash leaves finished batches
        done and the rest untouched: running this again completes the job. Returns how many
        rows this call re-wrapped.
        """
        done = 0
        after: str | None = None
        while True:
            stmt = sa.select(object_keys).where(
                object_keys.c.tenant_id == tenant_id, object_keys.c.kek_version < target_version
            )
            if after is not None:
                stmt = stmt.where(object_keys.c.object_id > after)
            async with self._transaction() as conn:
                rows = [
                    _record(ObjectKeyRow, row)
                    for row in (
                        await conn.execute(stmt.order_by(object_keys.c.object_id).limit(batch_size))
                    ).all()
                ]
            if not rows:
                return done
            rewrapped = []
            for row in rows:
                kek_id, kek_version, wrapped_dek = await rewrap(row)
                if kek_version != target_version:
                    raise ValueError(
                        f"rewrap gave KEK version {kek_version} for {row.object_id!r}, "
                        f"expected {target_version}"
                    )
                rewrapped.append((row, kek_id, wrapped_dek))
            async with self._transaction(write=True) as conn:
                for row, kek_id, wrapped_dek in rewrapped:
                    result = await conn.execute(
                        sa.update(object_keys)
                        .where(
                            object_keys.c.object_id == row.object_id,
                            object_keys.c.tenant_id == tenant_id,
                            object_keys.c.kek_version == row.kek_version,
                        )
                        .values(
                            kek_id=kek_id,
                            kek_version=target_version,
                            wrapped_dek=wrapped_dek,
                            rewrapped_at=now,
                        )
                    )
                    done += result.rowcount
            after = rows[-1].object_id

    # --- objects --------------------------------------------------------------------------

    async def add_object(
        self,
        *,
        object_id: str,
        tenant_id: str,
        kind: str,
        data_class: DataClass,
        store_key: str,
        now: datetime,
        recording_id: str | None = None,
        track: str | None = None,
        key: ObjectKeyRow | None = None,
    ) -> StoredObject:
        """Register an object whose upload is starting (state ``writing``), together with
        its key row when ``key`` is given, in one transaction: the store never holds bytes
        that the catalog does not know, nor an object without its key."""
        if data_class not in DATA_CLASSES:
            raise ValueError(f"unknown data class {data_class!r}")
        if key is not None and (key.object_id, key.tenant_id) != (object_id, tenant_id):
            raise ValueError("the key row must belong to the object and its tenant")
        async with self._transaction(write=True, subject=f"Object {object_id!r}") as conn:
            # Nothing new for a deleted tenant or recording: an AI worker that was busy
            # while either was erased must not leave results behind.
            await self._lock_tenant(conn, tenant_id, live=True)
            if recording_id is not None:
                recording = await self._require_recording(conn, tenant_id, recording_id)
                if recording.status == "deleted":
                    raise Gone(f"Recording {recording_id!r} was deleted.", code="recording_deleted")
            row = (
                await conn.execute(
                    sa.insert(objects)
                    .values(
                        id=object_id,
                        tenant_id=tenant_id,
                        recording_id=recording_id,
                        kind=kind,
                        track=track,
                        data_class=data_class,
                        store_key=store_key,
                        size=None,
                        state="writing",
                        created_at=now,
                        committed_at=None,
                        deleted_at=None,
                    )
                    .returning(*objects.c)
                )
            ).one()
            if key is not None:
                await conn.execute(sa.insert(object_keys).values(**_key_values(key)))
        return _record(StoredObject, row)

    async def mark_object_committed(self, object_id: str, size: int, now: datetime) -> StoredObject:
        """Record that the upload was committed; repeating it with the same size is a no-op,
        committing a deleted object is a ``Conflict``."""
        async with self._transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(objects)
                    .where(objects.c.id == object_id, objects.c.state == "writing")
                    .values(state="committed", size=size, committed_at=now)
                    .returning(*objects.c)
                )
            ).one_or_none()
            if row is None:
                row = (
                    await conn.execute(sa.select(objects).where(objects.c.id == object_id))
                ).one_or_none()
                if row is None:
                    raise NotFound(f"Object {object_id!r} not found.")
                if row.state != "committed" or row.size != size:
                    raise Conflict(f"Object {object_id!r} is {row.state}; it cannot be committed.")
        return _record(StoredObject, row)

    async def get_object(self, object_id: str, tenant_id: str) -> StoredObject:
        """The tenant's object; ``NotFound`` if unknown or another tenant's."""
        return await self._one(
            sa.select(objects).where(objects.c.id == object_id, objects.c.tenant_id == tenant_id),
            StoredObject,
            f"Object {object_id!r} not found.",
        )

    async def list_objects(
        self,
        tenant_id: str,
        *,
        recording_id: str | None = None,
        state: ObjectState | None = None,
    ) -> list[StoredObject]:
        """The tenant's objects (of one recording, in one state), oldest first."""
        stmt = sa.select(objects).where(objects.c.tenant_id == tenant_id)
        if recording_id is not None:
            stmt = stmt.where(objects.c.recording_id == recording_id)
        if state is not None:
            stmt = stmt.where(objects.c.state == state)
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt.order_by(objects.c.created_at, objects.c.id))).all()
        return [_record(StoredObject, row) for row in rows]

    async def recording_tracks(
        self, tenant_id: str, recording_ids: Sequence[str], *, kind: str
    ) -> dict[str, list[str]]:
        """The track names of each recording's objects of ``kind`` (not deleted), sorted;
        one query for a whole page of recordings."""
        if not recording_ids:
            return {}
        stmt = (
            sa.select(objects.c.recording_id, objects.c.track)
            .where(
                objects.c.tenant_id == tenant_id,
                objects.c.recording_id.in_(list(recording_ids)),
                objects.c.kind == kind,
                objects.c.state != "deleted",
                objects.c.track.is_not(None),
            )
            .distinct()
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        tracks: dict[str, list[str]] = {recording_id: [] for recording_id in recording_ids}
        for recording_id, track in rows:
            tracks[recording_id].append(track)
        return {recording_id: sorted(names) for recording_id, names in tracks.items()}

    async def mark_object_deleted(self, object_id: str, now: datetime) -> StoredObject:
        """Record that the object was deleted from the store; repeating it keeps the first
        time."""
        return await self._one(
            sa.update(objects)
            .where(objects.c.id == object_id)
            .values(
                state="deleted",
                deleted_at=sa.func.coalesce(objects.c.deleted_at, _at(now)),
            )
            .returning(*objects.c),
            StoredObject,
            f"Object {object_id!r} not found.",
            write=True,
        )

    # --- calls and recordings -------------------------------------------------------------

    async def announce_call(
        self,
        *,
        id: str,
        tenant_id: str,
        from_number: str,
        to_number: str,
        direction: str,
        consent: str,
        transport: str,
        codec: str,
        sample_rate: int,
        instructions_version: int | None,
        decision: dict[str, Any],
        refusal_code: str | None,
        started_at: datetime,
        recording_id: str | None = None,
    ) -> tuple[Call, Recording | None]:
        """Store the call record and, for an accepted call (``recording_id`` given), its
        recording (status ``recording``) in one transaction: a recording never exists
        without its call record, nor an accepted call without its recording."""
        if recording_id is not None and (refusal_code is not None or instructions_version is None):
            raise ValueError("only an accepted call under stored instructions has a recording")
        async with self._transaction(write=True, subject=f"Call {id!r}") as conn:
            await self._lock_tenant(conn, tenant_id, live=True)
            call_row = (
                await conn.execute(
                    sa.insert(calls)
                    .values(
                        tenant_id=tenant_id,
                        id=id,
                        from_number=from_number,
                        to_number=to_number,
                        direction=direction,
                        consent=consent,
                        transport=transport,
                        codec=codec,
                        sample_rate=sample_rate,
                        instructions_version=instructions_version,
                        decision=decision,
                        refusal_code=refusal_code,
                        started_at=started_at,
                        ended_at=started_at if refusal_code is not None else None,
                        paused=False,
                    )
                    .returning(*calls.c)
                )
            ).one()
            recording: Recording | None = None
            if recording_id is not None:
                assert instructions_version is not None  # noqa: S101 - checked above
                recording_row = (
                    await conn.execute(
                        sa.insert(recordings)
                        .values(
                            **_new_recording(
                                recording_id, tenant_id, id, instructions_version, started_at
                            )
                        )
                        .returning(*recordings.c)
                    )
                ).one()
                recording = _record(Recording, recording_row)
        return _record(Call, call_row), recording

    async def find_calls(self, call_id: str, *, transport: str) -> list[Call]:
        """Every call record with this id and transport, of any live tenant (accepted,
        refused or ended alike).

        For transports that name a call by its id alone (AudioSocket): the caller must
        refuse an id that more than one tenant uses rather than guess."""
        stmt = (
            sa.select(*calls.c)
            .select_from(calls.join(tenants, calls.c.tenant_id == tenants.c.id))
            .where(
                calls.c.id == call_id,
                calls.c.transport == transport,
                tenants.c.deleted_at.is_(None),
            )
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(Call, row) for row in rows]

    async def create_call(
        self,
        *,
        id: str,
        tenant_id: str,
        from_number: str,
        to_number: str,
        direction: str,
        consent: str,
        transport: str,
        codec: str,
        sample_rate: int,
        instructions_version: int | None,
        decision: dict[str, Any],
        refusal_code: str | None,
        started_at: datetime,
    ) -> Call:
        """Store the call record of an announced call (accepted or refused)."""
        return await self._insert(
            sa.insert(calls).values(
                tenant_id=tenant_id,
                id=id,
                from_number=from_number,
                to_number=to_number,
                direction=direction,
                consent=consent,
                transport=transport,
                codec=codec,
                sample_rate=sample_rate,
                instructions_version=instructions_version,
                decision=decision,
                refusal_code=refusal_code,
                started_at=started_at,
                ended_at=None,
                paused=False,
            ),
            Call,
            subject=f"Call {id!r}",
        )

    async def get_call(self, tenant_id: str, call_id: str) -> Call:
        """The tenant's call; ``NotFound`` if unknown or another tenant's."""
        return await self._one(
            sa.select(calls).where(calls.c.tenant_id == tenant_id, calls.c.id == call_id),
            Call,
            f"Call {call_id!r} not found.",
        )

    async def end_call(self, tenant_id: str, call_id: str, now: datetime) -> Call:
        """Record the end of the call; ending it again keeps the first end time."""
        return await self._one(
            sa.update(calls)
            .where(calls.c.tenant_id == tenant_id, calls.c.id == call_id)
            .values(ended_at=sa.func.coalesce(calls.c.ended_at, _at(now)))
            .returning(*calls.c),
            Call,
            f"Call {call_id!r} not found.",
            write=True,
        )

    async def set_call_paused(self, tenant_id: str, call_id: str, paused: bool) -> Call:
        """Remember that the PBX paused (or resumed) the call."""
        return await self._one(
            sa.update(calls)
            .where(calls.c.tenant_id == tenant_id, calls.c.id == call_id)
            .values(paused=paused)
            .returning(*calls.c),
            Call,
            f"Call {call_id!r} not found.",
            write=True,
        )

    async def live_recordings(self) -> list[Recording]:
        """Every recording still in progress (status ``recording``) of a live tenant."""
        stmt = (
            sa.select(*recordings.c)
            .select_from(recordings.join(tenants, recordings.c.tenant_id == tenants.c.id))
            .where(recordings.c.status == "recording", tenants.c.deleted_at.is_(None))
            .order_by(recordings.c.created_at)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_record(Recording, row) for row in rows]

    async def create_recording(
        self,
        *,
        id: str,
        tenant_id: str,
        call_id: str,
        instructions_version: int,
        now: datetime,
    ) -> Recording:
        """Start a recording of the tenant's call (status ``recording``)."""
        return await self._insert(
            sa.insert(recordings).values(
                **_new_recording(id, tenant_id, call_id, instructions_version, now)
            ),
            Recording,
            subject=f"Recording {id!r}",
        )

    async def get_recording(self, tenant_id: str, recording_id: str) -> Recording:
        """The tenant's recording; ``NotFound`` if unknown or another tenant's."""
        async with self._transaction() as conn:
            row = await self._require_recording(conn, tenant_id, recording_id)
        return _record(Recording, row)

    async def _require_recording(
        self, conn: AsyncConnection, tenant_id: str, recording_id: str
    ) -> AnyRow:
        row = (
            await conn.execute(
                sa.select(recordings).where(
                    recordings.c.id == recording_id, recordings.c.tenant_id == tenant_id
                )
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"Recording {recording_id!r} not found.")
        return row

    async def recording_of_call(self, tenant_id: str, call_id: str) -> Recording | None:
        """The recording of the tenant's call, ``None`` if it has none (refused call)."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(recordings)
                    .where(recordings.c.tenant_id == tenant_id, recordings.c.call_id == call_id)
                    .order_by(recordings.c.created_at)
                    .limit(1)
                )
            ).one_or_none()
        return None if row is None else _record(Recording, row)

    async def get_recording_entry(
        self, tenant_id: str, recording_id: str
    ) -> tuple[Recording, Call]:
        """The tenant's recording with its call record; ``NotFound`` if unknown or another
        tenant's."""
        entries = await self._recording_entries(
            sa.and_(recordings.c.tenant_id == tenant_id, recordings.c.id == recording_id), limit=1
        )
        if not entries:
            raise NotFound(f"Recording {recording_id!r} not found.")
        return entries[0]

    async def list_recordings(
        self,
        tenant_id: str,
        *,
        number: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[Recording, Call]]:
        """The tenant's recordings with their call records, newest first: where ``number``
        is either party, started in ``[since, until)``, and strictly after the keyset
        cursor ``after`` = (created_at, id) of the last one of the previous page."""
        where = [recordings.c.tenant_id == tenant_id]
        if number is not None:
            where.append(sa.or_(calls.c.from_number == number, calls.c.to_number == number))
        if since is not None:
            where.append(calls.c.started_at >= since)
        if until is not None:
            where.append(calls.c.started_at < until)
        if after is not None:
            created_at, recording_id = after
            where.append(
                sa.or_(
                    recordings.c.created_at < created_at,
                    sa.and_(recordings.c.created_at == created_at, recordings.c.id < recording_id),
                )
            )
        return await self._recording_entries(sa.and_(*where), limit=limit)

    async def _recording_entries(
        self, where: sa.ColumnElement[bool], *, limit: int
    ) -> list[tuple[Recording, Call]]:
        stmt = (
            sa.select(recordings, *_CALL_COLUMNS)
            .select_from(
                recordings.join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(where)
            .order_by(recordings.c.created_at.desc(), recordings.c.id.desc())
            .limit(limit)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [(_record(Recording, row), _record_prefixed(Call, row, "call__")) for row in rows]

    async def finish_recording(
        self,
        tenant_id: str,
        recording_id: str,
        *,
        samples: int,
        now: datetime,
        job_id: str | None = None,
        job_kind: str = "analyze",
    ) -> Recording:
        """Finalize a live recording in one transaction: its timeline length, its end, the
        end of its call, and, when ``job_id`` is given, its AI job (status ``processing``;
        else ``recorded``). Finishing it again is a no-op that returns it unchanged, so a
        shutdown racing a hangup cannot queue a second job."""
        status: RecordingStatus = "processing" if job_id is not None else "recorded"
        async with self._transaction(write=True, subject=f"Recording {recording_id!r}") as conn:
            current = await self._require_recording(conn, tenant_id, recording_id)
            if current.status != "recording":
                return _record(Recording, current)
            row = (
                await conn.execute(
                    sa.update(recordings)
                    .where(recordings.c.id == recording_id)
                    .values(status=status, samples=samples, ended_at=now)
                    .returning(*recordings.c)
                )
            ).one()
            await conn.execute(
                sa.update(calls)
                .where(calls.c.tenant_id == tenant_id, calls.c.id == current.call_id)
                .values(ended_at=sa.func.coalesce(calls.c.ended_at, _at(now)))
            )
            if job_id is not None:
                await conn.execute(
                    sa.insert(jobs).values(
                        id=job_id,
                        tenant_id=tenant_id,
                        recording_id=recording_id,
                        kind=job_kind,
                        status="queued",
                        attempts=0,
                        max_attempts=3,
                        run_after=now,
                        lease_owner=None,
                        lease_until=None,
                        last_error=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
        return _record(Recording, row)

    async def update_recording_status(
        self,
        tenant_id: str,
        recording_id: str,
        status: RecordingStatus,
        now: datetime,
        *,
        ended_at: datetime | None = None,
        audio_purged: bool | None = None,
        failure_reason: str | None = None,
        delete_reason: str | None = None,
    ) -> Recording:
        """Move a recording along its lifecycle (``RECORDING_TRANSITIONS``); a move that the
        lifecycle forbids is a ``Conflict``. Leaving ``recording`` sets ``ended_at`` (to
        ``ended_at`` or ``now``) unless already set; ``deleted`` sets ``deleted_at``."""
        if status not in RECORDING_STATUSES:
            raise ValueError(f"unknown recording status {status!r}")
        sources = [s for s, targets in RECORDING_TRANSITIONS.items() if status in targets]
        values: dict[str, Any] = {"status": status}
        if status != "recording":
            values["ended_at"] = sa.func.coalesce(recordings.c.ended_at, _at(ended_at or now))
        if audio_purged is not None:
            values["audio_purged"] = audio_purged
        if failure_reason is not None:
            values["failure_reason"] = failure_reason[:_MAX_ERROR_CHARS]
        if status == "deleted":
            values["deleted_at"] = sa.func.coalesce(recordings.c.deleted_at, _at(now))
            if delete_reason is not None:
                values["delete_reason"] = delete_reason
        async with self._transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(recordings)
                    .where(
                        recordings.c.id == recording_id,
                        recordings.c.tenant_id == tenant_id,
                        recordings.c.status.in_([*sources, status]),
                    )
                    .values(**values)
                    .returning(*recordings.c)
                )
            ).one_or_none()
            if row is None:
                current = await self._require_recording(conn, tenant_id, recording_id)
                raise Conflict(
                    f"Recording {recording_id!r} is {current.status}; it cannot become {status}."
                )
        return _record(Recording, row)

    # --- legal holds ----------------------------------------------------------------------

    async def create_hold(
        self,
        *,
        id: str,
        tenant_id: str,
        reason: str,
        created_by: str,
        now: datetime,
        number: str | None = None,
        call_ids: Sequence[str] | None = None,
        audit: AuditEntry | None = None,
    ) -> LegalHold:
        """Place a hold on a number or on calls of the tenant (``NotFound`` naming the first
        call id it does not have), with its ``audit`` event in the same transaction."""
        if (number is None) == (call_ids is None):
            raise ValueError("a hold names either a number or call ids")
        async with self._transaction(write=True, subject=f"Hold {id!r}") as conn:
            await self._lock_tenant(conn, tenant_id, live=True)
            if call_ids is not None:
                known = set(
                    (
                        await conn.execute(
                            sa.select(calls.c.id).where(
                                calls.c.tenant_id == tenant_id, calls.c.id.in_(list(call_ids))
                            )
                        )
                    ).scalars()
                )
                missing = [call_id for call_id in call_ids if call_id not in known]
                if missing:
                    raise NotFound(f"Call {missing[0]!r} not found.")
            row = (
                await conn.execute(
                    sa.insert(legal_holds)
                    .values(
                        id=id,
                        tenant_id=tenant_id,
                        number=number,
                        call_ids=None if call_ids is None else list(call_ids),
                        reason=reason,
                        created_at=now,
                        created_by=created_by,
                        released_at=None,
                        released_by=None,
                    )
                    .returning(*legal_holds.c)
                )
            ).one()
            if audit is not None:
                await self._chain(conn, tenant_id, [audit], now)
        return _hold(row)

    async def list_holds(self, tenant_id: str, *, active_only: bool = False) -> list[LegalHold]:
        """The tenant's holds, oldest first; only those not released when asked."""
        stmt = sa.select(legal_holds).where(legal_holds.c.tenant_id == tenant_id)
        if active_only:
            stmt = stmt.where(legal_holds.c.released_at.is_(None))
        async with self._transaction() as conn:
            rows = (
                await conn.execute(stmt.order_by(legal_holds.c.created_at, legal_holds.c.id))
            ).all()
        return [_hold(row) for row in rows]

    async def get_hold(self, tenant_id: str, hold_id: str) -> LegalHold:
        """The tenant's hold; ``NotFound`` if unknown or another tenant's."""
        async with self._transaction() as conn:
            row = (
                await conn.execute(
                    sa.select(legal_holds).where(
                        legal_holds.c.id == hold_id, legal_holds.c.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"Legal hold {hold_id!r} not found.")
        return _hold(row)

    async def release_hold(
        self,
        tenant_id: str,
        hold_id: str,
        *,
        released_by: str,
        now: datetime,
        audit: AuditEntry | None = None,
    ) -> LegalHold:
        """Release a hold (``Conflict`` if it was released already), with its ``audit``
        event in the same transaction."""
        async with self._transaction(write=True, subject=f"Hold {hold_id!r}") as conn:
            row = (
                await conn.execute(
                    sa.update(legal_holds)
                    .where(
                        legal_holds.c.id == hold_id,
                        legal_holds.c.tenant_id == tenant_id,
                        legal_holds.c.released_at.is_(None),
                    )
                    .values(released_at=now, released_by=released_by)
                    .returning(*legal_holds.c)
                )
            ).one_or_none()
            if row is None:
                exists = (
                    await conn.execute(
                        sa.select(legal_holds.c.id).where(
                            legal_holds.c.id == hold_id, legal_holds.c.tenant_id == tenant_id
                        )
                    )
                ).one_or_none()
                if exists is None:
                    raise NotFound(f"Legal hold {hold_id!r} not found.")
                raise Conflict(
                    f"Legal hold {hold_id!r} was released already.", code="hold_released"
                )
            if audit is not None:
                await self._chain(conn, tenant_id, [audit], now)
        return _hold(row)

    # --- retention and erasure ------------------------------------------------------------
    # Deleting an object takes four steps, each safe to repeat: shred its key row, delete its
    # bytes, mark its row deleted together with the audit receipt, and, once a recording has
    # nothing left, mark the recording deleted with its own receipt. A crash between any two
    # leaves the object selectable by the same query, so the next sweep finishes the work.

    async def _page(
        self,
        stmt: sa.Select[Any],
        key: sa.Column[str],
        record_type: type[R],
        *,
        after: str | None,
        limit: int,
    ) -> list[R]:
        """One page of ``stmt`` in ``key`` order, strictly after ``after`` (a keyset)."""
        if after is not None:
            stmt = stmt.where(key > after)
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt.order_by(key).limit(limit))).all()
        return [_record(record_type, row) for row in rows]

    async def due_objects(
        self,
        tenant_id: str,
        *,
        cutoffs: dict[DataClass, datetime] | None,
        after: str | None = None,
        limit: int = 1000,
        recording_ids: Sequence[str] | None = None,
    ) -> list[DueObject]:
        """Objects of the tenant not yet deleted, by id after ``after``: those of recordings
        whose erasure was requested, and committed ones of calls that ended at or before
        their data class's cutoff. ``cutoffs=None``: every object (a deleted tenant).
        ``recording_ids``: only those recordings' objects.

        The cutoffs pre-select; the caller applies the exact window and the holds."""
        stmt = (
            sa.select(
                objects.c.id,
                objects.c.tenant_id,
                objects.c.store_key,
                objects.c.kind,
                objects.c.data_class,
                objects.c.size,
                objects.c.state,
                objects.c.recording_id,
                recordings.c.status.label("recording_status"),
                recordings.c.delete_reason,
                recordings.c.call_id,
                calls.c.from_number,
                calls.c.to_number,
                calls.c.ended_at,
            )
            .select_from(
                objects.join(recordings, recordings.c.id == objects.c.recording_id).join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(objects.c.tenant_id == tenant_id, objects.c.state != "deleted")
        )
        if cutoffs is not None:
            due = [recordings.c.status == "deleted"]
            due.extend(
                sa.and_(
                    objects.c.state == "committed",
                    objects.c.data_class == data_class,
                    calls.c.ended_at <= cutoff,
                )
                for data_class, cutoff in cutoffs.items()
            )
            stmt = stmt.where(sa.or_(*due))
        if recording_ids is not None:
            stmt = stmt.where(objects.c.recording_id.in_(list(recording_ids)))
        return await self._page(stmt, objects.c.id, DueObject, after=after, limit=limit)

    async def shred_object_keys(
        self, tenant_id: str, candidates: Sequence[DueObject], *, check_holds: bool = True
    ) -> list[DueObject]:
        """Shred many objects at once: delete their key rows. With ``check_holds`` the
        tenant's active holds are read in the same transaction, under the lock that placing
        a hold takes, and the objects they cover are left alone, so that a hold placed while
        a sweep or an erasure runs is never overtaken. Returns the candidates not held (whose
        keys are gone now, or were already)."""
        async with self._transaction(write=True) as conn:
            kept = list(candidates)
            if check_holds:
                await self._lock_tenant(conn, tenant_id, live=False)
                holds = await self._active_holds(conn, tenant_id)
                kept = [
                    o
                    for o in kept
                    if not any(h.covers(o.call_id, o.from_number, o.to_number) for h in holds)
                ]
            for start in range(0, len(kept), _IN_BATCH):
                chunk = [o.id for o in kept[start : start + _IN_BATCH]]
                await conn.execute(
                    sa.delete(object_keys).where(
                        object_keys.c.tenant_id == tenant_id, object_keys.c.object_id.in_(chunk)
                    )
                )
        await self._forget_deleted_rows()
        return kept

    async def _active_holds(self, conn: AsyncConnection, tenant_id: str) -> list[LegalHold]:
        rows = (
            await conn.execute(
                sa.select(legal_holds)
                .where(legal_holds.c.tenant_id == tenant_id, legal_holds.c.released_at.is_(None))
                .order_by(legal_holds.c.created_at, legal_holds.c.id)
            )
        ).all()
        return [_hold(row) for row in rows]

    async def mark_objects_deleted(
        self,
        tenant_id: str,
        object_ids: Sequence[str],
        now: datetime,
        *,
        receipts: Callable[[list[str]], Sequence[AuditEntry]],
    ) -> list[str]:
        """Mark the tenant's objects deleted and append ``receipts(marked)`` to its audit log
        in the same transaction, one transaction per ``_WRITE_CHUNK`` objects (short, so
        that ingest's writes are not held up); ``marked`` are the ids a transaction moved
        (not ones already deleted, so two sweeps racing write one receipt). Returns all the
        ids moved."""
        marked: list[str] = []
        for start in range(0, len(object_ids), _WRITE_CHUNK):
            chunk = list(object_ids[start : start + _WRITE_CHUNK])
            async with self._transaction(write=True) as conn:
                result = await conn.execute(
                    sa.update(objects)
                    .where(
                        objects.c.tenant_id == tenant_id,
                        objects.c.id.in_(chunk),
                        objects.c.state != "deleted",
                    )
                    .values(state="deleted", deleted_at=now)
                    .returning(objects.c.id)
                )
                moved = list(result.scalars())
                await self._chain(conn, tenant_id, receipts(moved), now)
            marked.extend(moved)
        return marked

    async def request_deletion(
        self,
        tenant_id: str,
        recording_ids: Sequence[str],
        reason: str,
        now: datetime,
        *,
        audit: Sequence[AuditEntry] = (),
    ) -> list[Recording]:
        """Record that the recordings are to be erased (status ``deleted``, ``delete_reason``
        set, ``deleted_at`` still empty until their last object is gone), with ``audit``, in
        one transaction. Readers see them deleted at once; a sweep finishes an erasure that
        a crash interrupted. ``HeldByLegalHold`` if an active hold covers one (checked under
        the lock that placing a hold takes); ``Conflict`` if one is still being recorded."""
        async with self._transaction(write=True) as conn:
            await self._lock_tenant(conn, tenant_id, live=True)
            holds = await self._active_holds(conn, tenant_id)
            rows = []
            for recording_id in recording_ids:
                current = await self._require_recording(conn, tenant_id, recording_id)
                call = (
                    await conn.execute(
                        sa.select(calls.c.from_number, calls.c.to_number).where(
                            calls.c.tenant_id == tenant_id, calls.c.id == current.call_id
                        )
                    )
                ).one()
                for hold in holds:
                    if hold.covers(current.call_id, call.from_number, call.to_number):
                        raise HeldByLegalHold(
                            hold.id,
                            f"Legal hold {hold.id!r} covers call {current.call_id!r}; "
                            "release it first.",
                        )
                if current.status == "recording":
                    raise Conflict(
                        f"Recording {recording_id!r} is still being recorded; end the call first.",
                        code="recording_in_progress",
                    )
                if current.status == "deleted":
                    rows.append(current)
                    continue
                rows.append(
                    (
                        await conn.execute(
                            sa.update(recordings)
                            .where(recordings.c.id == recording_id)
                            .values(status="deleted", delete_reason=reason)
                            .returning(*recordings.c)
                        )
                    ).one()
                )
            await self._chain(conn, tenant_id, audit, now)
        return [_record(Recording, row) for row in rows]

    async def due_recordings(
        self,
        tenant_id: str,
        *,
        cutoff: datetime | None,
        after: str | None = None,
        limit: int = 1000,
        recording_ids: Sequence[str] | None = None,
    ) -> list[DueRecording]:
        """Recordings with no object left to delete that are not finally deleted, by id
        after ``after``: those whose erasure was requested, and those of calls that ended at
        or before ``cutoff`` (``None``: all, for a deleted tenant); ``recording_ids``: only
        those."""
        live_objects = _has_live_objects()
        stmt = (
            sa.select(
                recordings.c.id,
                recordings.c.tenant_id,
                recordings.c.status,
                recordings.c.delete_reason,
                recordings.c.deleted_at,
                recordings.c.call_id,
                calls.c.from_number,
                calls.c.to_number,
                calls.c.ended_at,
            )
            .select_from(
                recordings.join(
                    calls,
                    sa.and_(
                        calls.c.tenant_id == recordings.c.tenant_id,
                        calls.c.id == recordings.c.call_id,
                    ),
                )
            )
            .where(
                recordings.c.tenant_id == tenant_id,
                recordings.c.deleted_at.is_(None),
                recordings.c.status != "recording",
                ~live_objects,
            )
        )
        if cutoff is not None:
            stmt = stmt.where(sa.or_(recordings.c.status == "deleted", calls.c.ended_at <= cutoff))
        if recording_ids is not None:
            stmt = stmt.where(recordings.c.id.in_(list(recording_ids)))
        return await self._page(stmt, recordings.c.id, DueRecording, after=after, limit=limit)

    async def complete_deletions(
        self,
        tenant_id: str,
        reasons: dict[str, str],
        now: datetime,
        *,
        receipts: Callable[[list[Recording]], Sequence[AuditEntry]],
    ) -> list[Recording]:
        """Mark recordings finally deleted (``reasons``: recording id -> reason, kept if an
        erasure already named one) when they still have no object left, and append
        ``receipts(completed)`` in the same transaction (one per ``_WRITE_CHUNK``
        recordings). Returns the completed ones."""
        live_objects = _has_live_objects()
        by_reason: dict[str, list[str]] = {}
        for recording_id, reason in reasons.items():
            by_reason.setdefault(reason, []).append(recording_id)
        completed: list[Recording] = []
        for reason, ids in by_reason.items():
            for start in range(0, len(ids), _WRITE_CHUNK):
                async with self._transaction(write=True) as conn:
                    result = await conn.execute(
                        sa.update(recordings)
                        .where(
                            recordings.c.id.in_(ids[start : start + _WRITE_CHUNK]),
                            recordings.c.tenant_id == tenant_id,
                            recordings.c.deleted_at.is_(None),
                            recordings.c.status != "recording",
                            ~live_objects,
                        )
                        .values(
                            status="deleted",
                            deleted_at=now,
                            delete_reason=sa.func.coalesce(recordings.c.delete_reason, reason),
                        )
                        .returning(*recordings.c)
                    )
                    moved = sorted((_record(Recording, row) for row in result), key=lambda r: r.id)
                    await self._chain(conn, tenant_id, receipts(moved), now)
                completed.extend(moved)
        return completed

    async def settle_deleted_tenant(self, tenant_id: str, now: datetime) -> None:
        """For a deleted tenant: mark recordings still ``recording`` (a crash ended its
        calls' sessions before they were finalized) for deletion and end its calls, so that
        the sweep removes them like the rest. ``Conflict`` for a live tenant."""
        async with self._transaction(write=True) as conn:
            row = await self._lock_tenant(conn, tenant_id, live=False)
            if row.deleted_at is None:
                raise Conflict(f"Tenant {tenant_id!r} is not deleted.")
            await conn.execute(
                sa.update(recordings)
                .where(recordings.c.tenant_id == tenant_id, recordings.c.status == "recording")
                .values(status="deleted", delete_reason="tenant")
            )
            await conn.execute(
                sa.update(calls)
                .where(calls.c.tenant_id == tenant_id, calls.c.ended_at.is_(None))
                .values(ended_at=now)
            )

    async def forget_deleted_tenant(self, tenant_id: str) -> bool:
        """For a deleted tenant whose calls are all gone: delete what is left that could
        hold personal data (its holds, whose numbers are phone numbers; its instruction
        versions, with their excluded numbers and webhook secret; its jobs; rows of deleted
        objects). The tenant row, its token hashes and its audit log stay. Returns whether
        it was done (``False`` while calls remain)."""
        async with self._transaction(write=True) as conn:
            row = await self._lock_tenant(conn, tenant_id, live=False)
            if row.deleted_at is None:
                raise Conflict(f"Tenant {tenant_id!r} is not deleted.")
            remaining = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(calls)
                    .where(calls.c.tenant_id == tenant_id)
                )
            ).scalar_one()
            if remaining:
                return False
            await conn.execute(sa.delete(jobs).where(jobs.c.tenant_id == tenant_id))
            await conn.execute(sa.delete(legal_holds).where(legal_holds.c.tenant_id == tenant_id))
            await conn.execute(
                sa.delete(objects).where(
                    objects.c.tenant_id == tenant_id, objects.c.state == "deleted"
                )
            )
            await conn.execute(sa.delete(instructions).where(instructions.c.tenant_id == tenant_id))
        return True

    async def due_calls(
        self,
        tenant_id: str,
        *,
        cutoff: datetime | None,
        after: str | None = None,
        limit: int = 1000,
        call_ids: Sequence[str] | None = None,
    ) -> list[DueCall]:
        """Call records that ended at or before ``cutoff`` (``None``: every ended one, for a
        deleted tenant) with no recording, or only a finally deleted one, by id after
        ``after``; ``call_ids``: only those."""
        pending = (
            sa.select(recordings.c.id)
            .where(
                recordings.c.tenant_id == calls.c.tenant_id,
                recordings.c.call_id == calls.c.id,
                recordings.c.deleted_at.is_(None),
            )
            .exists()
        )
        recording_id = (
            sa.select(recordings.c.id)
            .where(recordings.c.tenant_id == calls.c.tenant_id, recordings.c.call_id == calls.c.id)
            .limit(1)
            .scalar_subquery()
        )
        stmt = sa.select(
            calls.c.tenant_id,
            calls.c.id,
            calls.c.from_number,
            calls.c.to_number,
            calls.c.ended_at,
            recording_id.label("recording_id"),
        ).where(calls.c.tenant_id == tenant_id, calls.c.ended_at.is_not(None), ~pending)
        if cutoff is not None:
            stmt = stmt.where(calls.c.ended_at <= cutoff)
        if call_ids is not None:
            stmt = stmt.where(calls.c.id.in_(list(call_ids)))
        return await self._page(stmt, calls.c.id, DueCall, after=after, limit=limit)

    async def delete_call_records(
        self,
        tenant_id: str,
        call_ids: Sequence[str],
        now: datetime,
        *,
        receipts: Callable[[list[str]], Sequence[AuditEntry]],
    ) -> list[str]:
        """Delete call records and what remains of their recordings (the content-free
        tombstones: recording and object rows, finished jobs), skipping any whose recording
        is not finally deleted, and append ``receipts(deleted call ids)``, in one
        transaction per ``_WRITE_CHUNK`` calls. Webhook events not yet delivered are kept,
        unlinked."""
        deleted: list[str] = []
        for start in range(0, len(call_ids), _WRITE_CHUNK):
            async with self._transaction(write=True) as conn:
                chunk = list(call_ids[start : start + _WRITE_CHUNK])
                blocked = set(
                    (
                        await conn.execute(
                            sa.select(recordings.c.call_id).where(
                                recordings.c.tenant_id == tenant_id,
                                recordings.c.call_id.in_(chunk),
                                recordings.c.deleted_at.is_(None),
                            )
                        )
                    ).scalars()
                )
                chunk = [call_id for call_id in chunk if call_id not in blocked]
                if not chunk:
                    continue
                gone = sa.select(recordings.c.id).where(
                    recordings.c.tenant_id == tenant_id, recordings.c.call_id.in_(chunk)
                )
                # A webhook event still to be delivered (a recording.deleted queued in this
                # very sweep) outlives the row it names: it carries the ids in its payload.
                await conn.execute(
                    sa.update(jobs)
                    .where(
                        jobs.c.recording_id.in_(gone),
                        jobs.c.kind == "webhook",
                        jobs.c.status.in_(("queued", "running")),
                    )
                    .values(recording_id=None)
                )
                await conn.execute(sa.delete(jobs).where(jobs.c.recording_id.in_(gone)))
                await conn.execute(
                    sa.delete(object_keys).where(
                        object_keys.c.object_id.in_(
                            sa.select(objects.c.id).where(objects.c.recording_id.in_(gone))
                        )
                    )
                )
                await conn.execute(sa.delete(objects).where(objects.c.recording_id.in_(gone)))
                await conn.execute(
                    sa.delete(recordings).where(
                        recordings.c.tenant_id == tenant_id, recordings.c.call_id.in_(chunk)
                    )
                )
                result = await conn.execute(
                    sa.delete(calls)
                    .where(calls.c.tenant_id == tenant_id, calls.c.id.in_(chunk))
                    .returning(calls.c.id)
                )
                moved = list(result.scalars())
                await self._chain(conn, tenant_id, receipts(moved), now)
            deleted.extend(moved)
        return deleted

    async def calls_of_number(self, tenant_id: str, number: str) -> list[Call]:
        """Every call record of the tenant where ``number`` is a party, oldest first."""
        async with self._transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(calls)
                    .where(
                        calls.c.tenant_id == tenant_id,
                        sa.or_(calls.c.from_number == number, calls.c.to_number == number),
                    )
                    .order_by(calls.c.started_at, calls.c.id)
                )
            ).all()
        return [_record(Call, row) for row in rows]

    # --- jobs -----------------------------------------------------------------------------

    async def enqueue_job(
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
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        return await self._insert(
            sa.insert(jobs).values(
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
            ),
            Job,
            subject=f"Job {id!r}",
        )

    async def enqueue_jobs(
        self, tenant_id: str, new: Sequence[NewJob], *, now: datetime
    ) -> list[Job]:
        """Queue several jobs of the tenant in one transaction, due ``now``; a job whose id
        is taken already is skipped (so a caller that repeats itself after a crash queues
        each once). Returns the jobs queued now."""
        if not new:
            return []
        async with self._transaction(write=True, subject="A job") as conn:
            taken: set[str] = set()
            ids = [job.id for job in new]
            for start in range(0, len(ids), _IN_BATCH):
                chunk = ids[start : start + _IN_BATCH]
                taken.update(
                    (await conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk)))).scalars()
                )
            queued: list[Job] = []
            for job in new:
                if job.id in taken:
                    continue
                taken.add(job.id)
                queued.append(
                    Job(
                        id=job.id,
                        tenant_id=tenant_id,
                        recording_id=job.recording_id,
                        kind=job.kind,
                        status="queued",
                        attempts=0,
                        max_attempts=job.max_attempts,
                        run_after=now,
                        lease_owner=None,
                        lease_until=None,
                        last_error=None,
                        created_at=now,
                        updated_at=now,
                        payload=job.payload,
                    )
                )
            if queued:
                await conn.execute(sa.insert(jobs), [_key_values(job) for job in queued])
        return queued

    async def claim_job(
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
        async with self._transaction(write=True) as conn:
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
        return _record(Job, row)

    async def _leased_job(self, conn: AsyncConnection, job_id: str, owner: str) -> AnyRow:
        row = (
            await conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update())
        ).one_or_none()
        if row is None:
            raise NotFound(f"Job {job_id!r} not found.")
        if row.status != "running" or row.lease_owner != owner:
            raise Conflict(f"Job {job_id!r} is not leased to {owner!r} (it is {row.status}).")
        return row

    async def renew_lease(self, job_id: str, owner: str, now: datetime, lease: timedelta) -> Job:
        """Extend ``owner``'s lease to ``now + lease`` (a long job's heartbeat); ``Conflict``
        if the lease was lost (it ran out and another worker took the job). A lease that
        ran out but that nobody took yet is extended: the job is still this owner's."""
        async with self._transaction(write=True) as conn:
            await self._leased_job(conn, job_id, owner)
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(lease_until=now + lease, updated_at=now)
                    .returning(*jobs.c)
                )
            ).one()
        return _record(Job, row)

    async def defer_job(
        self, job_id: str, owner: str, reason: str, now: datetime, *, run_after: datetime
    ) -> Job:
        """Hand the job back, due again at ``run_after``, without counting the attempt: it
        could not start yet (its audio is still being published), which is no failure."""
        async with self._transaction(write=True) as conn:
            await self._leased_job(conn, job_id, owner)
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        status="queued",
                        attempts=jobs.c.attempts - 1,
                        run_after=run_after,
                        lease_owner=None,
                        lease_until=None,
                        last_error=reason[:_MAX_ERROR_CHARS],
                        updated_at=now,
                    )
                    .returning(*jobs.c)
                )
            ).one()
        return _record(Job, row)

    async def list_jobs(
        self, tenant_id: str, *, recording_id: str | None = None, kind: str | None = None
    ) -> list[Job]:
        """The tenant's jobs (of one recording, of one kind), oldest first."""
        stmt = sa.select(jobs).where(jobs.c.tenant_id == tenant_id)
        if recording_id is not None:
            stmt = stmt.where(jobs.c.recording_id == recording_id)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt.order_by(jobs.c.created_at, jobs.c.id))).all()
        return [_record(Job, row) for row in rows]

    async def complete_job(self, job_id: str, owner: str, now: datetime) -> Job:
        """Mark the job done; ``Conflict`` if ``owner`` no longer holds its lease."""
        async with self._transaction(write=True) as conn:
            await self._leased_job(conn, job_id, owner)
            row = (
                await conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(status="done", lease_until=None, updated_at=now)
                    .returning(*jobs.c)
                )
            ).one()
        return _record(Job, row)

    async def fail_job(
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
        async with self._transaction(write=True) as conn:
            current = await self._leased_job(conn, job_id, owner)
            values: dict[str, Any] = {
                "lease_until": None,
                "last_error": error[:_MAX_ERROR_CHARS],
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
        return _record(Job, row)

    # --- audit ----------------------------------------------------------------------------

    async def append_audit(
        self,
        tenant_id: str,
        actor: str,
        action: str,
        object: str | None,
        detail: dict[str, Any],
        now: datetime,
    ) -> AuditEvent:
        """Append an event to the tenant's hash chain (also after the tenant was deleted, so
        that its erasure is logged). Appends queue on the tenant row, which holds the chain's
        head, so concurrent appends never fork it; the (tenant, seq) key is the backstop."""
        entry = AuditEntry(actor=actor, action=action, object=object, detail=detail)
        async with self._transaction(write=True, subject=f"Audit event of {tenant_id!r}") as conn:
            (event,) = await self._chain(conn, tenant_id, [entry], now)
        return event

    async def append_audits(
        self, tenant_id: str, entries: Sequence[AuditEntry], now: datetime
    ) -> list[AuditEvent]:
        """Append several events to the tenant's chain in one transaction."""
        async with self._transaction(write=True, subject=f"Audit events of {tenant_id!r}") as conn:
            return await self._chain(conn, tenant_id, entries, now)

    async def _chain(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        entries: Sequence[AuditEntry],
        now: datetime,
    ) -> list[AuditEvent]:
        """Append ``entries`` to the tenant's chain inside the caller's transaction (so that
        an action and its audit event commit together or not at all)."""
        if not entries:
            return []
        head = await self._lock_tenant(conn, tenant_id, live=False)
        seq, prev = head.audit_seq, head.audit_head
        events: list[AuditEvent] = []
        for start in range(0, len(entries), _AUDIT_CHUNK):
            # A chunk at a time, hashed and inserted: thousands of events at once would hold
            # the event loop (and with it ingest) for tens of milliseconds.
            chunk: list[AuditEvent] = []
            for entry in entries[start : start + _AUDIT_CHUNK]:
                detail, detail_json = encode_detail(entry.detail)
                seq += 1
                digest = chain_hash(
                    prev,
                    seq=seq,
                    at=now,
                    actor=entry.actor,
                    action=entry.action,
                    object=entry.object,
                    detail_json=detail_json,
                )
                chunk.append(
                    AuditEvent(
                        tenant_id=tenant_id,
                        seq=seq,
                        at=now,
                        actor=entry.actor,
                        action=entry.action,
                        object=entry.object,
                        detail=detail,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
                prev = digest
            await conn.execute(sa.insert(audit_events), [_key_values(event) for event in chunk])
            events.extend(chunk)
        await conn.execute(
            sa.update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(audit_seq=seq, audit_head=prev)
        )
        return events

    async def list_audit(
        self, tenant_id: str, *, since_seq: int = 0, limit: int = 100
    ) -> list[AuditEvent]:
        """Events with ``seq > since_seq``, oldest first, at most ``limit``."""
        async with self._transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.tenant_id == tenant_id, audit_events.c.seq > since_seq)
                    .order_by(audit_events.c.seq)
                    .limit(limit)
                )
            ).all()
        return [_record(AuditEvent, row) for row in rows]

    async def verify_audit(self, tenant_id: str) -> AuditCheck:
        """Recompute the tenant's chain: every event must follow the previous one (seq + 1,
        ``prev_hash``), its hash must match its content, and the last must be the head kept on
        the tenant row (so that a removed tail is noticed too). Reads one consistent snapshot
        on PostgreSQL (REPEATABLE READ); SQLite transactions are snapshots already."""
        broken: int | None = None
        count = 0
        expected_seq, expected_prev = 1, GENESIS_HASH
        async with self._transaction(snapshot=True) as conn:
            head = (
                await conn.execute(
                    sa.select(tenants.c.audit_seq, tenants.c.audit_head).where(
                        tenants.c.id == tenant_id
                    )
                )
            ).one_or_none()
            if head is None:
                raise NotFound(f"Tenant {tenant_id!r} not found.")
            result = await conn.stream(
                sa.select(audit_events)
                .where(audit_events.c.tenant_id == tenant_id)
                .order_by(audit_events.c.seq)
            )
            async for row in result:
                count += 1
                if broken is not None:
                    continue
                if row.seq != expected_seq:
                    broken = expected_seq
                elif row.prev_hash != expected_prev or row.hash != _rehash(row):
                    broken = row.seq
                else:
                    expected_seq, expected_prev = expected_seq + 1, row.hash
        last_seq = expected_seq - 1
        if broken is None and (last_seq, expected_prev) != (head.audit_seq, head.audit_head):
            # The rows form a valid chain that is not the one the head describes: missing
            # events at the end, events added past the head, or a re-hashed last event.
            broken = min(last_seq, head.audit_seq) + 1
            if last_seq == head.audit_seq:
                broken = last_seq
        return AuditCheck(ok=broken is None, broken_at=broken, count=count)
