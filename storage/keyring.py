"""The keyring kept in the catalog: one row that every node of a fleet shares.

With ``CALLVAULT_KEYS__PROVIDER=catalog`` the keyring document (the same document as the
local ``keyring.json``: the tenants' KEK versions, the destroyed tenants' tombstones, the
audit keys, every value wrapped by the master key) is the ``document`` of the one row of
the catalog's ``keyring`` table, and ``version`` counts its writes. Every node opens it with
the same master key, so an object one node sealed opens on every other, and an audit chain
is keyed by one key whichever node appends to it.

``CatalogBacking`` is the ``crypto.keyringbacking.KeyringBacking`` of that row:

* the lock is a write transaction holding the row: ``SELECT ... FOR UPDATE`` on
  PostgreSQL, ``BEGIN IMMEDIATE`` (the database's write lock) on SQLite. On a first start
  there is no row to lock yet: an empty row is inserted (``ON CONFLICT DO NOTHING``) and
  locked, so that two nodes starting at once queue on the same row instead of both making
  a keyring; the transaction is rolled back unless something was written, so the empty row
  never outlives it;
* every write increments ``version``; the identity is ``version``, one primary-key
  lookup, so a node sees at its next operation that another one changed the keyring (a
  destroyed KEK stops opening there at once: nothing is cached past a change);
* the lock is bounded (PostgreSQL): a writer waits for the row at most the backing's
  busy timeout (``SET LOCAL lock_timeout``, and ``statement_timeout`` for its statements),
  then fails ``CatalogUnavailable`` with nothing changed; and a holder whose transaction
  sits idle that long (a process frozen, or cut off, with the row locked) is ended by the
  server (``idle_in_transaction_session_timeout`` on every session of the backing), so one
  stalled node holds up the keyring writes of the fleet (a new tenant's KEK, its first
  audit event) for a bounded time, never for good. ``CatalogUnavailable``, not
  ``KeyUnavailable``: callers read the latter as "destroyed", the former as "try again".

Why synchronous: ``LocalKeyring`` does its document work in threads already
(``asyncio.to_thread``), and the catalog's engine is async, bound to one event loop; so the
row is read and written through a small synchronous engine of its own (psycopg, or the
standard library's sqlite3) on the same database (``sync_database_url``).

The provider itself runs on PostgreSQL only (``gateway.catalogkeys`` says why); the
backing works on SQLite too, which the tests of the keyring's behaviour use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import ConnectionPoolEntry

from crypto.keyringbacking import Identity, Loaded
from storage.catalog.core import (
    catalog_unavailable,
    configure_sqlite,
    prepare_sqlite_file,
    upgrade_schema,
)
from storage.catalog.schema import audit_checkpoints, keyring
from storage.catalog.urls import sync_database_url
from storage.errors import CatalogUnavailable

ROW_ID = "main"
"""The id of the one row (the table has room for more, should a keyring ever be split)."""
X = TypeVar("X")
POOL_SIZE = 2
"""Connections one process keeps to the keyring's row: one for a write, one for the
version checks that go on meanwhile."""
_TIMED_OUT = frozenset({"55P03", "57014"})
"""The SQLSTATEs of a lock wait or statement cut off by its timeout (lock_not_available,
query_canceled)."""


class CatalogBacking:
    """The keyring document as the one row of the catalog's ``keyring`` table."""

    cheap_identity = False

    def __init__(
        self, engine: sa.Engine, *, now: Callable[[], datetime], lock_timeout_s: float = 10.0
    ) -> None:
        """``engine``: a synchronous engine on the catalog database (``open`` makes it);
        ``now`` dates each write (``updated_at``); ``lock_timeout_s`` bounds a wait for the
        row's lock (PostgreSQL; ``open`` sets it to the busy timeout)."""
        self._engine = engine
        self._lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        # On SQLite the lock's transaction begins IMMEDIATE (``configure_sqlite``).
        self._writer = engine.execution_options(callvault_write=True)
        self._now = now
        plain = engine.url.set(drivername=engine.url.get_backend_name())
        self._masked = plain.render_as_string(hide_password=True)
        self.name = f"catalog keyring (table keyring of {self._masked})"
        self._held = threading.local()
        """The connection whose transaction holds the lock, in the thread that holds it."""

    @classmethod
    def open(
        cls,
        url: str | None,
        data_dir: Path,
        *,
        now: Callable[[], datetime] | None = None,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 10.0,
    ) -> CatalogBacking:
        """The keyring row of the catalog ``url`` (``CALLVAULT_DATABASE_URL``; ``None``:
        SQLite in ``data_dir``). The catalog's schema is brought to the newest migration
        first, as ``open_services`` would: the ``keyring`` table comes with it, and a node
        refuses a wrong master key before anything else starts. ``busy_timeout_s`` bounds
        a wait for the row's lock, and how long a holder's transaction may sit idle."""
        backing = cls(
            _create_engine(
                sync_database_url(url, data_dir),
                connect_timeout_s=connect_timeout_s,
                busy_timeout_s=busy_timeout_s,
            ),
            now=now or (lambda: datetime.now(UTC)),
            lock_timeout_s=busy_timeout_s,
        )
        try:
            backing.migrate()
        except BaseException:
            backing.close()
            raise
        return backing

    def migrate(self) -> None:
        """Bring the catalog's schema to the newest migration (a no-op when it is)."""
        try:
            with self._writer.begin() as conn:
                upgrade_schema(conn)
        except CommandError as exc:
            raise CatalogUnavailable(
                f"The catalog database at {self._masked} cannot be migrated: {exc}."
            ) from exc
        except (DBAPIError, DisconnectionError, PoolTimeoutError, OSError) as exc:
            raise catalog_unavailable(exc, self._masked) from exc

    # -- KeyringBacking ----------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        if getattr(self._held, "conn", None) is not None:
            raise RuntimeError("the catalog keyring's lock is not re-entrant")
        try:
            with self._writer.connect() as conn:
                transaction = conn.begin()
                self._held.conn, self._held.written = conn, False
                try:
                    self._bound(conn)
                    if not self._lock_row(conn):
                        self._insert_empty_row(conn)
                        self._lock_row(conn)
                    yield
                    if self._held.written:
                        transaction.commit()
                    else:
                        transaction.rollback()
                finally:
                    self._held.conn = None
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) in _TIMED_OUT:
                raise CatalogUnavailable(
                    f"The catalog keyring's row at {self._masked} stayed locked by another "
                    f"process for more than {self._lock_timeout_ms / 1000:g} s (lock_timeout); "
                    "nothing was changed: try again."
                ) from exc
            raise catalog_unavailable(exc, self._masked) from exc
        except (DisconnectionError, PoolTimeoutError, OSError) as exc:
            raise catalog_unavailable(exc, self._masked) from exc

    def read(self) -> Loaded | None:
        query = sa.select(keyring.c.version, keyring.c.document).where(keyring.c.id == ROW_ID)
        row = self._run(lambda conn: conn.execute(query).one_or_none())
        if row is None or not row.document:
            return None  # no keyring yet (an empty row exists only inside a first write)
        return Loaded(bytes(row.document), row.version)

    def write(self, document: bytes) -> Identity:
        conn: Connection | None = getattr(self._held, "conn", None)
        if conn is None:
            raise RuntimeError("the catalog keyring is written only under its lock")
        try:
            version: int = conn.execute(
                sa.update(keyring)
                .where(keyring.c.id == ROW_ID)
                .values(version=keyring.c.version + 1, document=document, updated_at=self._now())
                .returning(keyring.c.version)
            ).scalar_one()
        except (DBAPIError, DisconnectionError, OSError) as exc:
            raise catalog_unavailable(exc, self._masked) from exc
        self._held.written = True
        return version

    def identity(self) -> Identity | None:
        query = sa.select(keyring.c.version).where(keyring.c.id == ROW_ID)
        version: int | None = self._run(lambda conn: conn.execute(query).scalar_one_or_none())
        return version

    def close(self) -> None:
        self._engine.dispose()

    # -- what the catalog says of the keyring's keys -------------------------------------------

    def checkpoint_tenants(self, key_id: str) -> list[str]:
        """The tenants with audit checkpoints signed under the signing key ``key_id`` (a
        node's own, before its keyring moved into the catalog: ``crypto.keymerge``)."""
        query = (
            sa.select(audit_checkpoints.c.tenant_id)
            .where(audit_checkpoints.c.key_id == key_id)
            .distinct()
            .order_by(audit_checkpoints.c.tenant_id)
        )
        return self._run(lambda conn: list(conn.execute(query).scalars()))

    # -- the row -----------------------------------------------------------------------------

    def _run(self, query: Callable[[Connection], X]) -> X:
        """``query`` on the connection holding the lock when this thread holds it, else in
        a short read transaction of its own."""
        held: Connection | None = getattr(self._held, "conn", None)
        try:
            if held is not None:
                return query(held)
            with self._engine.connect() as conn:
                return query(conn)
        except (DBAPIError, DisconnectionError, PoolTimeoutError, OSError) as exc:
            raise catalog_unavailable(exc, self._masked) from exc

    def _bound(self, conn: Connection) -> None:
        """Bound this transaction's wait for the row and its statements (PostgreSQL; on
        SQLite the busy timeout bounds the write lock already)."""
        if conn.dialect.name == "postgresql":
            ms = self._lock_timeout_ms
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")

    @staticmethod
    def _lock_row(conn: Connection) -> bool:
        """Lock the row for the transaction (PostgreSQL; SQLite's write lock is held since
        BEGIN IMMEDIATE); whether it exists."""
        found = conn.execute(
            sa.select(keyring.c.version).where(keyring.c.id == ROW_ID).with_for_update()
        ).one_or_none()
        return found is not None

    def _insert_empty_row(self, conn: Connection) -> None:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            insert(keyring)
            .values(id=ROW_ID, version=0, document=b"", updated_at=self._now())
            .on_conflict_do_nothing(index_elements=[keyring.c.id])
        )


def _create_engine(url: URL, *, connect_timeout_s: float, busy_timeout_s: float) -> sa.Engine:
    """A small synchronous engine on the catalog database; on SQLite configured as the
    catalog's own (WAL, busy timeout, BEGIN IMMEDIATE for writes), its file made 0600."""
    if url.get_backend_name() != "sqlite":
        engine = sa.create_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE,
            pool_pre_ping=True,
            pool_timeout=connect_timeout_s,
            connect_args={"connect_timeout": max(1, round(connect_timeout_s))},
        )
        idle_ms = max(1, round(busy_timeout_s * 1000))

        @sa.event.listens_for(engine, "connect")
        def _bound_idle(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            # A session idle inside a transaction this long (its process frozen or cut off
            # while it holds the row) is ended by the server, and its lock released.
            cursor = dbapi_conn.cursor()
            cursor.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            cursor.close()
            dbapi_conn.commit()

        return engine
    prepare_sqlite_file(url)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
    configure_sqlite(engine, busy_timeout_s)
    return engine
