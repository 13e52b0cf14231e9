"""The catalog's engine core: the connection pool, its transactions and the row helpers.

Every aggregate of the catalog (``tenants``, ``jobs``, ``audit``, ...) runs its queries
through one ``CatalogCore``, so that transactions, the translation of driver errors into
``crypto.errors`` and the backend differences (SQLite in the data dir by default, PostgreSQL
when nodes share one catalog) are decided here and nowhere else.

Writes that read-then-write (instruction versions, audit sequence numbers, job claims) are
serialized: on PostgreSQL by row locks (the tenant row, ``FOR UPDATE SKIP LOCKED`` for
jobs), on SQLite by taking the write lock at ``BEGIN IMMEDIATE``, so that two writers can
never both read the same "last" value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from crypto.auditkeys import AuditKeyProvider
from crypto.errors import CallvaultError, ConfigError
from storage.catalog.schema import UTCDateTime, tenants
from storage.catalog.urls import SETTING, async_database_url, mask_database_url
from storage.errors import CatalogUnavailable, Conflict, NotFound

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")
AnyRow = sa.Row[*tuple[Any, ...]]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_LOCK_KEY = 0x63616C6C7661756C  # "callvaul": one advisory lock for all migrators
MAX_ERROR_CHARS = 2000
"""Characters of an error message kept on a row (a job's or a recording's failure)."""
IN_BATCH = 500
"""Ids per ``IN (...)`` list: far below SQLite's and asyncpg's parameter limits."""
CHECKPOINT_TRIES = 3
CHECKPOINT_WAIT_MS = 100
"""How often, and how long each time, truncating SQLite's WAL waits for its readers (the
checkpoint holds writers back while it waits)."""
WRITE_CHUNK = 250
"""Rows one bulk write transaction moves (with their audit receipts): on SQLite a write
transaction holds the database's only write lock, so the retention sweep keeps them short
and ingest's own writes wait for one chunk at most."""


# --- row helpers ----------------------------------------------------------------------------


@functools.cache
def _field_names(cls: type[DataclassInstance]) -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls))


def record(cls: type[R], row: AnyRow) -> R:
    """The frozen record ``cls`` of a row that has (at least) its fields as columns."""
    mapping = row._mapping
    return cls(**{name: mapping[name] for name in _field_names(cls)})


def record_prefixed(cls: type[R], row: AnyRow, prefix: str) -> R:
    """A record from a joined row whose columns of ``cls`` are labelled ``prefix + name``."""
    mapping = row._mapping
    return cls(**{name: mapping[prefix + name] for name in _field_names(cls)})


def row_values(row: DataclassInstance) -> dict[str, Any]:
    """The column values of a record, for an INSERT."""
    return {name: getattr(row, name) for name in _field_names(type(row))}


def at(value: datetime) -> sa.BindParameter[datetime]:
    """A timestamp bound with the catalog's UTC type where SQL cannot infer it (COALESCE)."""
    return sa.bindparam(None, value, type_=UTCDateTime())


def after_key(
    columns: Sequence[sa.ColumnElement[Any]], key: Sequence[Any]
) -> sa.ColumnElement[bool]:
    """Rows strictly after ``key`` in the ascending order of ``columns``: a keyset cursor
    over several columns, spelled out (``a > x OR a = x AND (b > y ...)``) so that each
    value is bound with its column's type on every backend."""
    (column, *columns_left), (value, *key_left) = columns, key
    if not columns_left:
        return column > value
    return sa.or_(column > value, sa.and_(column == value, after_key(columns_left, key_left)))


async def lock_tenant(conn: AsyncConnection, tenant_id: str, *, live: bool) -> AnyRow:
    """Lock the tenant row for the rest of the transaction (PostgreSQL; SQLite already
    holds the database's write lock) and return its deletion time, audit head and limits.
    ``FOR NO KEY UPDATE`` serializes the writers that take it without blocking inserts that
    merely reference the tenant. ``NotFound`` if unknown, or deleted when ``live``."""
    row = (
        await conn.execute(
            sa.select(
                tenants.c.deleted_at, tenants.c.audit_seq, tenants.c.audit_head, tenants.c.limits
            )
            .where(tenants.c.id == tenant_id)
            .with_for_update(key_share=True)
        )
    ).one_or_none()
    if row is None or (live and row.deleted_at is not None):
        raise NotFound(f"Tenant {tenant_id!r} not found.")
    return row


# --- SQLite ---------------------------------------------------------------------------------


def create_owner_only(path: Path) -> None:
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


def configure_sqlite(engine: sa.Engine, busy_timeout_s: float) -> None:
    """WAL (readers do not block the writer), enforced foreign keys, waiting instead of
    failing on a busy database, zeroing deleted content (a shredded DEK does not linger in
    free pages), and SQLAlchemy in charge of BEGIN so that writes (connections with the
    execution option ``callvault_write``) can BEGIN IMMEDIATE. ``engine``: a synchronous
    engine, or an async engine's ``sync_engine``."""
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("callvault_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def prepare_sqlite_file(url: URL) -> None:
    """Make the directory of a SQLite catalog's file (0700) and the file itself (0600),
    unless ``url`` names a ``file:`` URI; ``CatalogUnavailable`` if the directory cannot be
    made."""
    database = url.database or ""
    if database.startswith("file:"):
        return
    try:
        Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogUnavailable(
            f"The catalog's directory for {mask_database_url(str(url))} cannot be "
            f"created: {exc.strerror or exc}."
        ) from exc
    create_owner_only(Path(database))


def _create_engine(
    url: str, *, pool_size: int, connect_timeout_s: float, busy_timeout_s: float
) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_timeout=connect_timeout_s,
            connect_args={"timeout": connect_timeout_s},
        )
    prepare_sqlite_file(parsed)
    engine = create_async_engine(url, connect_args={"timeout": busy_timeout_s})
    configure_sqlite(engine.sync_engine, busy_timeout_s)
    return engine


# --- the core -------------------------------------------------------------------------------


class CatalogCore:
    """The engine of the catalog database and its transactions; the aggregates share one.

    ``audit_keys`` gives the audit log its keys (the tenants' HMAC keys, the checkpoint
    signing key): the keyring, never anything in this database. There is no default, so
    that no catalog can chain its audit log with a key that is not the keyring's."""

    def __init__(self, engine: AsyncEngine, url: str, *, audit_keys: AuditKeyProvider) -> None:
        self.engine = engine
        self.audit_keys = audit_keys
        # Same pool; on SQLite its transactions BEGIN IMMEDIATE (see configure_sqlite).
        self._writer = engine.execution_options(callvault_write=True)
        # For reads that must see one snapshot across statements (audit verification);
        # SQLite read transactions are snapshots already.
        self._snapshot = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self.masked_url = mask_database_url(url)
        self._head: str | None = None
        # SQLite has one write lock, and its busy handler is not fair: a writer polling for
        # it can starve behind a stream of others (a retention sweep's batches). The writers
        # of this process take turns in order here instead.
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    def open(
        cls,
        url: str,
        *,
        audit_keys: AuditKeyProvider,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> CatalogCore:
        """Create the engine for ``url`` (any form ``async_database_url`` accepts); nothing
        is connected yet."""
        if not url.strip():
            raise ConfigError(SETTING, "the catalog URL is empty.")
        url = async_database_url(url, Path("."))
        engine = _create_engine(
            url,
            pool_size=pool_size,
            connect_timeout_s=connect_timeout_s,
            busy_timeout_s=busy_timeout_s,
        )
        return cls(engine, url, audit_keys=audit_keys)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = False, snapshot: bool = False, subject: str = "the row"
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction; foreign errors are translated here and nowhere else.
        ``subject`` names what an integrity error is about (``Tenant 'acme'``)."""
        engine = self._writer if write else self._snapshot if snapshot else self.engine
        turn = self._write_turn if write else None
        try:
            async with turn or contextlib.nullcontext(), engine.begin() as connection:
                yield connection
        except IntegrityError as exc:
            raise _integrity_error(exc, subject) from exc
        except DBAPIError as exc:
            raise self.unavailable(exc) from exc
        except StatementError as exc:
            # A value our column types refused (a naive datetime): the caller's bug.
            if isinstance(exc.orig, ValueError):
                raise ValueError(str(exc.orig)) from exc
            raise
        except (PoolTimeoutError, DisconnectionError, OSError) as exc:
            raise self.unavailable(exc) from exc

    def unavailable(self, exc: BaseException) -> CatalogUnavailable:
        """The ``CatalogUnavailable`` of a driver or pool failure (URL masked)."""
        return catalog_unavailable(exc, self.masked_url)

    async def one(
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
        async with self.transaction(write=write) as conn:
            row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            raise error(missing)
        return record(record_type, row)

    async def all(self, stmt: sa.Executable, record_type: type[R]) -> list[R]:
        """Run one query in its own transaction and return its rows as ``record_type``."""
        async with self.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [record(record_type, row) for row in rows]

    async def insert(self, stmt: sa.Insert, record_type: type[R], *, subject: str) -> R:
        """Insert one row in its own write transaction and return it, every column, as a
        ``record_type``; integrity errors name ``subject``."""
        async with self.transaction(write=True, subject=subject) as conn:
            row = (await conn.execute(stmt.returning(*stmt.table.c))).one()
        return record(record_type, row)

    async def page(
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
        return await self.all(stmt.order_by(key).limit(limit), record_type)

    async def forget_deleted_rows(self) -> None:
        """On SQLite, move the write-ahead log into the database and truncate it, so that
        the page images holding a shredded wrapped DEK leave the WAL file (secure_delete
        already zeroes it in the database file). PostgreSQL keeps dead tuples until VACUUM;
        there the KEK, not the row's absence, protects such leftovers and backups.

        A reader (of this or another process) in a transaction keeps the WAL from being
        truncated, and the checkpoint would hold every writer back while it waits: it waits
        briefly, a few times, then logs what stays in the WAL (the next call truncates it)."""
        if self.backend != "sqlite":
            return
        try:
            async with self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                if driver is None:  # pragma: no cover - aiosqlite always has one
                    return
                busy, frames, copied = await _truncate_wal(driver)
        except (DBAPIError, OSError) as exc:
            raise self.unavailable(exc) from exc
        if busy:
            log.warning(
                "the SQLite write-ahead log %s-wal was not truncated: a reader held it "
                "(%d of its %d frames copied into the database). Page images of rows deleted "
                "since the last truncation (shredded keys, replaced webhook secrets) stay in "
                "it until a later deletion truncates it.",
                self.engine.url.database,
                copied,
                frames,
                extra={"event": "catalog.wal_not_truncated"},
            )

    # --- schema -----------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``).

        Safe to run from several nodes at once: on PostgreSQL the migrators queue on an
        advisory lock, on SQLite on the write lock, and the later ones find nothing to do.
        """
        try:
            async with self.transaction(write=True, subject="the catalog schema") as conn:
                await conn.run_sync(upgrade_schema)
        except CommandError as exc:
            raise CatalogUnavailable(
                f"The catalog database at {self.masked_url} cannot be migrated: {exc}."
            ) from exc

    async def check(self) -> None:
        """Raise ``CatalogUnavailable`` unless the database answers and its schema is at the
        newest migration (for readiness probes)."""
        async with self.transaction() as conn:
            await conn.execute(sa.text("SELECT 1"))
            migrated = await conn.run_sync(
                lambda sync: sa.inspect(sync).has_table("alembic_version")
            )
            current = None
            if migrated:
                current = (
                    await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                ).scalar()
        if self._head is None:
            self._head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        if current != self._head:
            raise CatalogUnavailable(
                f"The catalog database at {self.masked_url} is at schema version "
                f"{current or 'none'}, not {self._head}; run the migrations."
            )


async def _truncate_wal(driver: Any) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on an aiosqlite connection, tried
    ``CHECKPOINT_TRIES`` times, each waiting at most ``CHECKPOINT_WAIT_MS`` for readers (the
    connection's busy timeout is put back after); its (busy, log, checkpointed) row."""

    async def pragma(sql: str) -> tuple[int, ...]:
        async with driver.execute(sql) as cursor:
            return tuple(await cursor.fetchone())

    (busy_ms,) = await pragma("PRAGMA busy_timeout")
    await pragma(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
    try:
        for _ in range(CHECKPOINT_TRIES):
            busy, frames, copied = await pragma("PRAGMA wal_checkpoint(TRUNCATE)")
            if not busy:
                break
    finally:
        await pragma(f"PRAGMA busy_timeout = {int(busy_ms)}")
    return busy, frames, copied


def catalog_unavailable(exc: BaseException, masked_url: str) -> CatalogUnavailable:
    """The ``CatalogUnavailable`` of a driver or pool failure, naming the database by its
    masked URL and the driver's error by its first line."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    detail = lines[0][:200] if lines else ""
    name = type(orig).__name__
    return CatalogUnavailable(
        f"The catalog database at {masked_url} failed or could not be reached "
        f"({name}{': ' + detail if detail else ''})."
    )


def _integrity_error(exc: IntegrityError, subject: str) -> CallvaultError:
    text = str(exc.orig).lower()
    if "foreign key" in text:
        return NotFound(f"{subject} refers to something that does not exist.")
    if "unique" in text or "duplicate" in text or "primary key" in text:
        return Conflict(f"{subject} already exists.")
    return Conflict(f"{subject} conflicts with a rule of the catalog.")


def upgrade_schema(connection: Connection) -> None:
    """Alembic ``upgrade head`` in the connection's write transaction (on SQLite, one that
    began IMMEDIATE). On PostgreSQL the migrators of all nodes queue on one advisory lock
    first; on SQLite the write lock queues them. The later ones find nothing to do."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
