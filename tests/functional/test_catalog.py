"""The catalog against real databases: SQLite (a temporary file, always) and PostgreSQL at
127.0.0.1:5432 (a fresh database for the session, skipped when unreachable, failed instead
when ``CALLVAULT_TEST_REQUIRE_PARTS=1``).

Every test that takes ``catalog`` runs once per backend. Each test starts from an empty schema
(a new SQLite file; on PostgreSQL the ``public`` schema dropped and recreated) brought up by
the real migrations. Raw SQL through a second engine (``raw``) plays the attacker or checks
what is really stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crypto.errors import KeyUnavailable
from storage.catalog import AuditCheck, Catalog, NumberCalls, ObjectKeyRow
from storage.catalog.database import MIGRATIONS_DIR
from storage.catalog.schema import metadata
from storage.errors import CatalogUnavailable, Conflict, Gone, NotFound
from tests.keyring import audit_keyring

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TABLES = {
    "console_sessions",
    "keyring",
    "leases",
    "nodes",
    "legal_holds",
    "tenants",
    "tokens",
    "instructions",
    "calls",
    "recordings",
    "objects",
    "object_keys",
    "jobs",
    "audit_events",
    "audit_checkpoints",
}


@pytest.fixture
async def empty_catalog(database_url: str, tmp_path: Path) -> AsyncIterator[Catalog]:
    """A catalog on an empty database (not migrated), its audit log keyed by a keyring in
    ``tmp_path``."""
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        yield catalog
    finally:
        await catalog.close()


@pytest.fixture
async def catalog(empty_catalog: Catalog) -> Catalog:
    await empty_catalog.migrate()
    return empty_catalog


@pytest.fixture
async def raw(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A second engine on the same database, for raw SQL."""
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def scalar(raw: AsyncEngine, sql: str, **params: Any) -> Any:
    async with raw.connect() as conn:
        return (await conn.execute(sa.text(sql), params)).scalar()


async def execute(raw: AsyncEngine, sql: str, **params: Any) -> int:
    async with raw.begin() as conn:
        return (await conn.execute(sa.text(sql), params)).rowcount


async def table_names(raw: AsyncEngine) -> set[str]:
    async with raw.connect() as conn:
        return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


async def add_tenant(catalog: Catalog, tenant_id: str = "acme") -> None:
    await catalog.tenants.create(tenant_id, tenant_id.title(), "eu", T0)


async def add_recording(
    catalog: Catalog, tenant_id: str = "acme", call_id: str = "call-1", recording_id: str = "rec-1"
) -> None:
    """A tenant with instructions v1, a call and a recording of it."""
    if await catalog.instructions.latest(tenant_id) is None:
        await catalog.instructions.add(tenant_id, {"recording": {"enabled": True}}, "adm", T0)
    await catalog.calls.create(
        id=call_id,
        tenant_id=tenant_id,
        from_number="+40211111111",
        to_number="+40722222222",
        direction="inbound",
        consent="granted",
        transport="twilio",
        codec="pcmu",
        sample_rate=8000,
        instructions_version=1,
        decision={"store_recording": True, "ai": []},
        refusal_code=None,
        started_at=T0,
    )
    await catalog.recordings.create(
        id=recording_id, tenant_id=tenant_id, call_id=call_id, instructions_version=1, now=T0
    )


def key_row(object_id: str, tenant_id: str = "acme", version: int = 1) -> ObjectKeyRow:
    return ObjectKeyRow(
        object_id=object_id,
        tenant_id=tenant_id,
        kek_id=f"{tenant_id}-kek",
        kek_version=version,
        wrapped_dek=b"wrapped:" + object_id.encode(),
        created_at=T0,
    )


# --- migrations ---------------------------------------------------------------------------


async def test_migrate_builds_the_schema_from_empty_and_again_is_a_no_op(
    empty_catalog: Catalog, raw: AsyncEngine
) -> None:
    with pytest.raises(CatalogUnavailable, match="run the migrations"):
        await empty_catalog.check()
    assert await table_names(raw) == set()

    await empty_catalog.migrate()
    assert await table_names(raw) == TABLES | {"alembic_version"}
    await empty_catalog.check()
    await add_tenant(empty_catalog)

    await empty_catalog.migrate()
    assert await scalar(raw, "SELECT version_num FROM alembic_version") == "0012"
    assert await scalar(raw, "SELECT count(*) FROM alembic_version") == 1
    assert (await empty_catalog.tenants.get("acme")).name == "Acme"


async def test_nodes_migrating_at_once_do_not_collide(
    empty_catalog: Catalog, database_url: str
) -> None:
    other = await Catalog.open(database_url, audit_keys=empty_catalog.core.audit_keys)
    try:
        await asyncio.gather(empty_catalog.migrate(), other.migrate(), empty_catalog.migrate())
        await other.check()
    finally:
        await other.close()


async def test_models_match_the_migrated_schema(catalog: Catalog, raw: AsyncEngine) -> None:
    async def diff(target: sa.MetaData) -> list[Any]:
        async with raw.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), target
                )
            )

    assert await diff(metadata) == []

    # The comparison does see a difference when there is one.
    changed = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["object_keys"].append_column(sa.Column("dek", sa.LargeBinary()))
    assert [d[0] for d in await diff(changed)] == ["add_column"]


async def test_downgrade_removes_everything_and_upgrade_restores_it(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    async def alembic(revision: str) -> None:
        def step(sync: sa.Connection) -> None:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = sync
            if revision == "base":
                command.downgrade(config, revision)
            else:
                command.upgrade(config, revision)

        async with raw.begin() as conn:
            await conn.run_sync(step)

    await alembic("base")
    assert await table_names(raw) == {"alembic_version"}
    with pytest.raises(CatalogUnavailable):
        await catalog.check()
    await alembic("head")
    assert await table_names(raw) == TABLES | {"alembic_version"}
    await catalog.check()


async def test_queries_on_an_unmigrated_database_are_catalog_unavailable(
    empty_catalog: Catalog,
) -> None:
    with pytest.raises(CatalogUnavailable, match="failed or could not be reached"):
        await empty_catalog.tenants.get("acme")


# --- tenants ------------------------------------------------------------------------------


async def test_tenants(catalog: Catalog) -> None:
    created = await catalog.tenants.create("acme", "Acme SRL", "eu", T0)
    assert (created.id, created.name, created.region, created.deleted_at) == (
        "acme",
        "Acme SRL",
        "eu",
        None,
    )
    assert await catalog.tenants.get("acme") == created
    await catalog.tenants.create("beta", "Beta", "us", T0)
    with pytest.raises(Conflict, match="already exists"):
        await catalog.tenants.create("acme", "Other", "eu", T0)
    assert [t.id for t in await catalog.tenants.list()] == ["acme", "beta"]

    deleted = await catalog.tenants.mark_deleted("acme", T0 + timedelta(hours=1))
    assert deleted.deleted_at == T0 + timedelta(hours=1)
    again = await catalog.tenants.mark_deleted("acme", T0 + timedelta(hours=2))
    assert again.deleted_at == T0 + timedelta(hours=1)
    with pytest.raises(NotFound):
        await catalog.tenants.get("acme")
    assert [t.id for t in await catalog.tenants.list()] == ["beta"]
    assert [t.id for t in await catalog.tenants.list(include_deleted=True)] == ["acme", "beta"]
    with pytest.raises(Conflict):
        await catalog.tenants.create("acme", "Acme again", "eu", T0)
    with pytest.raises(NotFound):
        await catalog.tenants.mark_deleted("nope", T0)
    with pytest.raises(NotFound):
        await catalog.tenants.get("nope")


async def test_times_come_back_aware_utc_and_naive_times_are_refused(catalog: Catalog) -> None:
    bucharest = timezone(timedelta(hours=2))
    local = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=bucharest)
    tenant = await catalog.tenants.create("acme", "Acme", "eu", local)
    stored = (await catalog.tenants.get("acme")).created_at
    assert stored == tenant.created_at == local
    assert stored.tzinfo == UTC
    assert (stored.hour, stored.microsecond) == (10, 123456)
    with pytest.raises(ValueError, match="naive"):
        await catalog.tenants.create("beta", "Beta", "eu", datetime(2026, 1, 1))


# --- tokens -------------------------------------------------------------------------------


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_tokens(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    pbx = await catalog.tokens.create("t1", "acme", "pbx", token_hash("s1"), "op", T0)
    assert (pbx.tenant_id, pbx.role, pbx.revoked_at) == ("acme", "pbx", None)
    assert await catalog.tokens.find(token_hash("s1"), now=T0) == pbx
    assert await catalog.tokens.find(token_hash("unknown"), now=T0) is None

    with pytest.raises(Conflict):
        await catalog.tokens.create("t2", "acme", "admin", token_hash("s1"), "op", T0)
    with pytest.raises(Conflict):
        await catalog.tokens.create("t1", "acme", "admin", token_hash("s2"), "op", T0)
    with pytest.raises(NotFound):
        await catalog.tokens.create("t3", "nope", "admin", token_hash("s3"), "op", T0)
    with pytest.raises(ValueError, match="hex SHA-256"):
        await catalog.tokens.create("t4", "acme", "admin", "s4-in-clear", "op", T0)
    with pytest.raises(ValueError, match="operator"):
        await catalog.tokens.create("t5", "acme", "operator", token_hash("s5"), "op", T0)
    with pytest.raises(ValueError, match="operator"):
        await catalog.tokens.create("t6", None, "admin", token_hash("s6"), "op", T0)

    # Another tenant cannot revoke it, and cannot tell it exists.
    with pytest.raises(NotFound):
        await catalog.tokens.revoke("beta", "t1", T0)
    assert await catalog.tokens.find(token_hash("s1"), now=T0) == pbx
    revoked = await catalog.tokens.revoke("acme", "t1", T0 + timedelta(minutes=1))
    assert revoked.revoked_at == T0 + timedelta(minutes=1)
    assert await catalog.tokens.find(token_hash("s1"), now=T0) is None
    again = await catalog.tokens.revoke("acme", "t1", T0 + timedelta(minutes=2))
    assert again.revoked_at == T0 + timedelta(minutes=1)

    operator = await catalog.tokens.create("op1", None, "operator", token_hash("o"), "boot", T0)
    assert await catalog.tokens.find(token_hash("o"), now=T0) == operator
    with pytest.raises(NotFound):
        await catalog.tokens.revoke("acme", "op1", T0)
    await catalog.tokens.revoke(None, "op1", T0)
    assert await catalog.tokens.find(token_hash("o"), now=T0) is None

    # A deleted tenant's tokens stop working, and it gets no new ones.
    await catalog.tokens.create("b1", "beta", "processor", token_hash("b"), "op", T0)
    await catalog.tenants.mark_deleted("beta", T0)
    assert await catalog.tokens.find(token_hash("b"), now=T0) is None
    with pytest.raises(NotFound):
        await catalog.tokens.create("b2", "beta", "processor", token_hash("b2"), "op", T0)


# --- instructions -------------------------------------------------------------------------


async def test_instructions_are_versioned_per_tenant(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    assert await catalog.instructions.latest("acme") is None
    assert await catalog.instructions.history("acme") == []

    v1 = await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    v2 = await catalog.instructions.add(
        "acme", {"recording": {"enabled": False}, "ai": {"transcript": True}}, "adm2", T0
    )
    assert (v1.version, v2.version) == (1, 2)
    assert (await catalog.instructions.add("beta", {}, "adm", T0)).version == 1
    assert await catalog.instructions.latest("acme") == v2
    assert await catalog.instructions.history("acme") == [v1, v2]
    assert (await catalog.instructions.get("acme", 1)).document == {"recording": {"enabled": True}}
    assert (await catalog.instructions.get("acme", 2)).created_by == "adm2"
    with pytest.raises(NotFound):
        await catalog.instructions.get("acme", 3)
    with pytest.raises(NotFound):
        await catalog.instructions.get("beta", 2)
    with pytest.raises(NotFound):
        await catalog.instructions.add("nope", {}, "adm", T0)
    await catalog.tenants.mark_deleted("beta", T0)
    with pytest.raises(NotFound):
        await catalog.instructions.add("beta", {}, "adm", T0)


async def test_concurrent_instruction_changes_get_consecutive_versions(
    catalog: Catalog, database_url: str
) -> None:
    await add_tenant(catalog)
    other = await Catalog.open(database_url, audit_keys=catalog.core.audit_keys)  # a second node
    try:
        results = await asyncio.gather(
            *(
                (catalog if n % 2 else other).instructions.add("acme", {"n": n}, f"a{n}", T0)
                for n in range(20)
            )
        )
    finally:
        await other.close()
    assert sorted(r.version for r in results) == list(range(1, 21))
    history = await catalog.instructions.history("acme")
    assert [h.version for h in history] == list(range(1, 21))
    assert sorted(h.document["n"] for h in history) == list(range(20))


# --- the key table ------------------------------------------------------------------------


async def test_key_table_round_trip_and_tenant_scope(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    row = key_row("obj-1")
    await catalog.keys.put(row)
    assert await catalog.keys.get("obj-1", "acme") == row
    with pytest.raises(KeyUnavailable):
        await catalog.keys.get("obj-1", "beta")
    with pytest.raises(Conflict):
        await catalog.keys.put(replace(row, wrapped_dek=b"other"))
    with pytest.raises(NotFound):
        await catalog.keys.put(key_row("obj-2", tenant_id="nope"))


async def test_shredding_deletes_the_key_row(catalog: Catalog, raw: AsyncEngine) -> None:
    await add_tenant(catalog)
    await catalog.keys.put(key_row("obj-1"))
    await catalog.keys.put(key_row("obj-2"))

    assert await catalog.keys.delete("obj-1") is True
    assert (
        await scalar(raw, "SELECT count(*) FROM object_keys WHERE object_id = :id", id="obj-1") == 0
    )
    with pytest.raises(KeyUnavailable, match="shredded or never existed"):
        await catalog.keys.get("obj-1", "acme")
    assert await catalog.keys.delete("obj-1") is False
    assert (await catalog.keys.get("obj-2", "acme")).object_id == "obj-2"


async def test_a_shredded_key_leaves_no_bytes_in_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = await Catalog.open(f"sqlite:///{path}", audit_keys=audit_keyring(tmp_path / "k"))
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await catalog.migrate()
        await add_tenant(catalog)
        shredded, control = secrets.token_bytes(48), secrets.token_bytes(48)
        await catalog.keys.put(replace(key_row("obj-1"), wrapped_dek=shredded))
        await catalog.keys.put(replace(key_row("obj-2"), wrapped_dek=control))
        await execute(engine, "PRAGMA wal_checkpoint(TRUNCATE)")
        assert shredded in path.read_bytes() and control in path.read_bytes()

        # The control: a plain DELETE leaves the bytes in the page's free space...
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA secure_delete = OFF")
            await conn.execute(sa.text("DELETE FROM object_keys WHERE object_id = 'obj-2'"))
            await conn.commit()
        await execute(engine, "PRAGMA wal_checkpoint(TRUNCATE)")
        assert control in path.read_bytes()

        # ...the catalog's shred does not.
        assert await catalog.keys.delete("obj-1")
        await execute(engine, "PRAGMA wal_checkpoint(TRUNCATE)")
        assert shredded not in path.read_bytes()
        wal = path.with_name(path.name + "-wal")
        assert not wal.exists() or shredded not in wal.read_bytes()
    finally:
        await engine.dispose()
        await catalog.close()


async def test_a_wal_a_reader_holds_is_warned_about_and_truncated_once_it_lets_go(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process reading the catalog keeps the WAL from being truncated after a
    shred: what stays in it is logged (no key), and the next shred truncates it."""
    path = tmp_path / "catalog.sqlite3"
    wal = path.with_name(path.name + "-wal")
    catalog = await Catalog.open(f"sqlite:///{path}", audit_keys=audit_keyring(tmp_path / "keys"))
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await catalog.migrate()
        await add_tenant(catalog)
        shredded = secrets.token_bytes(48)
        await catalog.keys.put(replace(key_row("obj-1"), wrapped_dek=shredded))
        await catalog.keys.put(key_row("obj-2"))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM object_keys").fetchall()
        with caplog.at_level(logging.WARNING, logger="storage.catalog.core"):
            assert await catalog.keys.delete("obj-1")
        (warning,) = [r.getMessage() for r in caplog.records if "not truncated" in r.getMessage()]
        assert str(wal) in warning and "a reader" in warning
        assert shredded in wal.read_bytes()  # what the warning is about
        assert shredded.hex() not in caplog.text and repr(shredded) not in caplog.text

        reader.execute("COMMIT")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="storage.catalog.core"):
            assert await catalog.keys.delete("obj-2")
        assert "not truncated" not in caplog.text
        assert wal.stat().st_size == 0
        assert shredded not in path.read_bytes()
    finally:
        reader.close()
        await catalog.close()


async def test_list_object_keys_pages_through_one_tenant(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    for n in range(7):
        await catalog.keys.put(key_row(f"obj-{n}"))
    await catalog.keys.put(key_row("obj-b", tenant_id="beta"))
    seen = [row.object_id async for row in catalog.keys.list("acme", page_size=3)]
    assert seen == [f"obj-{n}" for n in range(7)]
    exact = [row.object_id async for row in catalog.keys.list("beta", page_size=1)]
    assert exact == ["obj-b"]
    assert [row async for row in catalog.keys.list("nope")] == []


async def test_rewrap_is_resumable_after_a_crash(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    originals = {f"obj-{n:02d}": key_row(f"obj-{n:02d}") for n in range(10)}
    for row in originals.values():
        await catalog.keys.put(row)
    await catalog.keys.put(key_row("obj-beta", tenant_id="beta"))
    calls: list[str] = []
    crash_on_call = 5  # in the second batch of 3

    async def rewrap(row: ObjectKeyRow) -> tuple[str, int, bytes]:
        calls.append(row.object_id)
        if len(calls) == crash_on_call:
            raise RuntimeError("KMS went away")
        return "acme-kek", 2, b"v2|" + row.wrapped_dek

    later = T0 + timedelta(days=1)
    with pytest.raises(RuntimeError, match="KMS went away"):
        await catalog.keys.rewrap("acme", rewrap, later, target_version=2, batch_size=3)
    rows = {row.object_id: row async for row in catalog.keys.list("acme")}
    assert [k for k, r in sorted(rows.items()) if r.kek_version == 2] == list(originals)[:3]

    calls.clear()
    crash_on_call = 0
    assert await catalog.keys.rewrap("acme", rewrap, later, target_version=2, batch_size=3) == 7
    assert calls == list(originals)[3:]  # finished batches are not redone
    rows = {row.object_id: row async for row in catalog.keys.list("acme")}
    for object_id, original in originals.items():
        assert rows[object_id].kek_version == 2
        assert rows[object_id].wrapped_dek == b"v2|" + original.wrapped_dek  # exactly once
        assert rows[object_id].rewrapped_at == later
    assert (await catalog.keys.get("obj-beta", "beta")).kek_version == 1

    calls.clear()
    assert await catalog.keys.rewrap("acme", rewrap, later, target_version=2) == 0
    assert calls == []


async def test_rewrap_refuses_a_key_wrapped_to_another_version(catalog: Catalog) -> None:
    await add_tenant(catalog)
    await catalog.keys.put(key_row("obj-1"))

    async def stale(row: ObjectKeyRow) -> tuple[str, int, bytes]:
        return row.kek_id, 1, row.wrapped_dek

    with pytest.raises(ValueError, match="expected 2"):
        await catalog.keys.rewrap("acme", stale, T0, target_version=2)
    assert (await catalog.keys.get("obj-1", "acme")).kek_version == 1


async def test_rewrap_does_not_resurrect_a_key_shredded_meanwhile(catalog: Catalog) -> None:
    await add_tenant(catalog)
    await catalog.keys.put(key_row("obj-1"))
    await catalog.keys.put(key_row("obj-2"))

    async def rewrap_and_shred_the_other(row: ObjectKeyRow) -> tuple[str, int, bytes]:
        await catalog.keys.delete("obj-2")
        return row.kek_id, 2, b"new"

    assert await catalog.keys.rewrap("acme", rewrap_and_shred_the_other, T0, target_version=2) == 1
    assert [r.object_id async for r in catalog.keys.list("acme")] == ["obj-1"]


async def test_delete_tenant_object_keys(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    for n in range(3):
        await catalog.keys.put(key_row(f"a{n}"))
    await catalog.keys.put(key_row("b0", tenant_id="beta"))
    assert await catalog.keys.delete_all("acme") == 3
    assert [r async for r in catalog.keys.list("acme")] == []
    assert (await catalog.keys.get("b0", "beta")).object_id == "b0"
    assert await catalog.keys.delete_all("acme") == 0


# --- objects ------------------------------------------------------------------------------


async def test_objects_lifecycle(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    await add_recording(catalog)
    audio = await catalog.objects.add(
        object_id="o1",
        tenant_id="acme",
        kind="audio",
        data_class="recordings",
        store_key="acme/objects/o1",
        now=T0,
        recording_id="rec-1",
        track="inbound",
    )
    assert (audio.state, audio.size, audio.committed_at) == ("writing", None, None)
    transcript = await catalog.objects.add(
        object_id="o2",
        tenant_id="acme",
        kind="transcript",
        data_class="transcripts",
        store_key="acme/objects/o2",
        now=T0 + timedelta(seconds=1),
        recording_id="rec-1",
    )
    loose = await catalog.objects.add(
        object_id="o3",
        tenant_id="acme",
        kind="export",
        data_class="recordings",
        store_key="acme/objects/o3",
        now=T0 + timedelta(seconds=2),
    )

    later = T0 + timedelta(minutes=5)
    committed = await catalog.objects.mark_committed("o1", 1234, later)
    assert (committed.state, committed.size, committed.committed_at) == ("committed", 1234, later)
    assert await catalog.objects.mark_committed("o1", 1234, later + timedelta(1)) == committed
    with pytest.raises(Conflict):
        await catalog.objects.mark_committed("o1", 999, later)
    with pytest.raises(NotFound):
        await catalog.objects.mark_committed("nope", 1, later)
    assert await catalog.objects.get("o1", "acme") == committed
    with pytest.raises(NotFound):
        await catalog.objects.get("o1", "beta")

    assert await catalog.objects.list("acme", recording_id="rec-1") == [committed, transcript]
    assert await catalog.objects.list("acme") == [committed, transcript, loose]
    assert await catalog.objects.list("acme", state="writing") == [transcript, loose]
    assert await catalog.objects.list("beta") == []

    deleted = await catalog.objects.mark_deleted("o1", later + timedelta(days=90))
    assert (deleted.state, deleted.deleted_at) == ("deleted", later + timedelta(days=90))
    again = await catalog.objects.mark_deleted("o1", later + timedelta(days=91))
    assert again.deleted_at == later + timedelta(days=90)
    with pytest.raises(Conflict):
        await catalog.objects.mark_committed("o1", 1234, later)
    with pytest.raises(NotFound):
        await catalog.objects.mark_deleted("nope", later)


async def test_add_object_refuses_bad_input_and_foreign_recordings(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    await add_recording(catalog, "beta", recording_id="rec-b")
    common: dict[str, Any] = {"tenant_id": "acme", "kind": "audio", "now": T0}
    with pytest.raises(NotFound):
        await catalog.objects.add(
            object_id="o1",
            data_class="recordings",
            store_key="acme/objects/o1",
            recording_id="rec-b",
            **common,
        )
    with pytest.raises(ValueError, match="data class"):
        await catalog.objects.add(
            object_id="o1",
            data_class="audio",  # type: ignore[arg-type]
            store_key="acme/objects/o1",
            **common,
        )
    await catalog.objects.add(
        object_id="o1", data_class="recordings", store_key="acme/objects/o1", **common
    )
    with pytest.raises(Conflict):
        await catalog.objects.add(
            object_id="o2", data_class="recordings", store_key="acme/objects/o1", **common
        )


async def test_nothing_is_added_to_a_deleted_recording_or_tenant(catalog: Catalog) -> None:
    """A worker that was busy while a recording or its tenant was erased cannot leave a new
    object behind."""
    await add_tenant(catalog, "acme")
    await add_recording(catalog, "acme", recording_id="rec-a")
    await catalog.recordings.update_status("acme", "rec-a", "deleted", T0, delete_reason="erasure")
    common: dict[str, Any] = {"tenant_id": "acme", "kind": "transcript", "now": T0}
    with pytest.raises(Gone):
        await catalog.objects.add(
            object_id="o1",
            data_class="transcripts",
            store_key="acme/objects/o1",
            recording_id="rec-a",
            **common,
        )
    await catalog.tenants.mark_deleted("acme", T0)
    with pytest.raises(NotFound):
        await catalog.objects.add(
            object_id="o2", data_class="transcripts", store_key="acme/objects/o2", **common
        )
    assert await catalog.objects.list("acme") == []


async def test_add_object_writes_the_key_row_in_the_same_transaction(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await add_tenant(catalog)
    common: dict[str, Any] = {"tenant_id": "acme", "kind": "audio", "data_class": "recordings"}
    await catalog.objects.add(
        object_id="o1", store_key="acme/objects/o1", now=T0, key=key_row("o1"), **common
    )
    assert await catalog.keys.get("o1", "acme") == key_row("o1")

    # The object insert fails (duplicate id): its key row must not be left behind.
    with pytest.raises(Conflict):
        await catalog.objects.add(
            object_id="o1", store_key="acme/objects/o9", now=T0, key=key_row("o1"), **common
        )
    assert await scalar(raw, "SELECT count(*) FROM object_keys") == 1
    # The key insert fails (a key row is already there): the object row must not stay.
    await catalog.keys.put(key_row("o2"))
    with pytest.raises(Conflict):
        await catalog.objects.add(
            object_id="o2", store_key="acme/objects/o2", now=T0, key=key_row("o2"), **common
        )
    assert await scalar(raw, "SELECT count(*) FROM objects") == 1
    with pytest.raises(ValueError, match="key row must belong"):
        await catalog.objects.add(
            object_id="o3", store_key="acme/objects/o3", now=T0, key=key_row("o1"), **common
        )
    assert await scalar(raw, "SELECT count(*) FROM object_keys") == 2


# --- calls and recordings -----------------------------------------------------------------


async def test_calls_are_scoped_to_their_tenant(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    refused = await catalog.calls.create(
        id="CA1",
        tenant_id="acme",
        from_number="+40211111111",
        to_number="+40733333333",
        direction="outbound",
        consent="not_asked",
        transport="rtp",
        codec="pcma",
        sample_rate=8000,
        instructions_version=None,
        decision={"store_recording": False, "ai": []},
        refusal_code="recording_not_instructed",
        started_at=T0,
    )
    assert refused.refusal_code == "recording_not_instructed"
    assert refused.instructions_version is None
    assert await catalog.calls.get("acme", "CA1") == refused
    with pytest.raises(NotFound):
        await catalog.calls.get("beta", "CA1")
    with pytest.raises(Conflict):
        await catalog.calls.create(**{**_call_fields(refused), "refusal_code": None})
    # The same PBX call id in another tenant is a different call.
    await catalog.calls.create(**{**_call_fields(refused), "tenant_id": "beta"})
    with pytest.raises(NotFound):
        await catalog.calls.create(**{**_call_fields(refused), "tenant_id": "nope"})
    with pytest.raises(NotFound):  # no such instructions version
        await catalog.calls.create(
            **{**_call_fields(refused), "id": "CA2", "instructions_version": 7}
        )

    ended = await catalog.calls.end("acme", "CA1", T0 + timedelta(minutes=3))
    assert ended.ended_at == T0 + timedelta(minutes=3)
    assert (await catalog.calls.end("acme", "CA1", T0 + timedelta(hours=1))).ended_at == (
        T0 + timedelta(minutes=3)
    )
    with pytest.raises(NotFound):
        await catalog.calls.end("nope", "CA1", T0)


async def test_an_audiosocket_id_hash_names_one_call_of_a_live_tenant(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    for tenant in ("acme", "beta"):
        await catalog.instructions.add(tenant, {"recording": {"enabled": True}}, "adm", T0)

    async def announce(tenant: str, recording_id: str | None, id_hash: str | None) -> None:
        await catalog.calls.announce(
            id="same-call-id",
            tenant_id=tenant,
            from_number="+40211111111",
            to_number="+40722222222",
            direction="inbound",
            consent="granted",
            transport="audiosocket",
            codec="l16",
            sample_rate=8000,
            instructions_version=1 if recording_id else None,
            decision={"store_recording": bool(recording_id), "ai": []},
            refusal_code=None if recording_id else "recording_not_instructed",
            started_at=T0,
            recording_id=recording_id,
            audiosocket_id_hash=id_hash,
        )

    mine, theirs = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    await announce("acme", "rec-a", mine)
    await announce("beta", "rec-b", theirs)  # the same call id in another tenant
    found = await catalog.calls.find_audiosocket(mine)
    assert found is not None and (found.tenant_id, found.id) == ("acme", "same-call-id")
    assert await catalog.calls.find_audiosocket(hashlib.sha256(b"c").hexdigest()) is None
    with pytest.raises(ValueError, match="accepted"):  # a refused call gets no id
        await announce("acme", None, hashlib.sha256(b"d").hexdigest())
    await add_tenant(catalog, "gamma")
    await catalog.instructions.add("gamma", {"recording": {"enabled": True}}, "adm", T0)
    with pytest.raises(Conflict):  # unique across tenants, so a lookup names one call
        await announce("gamma", "rec-g", mine)
    await catalog.tenants.mark_deleted("beta", T0)
    assert await catalog.calls.find_audiosocket(theirs) is None


async def test_an_audiosocket_call_is_held_to_its_first_peer_and_one_lease(
    catalog: Catalog,
) -> None:
    """The attachment rules as the catalog keeps them for every node: one conditional
    UPDATE per claim, renewal and release, decided on the row whatever process asks."""
    await add_tenant(catalog, "acme")
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    await catalog.calls.announce(
        id="CA1", tenant_id="acme", from_number="+40211111111", to_number="+40722222222",
        direction="inbound", consent="granted", transport="audiosocket", codec="l16",
        sample_rate=8000, instructions_version=1, decision={"store_recording": True, "ai": []},
        refusal_code=None, started_at=T0, recording_id="rec-1",
        audiosocket_id_hash=hashlib.sha256(b"id").hexdigest(),
    )  # fmt: skip
    calls = catalog.calls
    lease = timedelta(seconds=15)

    async def claim(peer: str, holder: str, now: datetime) -> str:
        return await calls.claim_stream(
            "acme", "CA1", peer=peer, holder=holder, now=now, until=now + lease
        )

    assert (await calls.stream_lease("acme", "CA1")).peer is None
    assert await claim("10.0.0.1", "node-a:1", T0) == "attached"
    held = await calls.stream_lease("acme", "CA1")
    assert (held.peer, held.attached_by, held.attached_until) == (
        "10.0.0.1",
        "node-a:1",
        T0 + lease,
    )
    # While the lease runs, any other connection is refused, from either address.
    assert await claim("10.0.0.1", "node-b:1", T0 + timedelta(seconds=14)) == "already_attached"
    assert await claim("10.0.0.2", "node-b:2", T0 + timedelta(seconds=14)) == "already_attached"
    # Renewed by its holder only; a holder that names another call renews nothing.
    renewed = await calls.renew_streams(
        [("acme", "CA1", "node-a:1"), ("acme", "CA1", "node-b:1"), ("acme", "CA2", "x")],
        until=T0 + timedelta(seconds=29),
    )
    assert renewed.renewed == {("acme", "CA1"): False} and not renewed.ended
    assert await claim("10.0.0.1", "node-b:1", T0 + timedelta(seconds=20)) == "already_attached"
    # The holder stops renewing (it crashed): once its lease ran out, another address is
    # still refused, and the first one takes the call over.
    after = T0 + timedelta(seconds=29)
    assert await claim("10.0.0.2", "node-b:2", after) == "peer_mismatch"
    assert await claim("10.0.0.1", "node-b:1", after) == "attached"
    # The old holder wakes up: it renews and releases nothing.
    lost = await calls.renew_streams([("acme", "CA1", "node-a:1")], until=after)
    assert not lost.renewed and not lost.ended
    assert not await calls.release_stream("acme", "CA1", "node-a:1", after)
    assert (await calls.stream_lease("acme", "CA1")).attached_by == "node-b:1"
    # Released by its holder: free again, for the first address only.
    assert await calls.release_stream("acme", "CA1", "node-b:1", after)
    released = await calls.stream_lease("acme", "CA1")
    assert (released.attached_by, released.attached_until) == (None, after)
    assert await claim("10.0.0.2", "node-c:1", after) == "peer_mismatch"
    assert await claim("10.0.0.1", "node-c:1", after) == "attached"
    # An ended call is no one's: no claim, no renewal.
    await calls.end("acme", "CA1", after)
    gone = await calls.renew_streams([("acme", "CA1", "node-c:1")], until=after)
    assert not gone.renewed and gone.ended == {("acme", "CA1")}
    assert await claim("10.0.0.1", "node-c:2", after + lease) == "call_ended"
    with pytest.raises(NotFound):
        await calls.claim_stream(
            "acme", "nope", peer="10.0.0.1", holder="h", now=after, until=after + lease
        )


async def test_a_claim_takes_over_only_the_gone_holder_it_names_and_only_from_the_first_peer(
    catalog: Catalog,
) -> None:
    """A node whose connection is gone but not yet released (its release is in flight, or
    failed) names that holder as ``replaces``: its own PBX's reconnect takes the running
    lease over at once, on the row's condition; a holder it does not name, another
    address, or a holder that no longer holds the call gives it nothing."""
    await add_tenant(catalog, "acme")
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    await catalog.calls.announce(
        id="CA1", tenant_id="acme", from_number="+40211111111", to_number="+40722222222",
        direction="inbound", consent="granted", transport="audiosocket", codec="l16",
        sample_rate=8000, instructions_version=1, decision={"store_recording": True, "ai": []},
        refusal_code=None, started_at=T0, recording_id="rec-1",
        audiosocket_id_hash=hashlib.sha256(b"id").hexdigest(),
    )  # fmt: skip
    calls = catalog.calls
    lease = timedelta(seconds=15)
    now = T0 + timedelta(seconds=1)

    async def claim(peer: str, holder: str, replaces: str | None) -> str:
        return await calls.claim_stream(
            "acme", "CA1", peer=peer, holder=holder, now=now, until=now + lease,
            replaces=replaces,
        )  # fmt: skip

    assert await claim("10.0.0.1", "node-a:1", None) == "attached"
    assert await claim("10.0.0.1", "node-a:2", "node-a:9") == "already_attached"
    assert await claim("10.0.0.2", "node-a:2", "node-a:1") == "peer_mismatch"
    assert await claim("10.0.0.1", "node-a:2", "node-a:1") == "attached"
    taken = await calls.stream_lease("acme", "CA1")
    assert (taken.attached_by, taken.attached_until) == ("node-a:2", now + lease)
    # The old holder's late release and a second claim naming it change nothing.
    assert not await calls.release_stream("acme", "CA1", "node-a:1", now)
    assert await claim("10.0.0.1", "node-a:3", "node-a:1") == "already_attached"
    assert (await calls.stream_lease("acme", "CA1")).attached_by == "node-a:2"


async def test_a_websocket_stream_holds_its_call_by_lease_alone(catalog: Catalog) -> None:
    """Twilio and fork streams claim their call like AudioSocket's connections, one at a
    time, but prove their token, not an address: no peer is kept, and once the lease is
    released or ran out any stream of the tenant's may take the call (the PBX's
    reconnect, on any node)."""
    await add_tenant(catalog, "acme")
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    await catalog.calls.announce(
        id="CA1", tenant_id="acme", from_number="+40211111111", to_number="+40722222222",
        direction="inbound", consent="granted", transport="twilio", codec="pcmu",
        sample_rate=8000, instructions_version=1, decision={"store_recording": True, "ai": []},
        refusal_code=None, started_at=T0, recording_id="rec-1",
    )  # fmt: skip
    calls = catalog.calls
    lease = timedelta(seconds=15)

    async def claim(holder: str, now: datetime) -> str:
        return await calls.claim_stream("acme", "CA1", holder=holder, now=now, until=now + lease)

    assert await claim("node-a:1:s1", T0) == "attached"
    held = await calls.stream_lease("acme", "CA1")
    assert (held.peer, held.attached_by, held.attached_until) == (None, "node-a:1:s1", T0 + lease)
    assert await claim("node-b:1:s1", T0 + timedelta(seconds=14)) == "already_attached"
    assert await calls.release_stream("acme", "CA1", "node-a:1:s1", T0 + timedelta(seconds=2))
    assert await claim("node-b:1:s1", T0 + timedelta(seconds=2)) == "attached"
    assert await claim("node-a:1:s2", T0 + timedelta(seconds=3)) == "already_attached"
    # Node B stops renewing: once its lease ran out, the next stream takes the call.
    assert await claim("node-a:1:s2", T0 + timedelta(seconds=17)) == "attached"
    assert (await calls.stream_lease("acme", "CA1")).peer is None


async def test_a_restarted_node_releases_the_leases_of_its_earlier_runs_only(
    catalog: Catalog,
) -> None:
    """At start a node releases the leases its earlier runs held (named ``<node>:<run>:``),
    so its PBXs reconnect at once; its own run's, another node's (whose name it begins
    like) and an ended call's lease stay as they are."""
    await add_tenant(catalog, "acme")
    await catalog.instructions.add("acme", {"recording": {"enabled": True}}, "adm", T0)
    holders = {
        "CA1": "node_a:41.x:s1",  # an earlier run of node_a
        "CA2": "node_a:41.x:s2",  # the same, its call ended
        "CA3": "node_a:42.y:s1",  # this run
        "CA4": "nodeXa:41.x:s1",  # another node ('_' is no wildcard)
        "CA5": "node_a2:41.x:s1",  # another node, whose name begins like it
    }
    lease = T0 + timedelta(seconds=15)
    for call_id, holder in holders.items():
        await catalog.calls.announce(
            id=call_id, tenant_id="acme", from_number="+40211111111", to_number="+4072222",
            direction="inbound", consent="granted", transport="fork", codec="l16",
            sample_rate=8000, instructions_version=1,
            decision={"store_recording": True, "ai": []}, refusal_code=None, started_at=T0,
            recording_id=f"rec-{call_id}",
        )  # fmt: skip
        claimed = await catalog.calls.claim_stream(
            "acme", call_id, holder=holder, now=T0, until=lease
        )
        assert claimed == "attached"
    await catalog.calls.end("acme", "CA2", T0)
    now = T0 + timedelta(seconds=1)

    assert await catalog.calls.release_streams_of("node_a", keep="node_a:42.y:", now=now) == 1
    leases = {c: await catalog.calls.stream_lease("acme", c) for c in holders}
    assert (leases["CA1"].attached_by, leases["CA1"].attached_until) == (None, now)
    for call_id in ("CA2", "CA3", "CA4", "CA5"):
        assert (leases[call_id].attached_by, leases[call_id].attached_until) == (
            holders[call_id],
            lease,
        )
    assert (
        await catalog.calls.claim_stream(
            "acme", "CA1", holder="node_a:42.y:s9", now=now, until=lease
        )
        == "attached"
    )


def _call_fields(call: Any) -> dict[str, Any]:
    fields = {k: getattr(call, k) for k in call.__dataclass_fields__}
    del fields["ended_at"], fields["paused"], fields["first_streamed_at"]
    return fields


async def test_recording_lifecycle(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    await add_recording(catalog)
    rec = await catalog.recordings.get("acme", "rec-1")
    assert (rec.status, rec.call_id, rec.instructions_version, rec.audio_purged) == (
        "recording",
        "call-1",
        1,
        False,
    )
    with pytest.raises(NotFound):
        await catalog.recordings.get("beta", "rec-1")
    with pytest.raises(NotFound):
        await catalog.recordings.update_status("beta", "rec-1", "processing", T0)

    t1 = T0 + timedelta(minutes=2)
    processing = await catalog.recordings.update_status("acme", "rec-1", "processing", t1)
    assert (processing.status, processing.ended_at) == ("processing", t1)
    analyzed = await catalog.recordings.update_status(
        "acme", "rec-1", "analyzed", t1 + timedelta(seconds=30), audio_purged=True
    )
    assert (analyzed.status, analyzed.audio_purged, analyzed.ended_at) == ("analyzed", True, t1)
    with pytest.raises(Conflict, match="is analyzed"):
        await catalog.recordings.update_status("acme", "rec-1", "processing", t1)
    t2 = T0 + timedelta(days=90)
    deleted = await catalog.recordings.update_status(
        "acme", "rec-1", "deleted", t2, delete_reason="retention"
    )
    assert (deleted.status, deleted.deleted_at, deleted.delete_reason) == (
        "deleted",
        t2,
        "retention",
    )
    again = await catalog.recordings.update_status("acme", "rec-1", "deleted", t2 + timedelta(1))
    assert again.deleted_at == t2
    with pytest.raises(Conflict):
        await catalog.recordings.update_status("acme", "rec-1", "recorded", t2)

    await add_recording(catalog, call_id="call-2", recording_id="rec-2")
    failed = await catalog.recordings.update_status(
        "acme", "rec-2", "failed", t1, ended_at=T0 + timedelta(minutes=1), failure_reason="x" * 5000
    )
    assert failed.ended_at == T0 + timedelta(minutes=1)
    assert failed.failure_reason is not None and len(failed.failure_reason) == 2000
    with pytest.raises(NotFound):
        await catalog.recordings.create(
            id="rec-3", tenant_id="acme", call_id="no-such-call", instructions_version=1, now=T0
        )
    with pytest.raises(Conflict):
        await catalog.recordings.create(
            id="rec-2", tenant_id="acme", call_id="call-2", instructions_version=1, now=T0
        )


# --- jobs ---------------------------------------------------------------------------------


async def test_jobs_are_leased_retried_and_finished(catalog: Catalog) -> None:
    await add_tenant(catalog)
    await add_recording(catalog)
    lease = timedelta(minutes=5)
    job = await catalog.jobs.enqueue(
        id="j1", tenant_id="acme", kind="analyze", now=T0, recording_id="rec-1", max_attempts=2
    )
    assert (job.status, job.attempts, job.run_after) == ("queued", 0, T0)
    await catalog.jobs.enqueue(
        id="j2", tenant_id="acme", kind="purge", now=T0, run_after=T0 + timedelta(hours=1)
    )
    assert await catalog.jobs.claim("w1", T0 - timedelta(seconds=1), lease) is None

    claimed = await catalog.jobs.claim("w1", T0, lease, kinds=["analyze"])
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.attempts) == ("j1", "running", 1)
    assert (claimed.lease_owner, claimed.lease_until) == ("w1", T0 + lease)
    assert await catalog.jobs.claim("w2", T0 + timedelta(minutes=1), lease) is None

    # w1 dies; once its lease runs out, w2 takes the job over and w1 can no longer finish it.
    taken = await catalog.jobs.claim("w2", T0 + lease, lease)
    assert taken is not None
    assert (taken.id, taken.lease_owner, taken.attempts) == ("j1", "w2", 2)
    with pytest.raises(Conflict, match="not leased to 'w1'"):
        await catalog.jobs.complete("j1", "w1", T0 + lease)
    retry_at = T0 + timedelta(minutes=20)
    last = await catalog.jobs.fail("j1", "w2", "boom", T0 + lease, retry_at=retry_at)
    assert (last.status, last.last_error) == ("failed", "boom")  # no attempts left

    purge = await catalog.jobs.claim("w1", T0 + timedelta(hours=1), lease)
    assert purge is not None and purge.id == "j2"
    requeued = await catalog.jobs.fail(
        "j2", "w1", "e" * 5000, T0 + timedelta(hours=1), retry_at=retry_at
    )
    assert (requeued.status, requeued.run_after, requeued.lease_owner) == ("queued", retry_at, None)
    assert requeued.last_error is not None and len(requeued.last_error) == 2000
    again = await catalog.jobs.claim("w3", retry_at, lease)
    assert again is not None and (again.id, again.attempts) == ("j2", 2)
    done = await catalog.jobs.complete("j2", "w3", retry_at + timedelta(seconds=3))
    assert (done.status, done.updated_at) == ("done", retry_at + timedelta(seconds=3))
    with pytest.raises(Conflict):
        await catalog.jobs.complete("j2", "w3", retry_at)
    with pytest.raises(NotFound):
        await catalog.jobs.complete("nope", "w3", retry_at)
    assert await catalog.jobs.claim("w1", retry_at + timedelta(days=1), lease) is None


async def test_a_lease_that_runs_out_on_the_last_attempt_fails_the_job(catalog: Catalog) -> None:
    await add_tenant(catalog)
    await catalog.jobs.enqueue(id="j1", tenant_id="acme", kind="analyze", now=T0, max_attempts=1)
    lease = timedelta(minutes=1)
    assert await catalog.jobs.claim("w1", T0, lease) is not None
    assert await catalog.jobs.claim("w2", T0 + lease, lease) is None
    with pytest.raises(Conflict, match="it is failed"):
        await catalog.jobs.complete("j1", "w1", T0 + lease)


async def test_an_exhausted_job_can_be_handed_out_to_record_its_failure(
    catalog: Catalog,
) -> None:
    await add_tenant(catalog)
    await catalog.jobs.enqueue(id="j1", tenant_id="acme", kind="analyze", now=T0, max_attempts=1)
    lease = timedelta(minutes=1)
    assert await catalog.jobs.claim("w1", T0, lease) is not None
    last = await catalog.jobs.claim("w2", T0 + lease, lease, hand_out_exhausted=True)
    assert last is not None
    assert (last.status, last.attempts, last.max_attempts, last.lease_owner) == (
        "running",
        2,
        1,
        "w2",
    )
    failed = await catalog.jobs.fail("j1", "w2", "the worker died", T0 + lease)
    assert failed.status == "failed"


async def test_leases_are_renewed_and_jobs_handed_back_uncounted(catalog: Catalog) -> None:
    await add_tenant(catalog)
    await catalog.jobs.enqueue(
        id="j1", tenant_id="acme", kind="analyze", now=T0, payload={"event": "x"}
    )
    lease = timedelta(minutes=1)
    claimed = await catalog.jobs.claim("w1", T0, lease)
    assert claimed is not None and claimed.payload == {"event": "x"}
    renewed = await catalog.jobs.renew_lease("j1", "w1", T0 + timedelta(seconds=40), lease)
    assert renewed.lease_until == T0 + timedelta(seconds=100)
    # Ran out but nobody took it: still w1's, renewed.
    late = await catalog.jobs.renew_lease("j1", "w1", T0 + timedelta(minutes=5), lease)
    assert late.lease_until == T0 + timedelta(minutes=6)
    deferred = await catalog.jobs.defer(
        "j1", "w1", "audio in a spool", T0 + timedelta(minutes=5), run_after=T0 + timedelta(hours=1)
    )
    assert (deferred.status, deferred.attempts, deferred.lease_owner) == ("queued", 0, None)
    assert deferred.last_error == "audio in a spool"
    assert await catalog.jobs.claim("w2", T0 + timedelta(minutes=59), lease) is None
    taken = await catalog.jobs.claim("w2", T0 + timedelta(hours=1), lease)
    assert taken is not None and (taken.attempts, taken.lease_owner) == (1, "w2")
    with pytest.raises(Conflict):  # w1 lost it to w2
        await catalog.jobs.renew_lease("j1", "w1", T0 + timedelta(hours=1), lease)
    with pytest.raises(Conflict):
        await catalog.jobs.defer("j1", "w1", "x", T0, run_after=T0)
    assert [job.id for job in await catalog.jobs.list("acme", kind="analyze")] == ["j1"]
    assert await catalog.jobs.list("acme", kind="webhook") == []


async def test_concurrent_claimers_never_get_the_same_job(
    catalog: Catalog, database_url: str
) -> None:
    await add_tenant(catalog)
    for n in range(30):
        await catalog.jobs.enqueue(id=f"j{n:02d}", tenant_id="acme", kind="analyze", now=T0)
    other = await Catalog.open(database_url, audit_keys=catalog.core.audit_keys)  # 2nd node
    claims: Counter[str] = Counter()

    async def worker(node: Catalog, owner: str) -> list[str]:
        mine = []
        while (job := await node.jobs.claim(owner, T0, timedelta(minutes=5))) is not None:
            claims[job.id] += 1
            mine.append(job.id)
        return mine

    try:
        results = await asyncio.gather(
            worker(catalog, "w1"), worker(other, "w2"), worker(catalog, "w3"), worker(other, "w4")
        )
    finally:
        await other.close()
    assert sorted(claims) == [f"j{n:02d}" for n in range(30)]
    assert set(claims.values()) == {1}
    assert sum(len(r) for r in results) == 30


# --- audit --------------------------------------------------------------------------------


def expected_hash(key: bytes, prev_hash: str, body: dict[str, Any]) -> str:
    """The chain's definition, written out independently of the product code."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = bytes.fromhex(prev_hash) + canonical.encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def audit_key(catalog: Catalog, tenant_id: str = "acme") -> bytes:
    """The tenant's audit key, from the keyring the catalog was opened with."""
    found = await catalog.core.audit_keys.audit_key(tenant_id)
    assert found is not None and found.active
    return found.key


async def append_events(catalog: Catalog, n: int, tenant_id: str = "acme") -> None:
    for i in range(n):
        await catalog.audit.append(
            tenant_id,
            f"token-{i}",
            "recording.read",
            f"rec-{i}",
            {"bytes": i, "range": [0, i], "note": "ünïcode"},
            T0 + timedelta(seconds=i, microseconds=7),
        )


async def test_audit_chain(catalog: Catalog) -> None:
    await add_tenant(catalog, "acme")
    await add_tenant(catalog, "beta")
    await append_events(catalog, 5)
    await catalog.audit.append("beta", "op", "tenant.created", None, {}, T0)

    events = await catalog.audit.list("acme")
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    key = await audit_key(catalog)
    assert key != await audit_key(catalog, "beta")  # one key per tenant
    prev = "0" * 64
    for event in events:
        body = {
            "seq": event.seq,
            "at": event.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": event.actor,
            "action": event.action,
            "object": event.object,
            "detail": event.detail,
        }
        assert event.prev_hash == prev
        assert event.hash == expected_hash(key, prev, body)
        prev = event.hash
    assert events[1].at == T0 + timedelta(seconds=1, microseconds=7)
    assert events[1].detail == {"bytes": 1, "range": [0, 1], "note": "ünïcode"}

    assert [e.seq for e in await catalog.audit.list("acme", since_seq=2, limit=2)] == [3, 4]
    assert [e.seq for e in await catalog.audit.list("beta")] == [1]
    assert await catalog.audit.verify("acme") == AuditCheck(ok=True, broken_at=None, count=5)
    ok, broken_at, count = await catalog.audit.verify("beta")
    assert (ok, broken_at, count) == (True, None, 1)

    # A deleted tenant's erasure is still logged.
    await catalog.tenants.mark_deleted("beta", T0)
    await catalog.audit.append("beta", "op", "tenant.deleted", "beta", {"keys": 0}, T0)
    assert await catalog.audit.verify("beta") == AuditCheck(True, None, 2)

    with pytest.raises(NotFound):
        await catalog.audit.append("nope", "op", "x", None, {}, T0)
    with pytest.raises(NotFound):
        await catalog.audit.verify("nope")
    with pytest.raises(ValueError, match="never content"):
        await catalog.audit.append("acme", "op", "x", None, {"text": "a" * 5000}, T0)


async def test_audit_verify_detects_an_altered_row(catalog: Catalog, raw: AsyncEngine) -> None:
    await add_tenant(catalog)
    await append_events(catalog, 5)
    changed = await execute(
        raw,
        "UPDATE audit_events SET detail = :d WHERE tenant_id = 'acme' AND seq = 3",
        d=json.dumps({"bytes": 999, "range": [0, 2], "note": "ünïcode"}),
    )
    assert changed == 1
    assert await catalog.audit.verify("acme") == AuditCheck(False, 3, 5, reason="chain")


async def test_audit_verify_detects_a_removed_row(catalog: Catalog, raw: AsyncEngine) -> None:
    await add_tenant(catalog)
    await append_events(catalog, 5)
    await execute(raw, "DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = 2")
    assert await catalog.audit.verify("acme") == AuditCheck(False, 2, 4, reason="chain")


async def test_audit_verify_detects_a_removed_last_row(catalog: Catalog, raw: AsyncEngine) -> None:
    await add_tenant(catalog)
    await append_events(catalog, 5)
    await execute(raw, "DELETE FROM audit_events WHERE tenant_id = 'acme' AND seq = 5")
    assert await catalog.audit.verify("acme") == AuditCheck(False, 5, 4, reason="head")


async def test_audit_verify_detects_swapped_rows(catalog: Catalog, raw: AsyncEngine) -> None:
    await add_tenant(catalog)
    await append_events(catalog, 5)
    swap = "UPDATE audit_events SET seq = :new WHERE tenant_id = 'acme' AND seq = :old"
    await execute(raw, swap, old=2, new=100)
    await execute(raw, swap, old=3, new=2)
    await execute(raw, swap, old=100, new=3)
    assert await catalog.audit.verify("acme") == AuditCheck(False, 2, 5, reason="chain")


async def test_audit_verify_detects_a_forged_event_past_the_head(
    catalog: Catalog, raw: AsyncEngine
) -> None:
    await add_tenant(catalog)
    await append_events(catalog, 2)
    last = (await catalog.audit.list("acme"))[-1]
    at = T0 + timedelta(hours=1)
    body = {"seq": 3, "at": "2026-11-27T11:00:00.000000Z", "actor": "x", "action": "y"}
    # Even with the tenant's key (which a database writer does not have), an event past the
    # head is found.
    forged = expected_hash(
        await audit_key(catalog), last.hash, {**body, "object": None, "detail": {}}
    )
    inserted = await execute(
        raw,
        "INSERT INTO audit_events (tenant_id, seq, at, actor, action, object, detail,"
        " prev_hash, hash) VALUES ('acme', 3, :at, 'x', 'y', NULL, '{}', :prev, :hash)",
        at=at if catalog.backend == "postgresql" else at.replace(tzinfo=None),
        prev=last.hash,
        hash=forged,
    )
    assert inserted == 1
    assert (await catalog.audit.list("acme"))[-1].hash == forged  # a well-formed link...
    # ...that the tenant's chain head does not know of.
    assert await catalog.audit.verify("acme") == AuditCheck(False, 3, 3, reason="head")


async def test_concurrent_audit_appends_keep_one_chain(catalog: Catalog, database_url: str) -> None:
    await add_tenant(catalog)
    other = await Catalog.open(database_url, audit_keys=catalog.core.audit_keys)
    try:
        events = await asyncio.gather(
            *(
                (catalog if n % 2 else other).audit.append(
                    "acme", f"a{n}", "audio.read", f"rec-{n}", {"n": n}, T0
                )
                for n in range(30)
            )
        )
    finally:
        await other.close()
    assert sorted(e.seq for e in events) == list(range(1, 31))
    assert await catalog.audit.verify("acme") == AuditCheck(ok=True, broken_at=None, count=30)


# --- failures -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_postgresql_is_catalog_unavailable_without_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://callvault:hunter2secret@127.0.0.1:{closed_port()}/callvault"
    catalog = await Catalog.open(
        url, audit_keys=audit_keyring(tmp_path / "keys"), connect_timeout_s=5
    )
    try:
        for attempt in (catalog.check(), catalog.tenants.get("acme"), catalog.migrate()):
            with pytest.raises(CatalogUnavailable) as caught:
                await attempt
            assert "hunter2secret" not in str(caught.value)
            assert "callvault:***@127.0.0.1" in str(caught.value)
    finally:
        await catalog.close()


async def test_an_unopenable_sqlite_file_is_catalog_unavailable(tmp_path: Path) -> None:
    (tmp_path / "catalog.sqlite3").mkdir()  # a directory where the file should be
    catalog = await Catalog.open(
        f"sqlite:///{tmp_path / 'catalog.sqlite3'}", audit_keys=audit_keyring(tmp_path / "keys")
    )
    try:
        with pytest.raises(CatalogUnavailable, match="catalog.sqlite3"):
            await catalog.check()
    finally:
        await catalog.close()
        await aiosqlite_workers_finished()


async def aiosqlite_workers_finished(timeout_s: float = 5.0) -> None:
    """Let aiosqlite's worker threads end while this test's loop still runs.

    After a failed connect aiosqlite queues a stop that nobody awaits (aiosqlite 0.22,
    ``Connection._connect``); its thread then reports to the loop that created it. If the
    test has ended and its loop is closed by then, the thread raises "Event loop is closed"
    and pytest blames whichever test runs next.
    """
    deadline = time.monotonic() + timeout_s
    while any(
        thread.name.endswith("(_connection_worker_thread)") and thread.is_alive()
        for thread in threading.enumerate()
    ):
        assert time.monotonic() < deadline, "aiosqlite worker threads did not finish"
        await asyncio.sleep(0.01)


async def test_open_creates_the_data_dir_for_sqlite(tmp_path: Path) -> None:
    catalog = await Catalog.open(
        f"sqlite:///{tmp_path / 'var' / 'deep' / 'catalog.sqlite3'}",
        audit_keys=audit_keyring(tmp_path / "keys"),
    )
    try:
        await catalog.migrate()
        await catalog.check()
        assert catalog.backend == "sqlite"
    finally:
        await catalog.close()
    assert (tmp_path / "var" / "deep" / "catalog.sqlite3").is_file()


async def test_a_numbers_calls_and_recordings_page_oldest_first_up_to_the_count(
    catalog: Catalog,
) -> None:
    """The export's reads: keyset pages in call order ((started_at, id), a tie broken by the
    id), bounded by the last call the count saw, so a call that starts after it is not in a
    read that began before it; another number's or tenant's calls are never in it."""
    number = "+40711111111"
    for tenant in ("acme", "beta"):
        await add_tenant(catalog, tenant)
        await catalog.instructions.add(tenant, {"recording": {"enabled": True}}, "adm", T0)

    async def announce(tenant: str, call_id: str, at: float, *, caller: str = number,
                       refused: bool = False) -> None:  # fmt: skip
        await catalog.calls.announce(
            id=call_id,
            tenant_id=tenant,
            from_number=caller,
            to_number="+40722222222",
            direction="inbound",
            consent="granted",
            transport="twilio",
            codec="pcmu",
            sample_rate=8000,
            instructions_version=None if refused else 1,
            decision={"store_recording": not refused, "ai": []},
            refusal_code="recording_not_instructed" if refused else None,
            started_at=T0 + timedelta(seconds=at),
            recording_id=None if refused else f"rec-{call_id}",
        )

    for call_id, at in (("c3", 3), ("c1b", 1), ("c1a", 1), ("c0", 0), ("c2", 2)):
        await announce("acme", call_id, at)
    await announce("acme", "refused", 1.5, refused=True)
    await announce("acme", "other", 1.2, caller="+40733333333")
    await announce("beta", "theirs", 1.1)
    order = ["c0", "c1a", "c1b", "refused", "c2", "c3"]

    scope = await catalog.calls.count_of_number("acme", number)
    assert (scope.calls, scope.recordings) == (6, 5)
    assert scope.last == (T0 + timedelta(seconds=3), "c3")
    await announce("acme", "late", 4)  # a call that starts after the count

    async def paged_calls(limit: int) -> list[str]:
        seen: list[str] = []
        after = None
        while page := await catalog.calls.of_number(
            "acme", number, after=after, through=scope.last, limit=limit
        ):
            seen += [call.id for call in page]
            after = (page[-1].started_at, page[-1].id)
        return seen

    async def paged_recordings(through: Any) -> list[str]:
        seen: list[str] = []
        after = None
        while page := await catalog.recordings.of_number(
            "acme", number, after=after, through=through, limit=2
        ):
            seen += [call.id for _, call in page]
            recording, call = page[-1]
            after = (call.started_at, call.id, recording.id)
        return seen

    assert await paged_calls(2) == await paged_calls(100) == order
    assert await paged_recordings(scope.last) == ["c0", "c1a", "c1b", "c2", "c3"]
    assert (await paged_recordings(None))[-1] == "late"
    assert [c.id for c in await catalog.calls.of_number("acme", number)] == [*order, "late"]
    assert await catalog.calls.count_of_number("acme", "+40700000000") == NumberCalls(0, 0, None)
