"""The keyring kept in the catalog (``CALLVAULT_KEYS__PROVIDER=catalog``) on real databases:
the keyring itself on SQLite (a temporary file, always) and PostgreSQL at 127.0.0.1:5432
(skipped when unreachable, failed instead when ``CALLVAULT_TEST_REQUIRE_PARTS=1``); the
provider as ``serve`` opens it on PostgreSQL only, which it needs (a SQLite catalog is
refused, and that is tested too).

Two ``LocalKeyring`` instances on one catalog are two nodes of a fleet: what one changes
(a KEK destroyed, rotated or retired, an audit key made, the master key rotated) the other
sees at its very next operation. Two OS processes writing at once lose no update. A node's
local keyring moves into the catalog (``callvault keys to-catalog``) and what it sealed
opens from there, on any node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError, KeyUnavailable
from crypto.keyfile import NEW, OLD
from crypto.keys import KEYRING_FILE, LocalKeyring, WrappedKey
from crypto.objectformat import generate_dek
from gateway.cli import main
from gateway.keyadmin import warn_about_master_key
from gateway.services import open_keyring, open_services
from gateway.settings import Settings
from storage.catalog.schema import keyring as keyring_table
from storage.catalog.urls import sync_database_url
from storage.errors import CatalogUnavailable
from storage.keyring import CatalogBacking
from tests.leaks import WATCH

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def postgres_only(test: Any) -> Any:
    """The marks of a test that runs on PostgreSQL only (``database_url_postgresql``)."""
    return pytest.mark.integration(pytest.mark.postgres(test))


ROOT = Path(__file__).resolve().parents[2]


def new_master_key() -> bytes:
    """A random master key the secret watch looks for in every log line of the run."""
    key = os.urandom(32)
    WATCH.remember("master key", key)
    return key


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture
def master() -> bytes:
    return new_master_key()


@pytest.fixture
def opened() -> Iterator[list[LocalKeyring]]:
    """Keyrings ``node`` opened in the test, closed after it."""
    keyrings: list[LocalKeyring] = []
    yield keyrings
    for keyring in keyrings:
        keyring.close()


def node(url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]) -> LocalKeyring:
    """One node's keyring on the catalog ``url`` (a backing and engine of its own)."""
    keyring = LocalKeyring.open_backing(CatalogBacking.open(url, tmp_path), master)
    opened.append(keyring)
    return keyring


def row(url: str, tmp_path: Path) -> tuple[int, bytes]:
    """The keyring row as stored: its version and document (read apart from any keyring)."""
    engine = sa.create_engine(sync_database_url(url, tmp_path))
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.select(keyring_table.c.version, keyring_table.c.document)).one()
            assert conn.execute(sa.select(sa.func.count()).select_from(keyring_table)).scalar() == 1
    finally:
        engine.dispose()
    return found.version, bytes(found.document)


# --- the keyring's behaviour through the catalog backing ----------------------------------


async def test_wrap_rotate_destroy_and_the_tombstone_through_the_catalog(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    keyring = node(database_url, tmp_path, master, opened)
    version, document = row(database_url, tmp_path)
    assert version == 1  # the first start made the row, with the master key's check value
    assert master not in document and b64(master).encode() not in document

    dek = generate_dek()
    first = await keyring.wrap("acme", "obj-1", dek)
    assert first.kek_version == 1 and dek not in first.blob
    assert await keyring.unwrap("acme", "obj-1", first) == dek
    with pytest.raises(KeyUnavailable, match="another object"):
        await keyring.unwrap("acme", "obj-2", first)
    assert (await keyring.rotate("acme")).kek_version == 2
    second = await keyring.wrap("acme", "obj-2", dek)
    assert second.kek_version == 2
    assert await keyring.unwrap("acme", "obj-1", first) == dek  # old versions still open
    version, document = row(database_url, tmp_path)
    assert version == 3  # every write counted: the tenant's KEK, then its rotation
    assert dek not in document and b64(dek).encode() not in document

    await keyring.destroy_tenant("acme")
    for wrapped, object_id in ((first, "obj-1"), (second, "obj-2")):
        with pytest.raises(KeyUnavailable, match="no keys exist"):
            await keyring.unwrap("acme", object_id, wrapped)
    # The tombstone: a destroyed tenant never gets a KEK again, here or after a restart.
    restarted = node(database_url, tmp_path, master, opened)
    for each in (keyring, restarted):
        with pytest.raises(KeyUnavailable, match="destroyed; nothing new can be sealed"):
            await each.wrap("acme", "obj-3", generate_dek())
    assert "acme" in json.loads(row(database_url, tmp_path)[1])["destroyed"]


async def test_retire_unused_versions_through_the_catalog(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    a = node(database_url, tmp_path, master, opened)
    b = node(database_url, tmp_path, master, opened)
    dek = generate_dek()
    v1 = await a.wrap("acme", "obj-1", dek)
    await a.rotate("acme")
    v2 = await a.wrap("acme", "obj-2", dek)
    ref = await a.rotate("acme")
    assert await b.unwrap("acme", "obj-1", v1) == dek  # b has v1 unwrapped and cached

    async def in_use() -> set[tuple[str, int]]:
        return {(v2.kek_id, 2)}

    result = await a.retire_unused("acme", in_use)
    assert result is not None
    assert (result.retired, result.kept) == ((1,), (2, 3))
    with pytest.raises(KeyUnavailable, match="unknown, retired or destroyed"):
        await b.unwrap("acme", "obj-1", v1)  # no stale cache on the other node
    assert await b.unwrap("acme", "obj-2", v2) == dek
    assert (await b.wrap("acme", "obj-3", dek)).kek_version == ref.kek_version


async def test_a_kek_destroyed_on_one_node_is_unusable_on_the_other_at_once(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    a = node(database_url, tmp_path, master, opened)
    b = node(database_url, tmp_path, master, opened)
    dek = generate_dek()
    wrapped = await a.wrap("acme", "obj-1", dek)
    assert await b.unwrap("acme", "obj-1", wrapped) == dek  # b now holds the KEK

    await a.destroy_tenant("acme")

    with pytest.raises(KeyUnavailable, match="no keys exist for tenant 'acme'"):
        await b.unwrap("acme", "obj-1", wrapped)
    with pytest.raises(KeyUnavailable, match="destroyed"):
        await b.wrap("acme", "obj-2", dek)


async def test_a_rotation_on_one_node_is_what_the_others_wrap_under_next(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    a = node(database_url, tmp_path, master, opened)
    b = node(database_url, tmp_path, master, opened)
    dek = generate_dek()
    before = await b.wrap("acme", "obj-1", dek)
    assert before.kek_version == 1

    rotated = await a.rotate("acme")

    after = await b.wrap("acme", "obj-2", dek)
    assert (
        (after.kek_id, after.kek_version)
        == (rotated.kek_id, rotated.kek_version)
        == (
            before.kek_id,
            2,
        )
    )
    assert await a.unwrap("acme", "obj-2", after) == dek


async def test_audit_keys_and_the_signing_key_made_on_one_node_are_used_by_the_other(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    a = AuditKeyring(node(database_url, tmp_path, master, opened))
    b = AuditKeyring(node(database_url, tmp_path, master, opened))
    assert await b.audit_key("acme") is None
    made = await a.create_audit_key("acme", pending=False)
    found = await b.audit_key("acme")
    assert found is not None and found.active and found.key == made.key
    # Racing to make one: the other node's is returned, not a second key.
    assert (await b.create_audit_key("acme", pending=False)).key == made.key
    pending = await b.create_audit_key("globex", pending=True, legacy_head=(4, "ab" * 32))
    seen = await a.audit_key("globex")
    assert seen is not None and not seen.active and seen.key == pending.key
    assert seen.made_for(4, "ab" * 32)
    await a.activate_audit_key("globex")
    active = await b.audit_key("globex")
    assert active is not None and active.active and active.key == pending.key

    assert (await a.checkpoint_signer()).key_id == (await b.checkpoint_signer()).key_id
    assert not await b.legacy_closed()
    await a.close_legacy(T0)
    assert await b.legacy_closed()


# --- two OS processes at once --------------------------------------------------------------

WRITER = r"""
import asyncio, base64, json, sys, time
from pathlib import Path
from crypto.keys import LocalKeyring
from crypto.objectformat import generate_dek
from storage.keyring import CatalogBacking

url, data_dir, prefix, go = sys.argv[1:5]
master = base64.b64decode(sys.stdin.readline())
keyring = LocalKeyring.open_backing(CatalogBacking.open(url, Path(data_dir)), master)
print("ready", flush=True)
while not Path(go).exists():
    time.sleep(0.002)

async def make() -> dict:
    made = {}
    for i in range(20):
        tenant, dek = f"{prefix}-{i}", generate_dek()
        wrapped = await keyring.wrap(tenant, "obj", dek)
        blob = base64.b64encode(wrapped.blob).decode()
        made[tenant] = [wrapped.kek_id, wrapped.kek_version, blob, base64.b64encode(dek).decode()]
    return made

print(json.dumps(asyncio.run(make())), flush=True)
keyring.close()
"""


async def test_two_processes_making_keks_at_once_lose_no_update(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    node(database_url, tmp_path, master, opened)  # the row exists: version 1
    go = tmp_path / "go"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            database_url,
            str(tmp_path),
            prefix,
            str(go),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        for prefix in ("left", "right")
    ]
    try:
        for writer in writers:
            assert writer.stdin is not None and writer.stdout is not None
            writer.stdin.write(b64(master).encode() + b"\n")  # never on a command line
            await writer.stdin.drain()
            ready = await asyncio.wait_for(writer.stdout.readline(), 60)
            assert ready == b"ready\n", await writer.communicate()
        go.touch()  # both start writing at the same moment
        outputs = [await asyncio.wait_for(writer.communicate(), 60) for writer in writers]
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
                await writer.wait()
    made: dict[str, list] = {}
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err.decode()
        made |= json.loads(out.decode().strip().splitlines()[-1])

    assert len(made) == 40
    version, document = row(database_url, tmp_path)
    assert version == 41  # one write per tenant's KEK, none lost or merged away
    assert set(json.loads(document)["tenants"]) == set(made)
    reader = node(database_url, tmp_path, master, opened)
    for tenant, (kek_id, kek_version, blob, dek) in made.items():
        wrapped = WrappedKey(kek_id, kek_version, base64.b64decode(blob))
        assert await reader.unwrap(tenant, "obj", wrapped) == base64.b64decode(dek)


# --- the master key ------------------------------------------------------------------------


async def test_a_master_key_rotation_with_two_nodes_open(
    database_url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    new = new_master_key()
    a = node(database_url, tmp_path, master, opened)
    b = node(database_url, tmp_path, master, opened)
    dek = generate_dek()
    wrapped = await a.wrap("acme", "obj-1", dek)

    a.begin_master_rotation(new)  # phase one, from node a

    # Node b, still on the old key, goes on, and makes a new tenant's KEK (old side only).
    assert await b.unwrap("acme", "obj-1", wrapped) == dek
    assert b.rotation_side == OLD
    globex = await b.wrap("globex", "obj-2", dek)
    # Node c, restarted with the new key, opens what was sealed before.
    c = node(database_url, tmp_path, new, opened)
    assert c.rotation_side == NEW
    assert await c.unwrap("acme", "obj-1", wrapped) == dek

    with pytest.raises(KeyUnavailable, match="no new side yet"):
        c.finish_master_rotation(NEW)  # b's value needs the old key to be re-wrapped
    c.finish_master_rotation(NEW, master)

    assert c.rotation_side is None
    assert await c.unwrap("globex", "obj-2", globex) == dek
    for old_node in (a, b):  # the old key opens nothing any more, on any node
        with pytest.raises(ConfigError, match="does not open the catalog keyring") as refused:
            await old_node.unwrap("acme", "obj-1", wrapped)
        assert refused.value.setting == "CALLVAULT_MASTER_KEY"
    document = row(database_url, tmp_path)[1]
    for key in (master, new):
        assert key not in document and b64(key).encode() not in document


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The root logger as it was: the CLI's ``main`` points it at this test's (captured)
    stderr, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, database_url_postgresql: str, tmp_path: Path
) -> Iterator[pytest.MonkeyPatch]:
    """The environment of ``callvault`` commands run in this process: a data dir, the
    test's catalog on PostgreSQL, no other CALLVAULT_ setting but those a test sets."""
    for name in list(os.environ):
        if name.startswith("CALLVAULT_") and name != "CALLVAULT_AI__WORKERS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLVAULT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CALLVAULT_DATABASE_URL", database_url_postgresql)
    return monkeypatch


async def callvault(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``callvault ARGS`` in this process (``main``, in a thread: it runs its own loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


@postgres_only
@pytest.mark.usefixtures("root_logging")
async def test_rotate_master_on_the_command_line_with_the_catalog_keyring(
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    database_url_postgresql: str,
) -> None:
    database_url = database_url_postgresql
    cli_env.setenv("CALLVAULT_KEYS__PROVIDER", "catalog")
    cli_env.delenv("CALLVAULT_MASTER_KEY", raising=False)
    code, _, err = await callvault(capsys, "keys", "rotate-master")
    assert code == 2  # never the data dir's key file for the catalog keyring
    assert err.startswith("callvault: CALLVAULT_MASTER_KEY: must be set when")
    assert not (tmp_path / "var" / "master.key").exists()

    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(master))
    running = node(database_url, tmp_path, master, opened)  # a node that stays up
    dek = generate_dek()
    wrapped = await running.wrap("acme", "obj-1", dek)
    new_file = tmp_path / "new.key"
    code, out, err = await callvault(
        capsys, "keys", "rotate-master", "--generate-new-key", str(new_file)
    )
    assert code == 0, err
    assert "phase one done" in out
    assert await running.unwrap("acme", "obj-1", wrapped) == dek  # the old key goes on
    new = base64.b64decode(new_file.read_text())
    WATCH.remember("master key", new)

    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(new))
    code, out, err = await callvault(capsys, "keys", "rotate-master", "--commit")
    assert code == 0, err
    assert "committed" in out
    with pytest.raises(ConfigError, match="CALLVAULT_MASTER_KEY"):
        await running.unwrap("acme", "obj-1", wrapped)
    restarted = node(database_url, tmp_path, new, opened)
    assert restarted.rotation_side is None
    assert await restarted.unwrap("acme", "obj-1", wrapped) == dek
    for text in (out, err):
        assert b64(master) not in text and b64(new) not in text


# --- opening it, as serve and worker do -----------------------------------------------------


def catalog_settings(data_dir: Path, url: str, master: bytes | None, **extra: object) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=url,
        master_key=b64(master) if master is not None else None,
        keys={"provider": "catalog"},
        **extra,
    )


@postgres_only
def test_the_catalog_keyring_needs_the_master_key_from_the_environment(
    database_url_postgresql: str, tmp_path: Path, master: bytes
) -> None:
    database_url = database_url_postgresql
    data_dir = tmp_path / "var"
    with pytest.raises(ConfigError, match="must be set when CALLVAULT_KEYS__PROVIDER=catalog"):
        open_keyring(catalog_settings(data_dir, database_url, None))
    assert not (data_dir / "master.key").exists()  # no per-node key made behind its back

    open_keyring(catalog_settings(data_dir, database_url, master)).close()
    with pytest.raises(ConfigError, match="does not open the catalog keyring") as refused:
        open_keyring(catalog_settings(data_dir, database_url, new_master_key()))
    assert refused.value.setting == "CALLVAULT_MASTER_KEY"


@pytest.mark.usefixtures("root_logging")
async def test_a_sqlite_catalog_is_refused_for_the_catalog_keyring(
    tmp_path: Path, master: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "var"
    for url in (None, f"sqlite:///{tmp_path / 'catalog.sqlite3'}"):
        with pytest.raises(ConfigError, match="needs the catalog that every node shares") as no:
            open_keyring(Settings(data_dir=data_dir, database_url=url, master_key=b64(master),
                                  keys={"provider": "catalog"}))  # fmt: skip
        assert no.value.setting == "CALLVAULT_KEYS__PROVIDER"
        assert "PostgreSQL" in no.value.message
    LocalKeyring.open(data_dir, master)
    env = {"CALLVAULT_DATA_DIR": str(data_dir), "CALLVAULT_MASTER_KEY": b64(master)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("CALLVAULT_DATABASE_URL", raising=False)
        code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    # Run while the node is still on the local keyring: the setting to change is the URL.
    assert err.startswith("callvault: CALLVAULT_DATABASE_URL: must name a PostgreSQL catalog")
    assert not (data_dir / "catalog.sqlite3").exists()  # nothing was made
    assert not (tmp_path / "catalog.sqlite3").exists()


@postgres_only
async def test_an_object_sealed_by_one_node_opens_on_another(
    database_url_postgresql: str, tmp_path: Path, master: bytes
) -> None:
    database_url = database_url_postgresql
    store = {"url": (tmp_path / "objects").as_uri()}  # one store, as S3 would be
    node_a = catalog_settings(tmp_path / "a", database_url, master, store=store)
    node_b = catalog_settings(tmp_path / "b", database_url, master, store=store)
    async with open_services(node_a) as a:
        await a.catalog.tenants.create("acme", "Acme", "eu", T0)
        record = await a.vault.put_object(
            b"sealed on node a", tenant="acme", kind="transcript", data_class="transcripts", now=T0
        )
        await a.catalog.audit.append("acme", "node-a", "test.a", None, {}, T0)
    async with open_services(node_b) as b:
        assert await b.vault.read_object("acme", record.id) == b"sealed on node a"
        # One audit key for the tenant, whichever node appends: the chain verifies.
        await b.catalog.audit.append("acme", "node-b", "test.b", None, {}, T0)
        assert await b.catalog.checkpoints.make("acme", T0) is not None
    async with open_services(node_a) as a:
        check = await a.catalog.audit.verify("acme")
        assert check.ok and check.checkpoint is not None, check
    assert not (tmp_path / "a" / KEYRING_FILE).exists()
    assert not (tmp_path / "b" / KEYRING_FILE).exists()


# --- keys to-catalog: a local keyring moves into the catalog ---------------------------------


@postgres_only
@pytest.mark.usefixtures("root_logging")
async def test_to_catalog_moves_a_local_keyring_and_what_it_sealed_opens_from_the_catalog(
    cli_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, master: bytes
) -> None:
    data_dir = tmp_path / "var"
    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(master))
    local = Settings()  # the node as it ran: the local keyring, the test's catalog
    store = {"url": local.store_url}
    async with open_services(local) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
        record = await services.vault.put_object(
            b"sealed under the local keyring",
            tenant="acme",
            kind="transcript",
            data_class="transcripts",
            now=T0,
        )
    assert (data_dir / KEYRING_FILE).exists()

    cli_env.setenv("CALLVAULT_KEYS__PROVIDER", "catalog")
    with pytest.raises(ConfigError, match="keys to-catalog") as refused:
        open_keyring(Settings())  # the keys are still only in the local file
    assert refused.value.setting == "CALLVAULT_KEYS__PROVIDER"

    code, out, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 0, err
    assert "copied into the catalog keyring" in out
    assert "CALLVAULT_KEYS__PROVIDER=catalog" in out and "delete" in out
    version, document = row(Settings().catalog_url, tmp_path)
    assert json.loads(document) == json.loads((data_dir / KEYRING_FILE).read_bytes())
    code, out, err = await callvault(capsys, "keys", "to-catalog")  # again: nothing changes
    assert code == 0, err
    assert "was already in the catalog keyring" in out
    assert row(Settings().catalog_url, tmp_path)[0] == version

    # The node on the catalog keyring, and a second node with no local keyring at all.
    for settings in (Settings(), catalog_settings(tmp_path / "b", Settings().catalog_url,
                                                  master, store=store)):  # fmt: skip
        async with open_services(settings) as services:
            assert await services.vault.read_object("acme", record.id) == (
                b"sealed under the local keyring"
            )
            assert (await services.catalog.audit.verify("acme")).ok
    for text in (out, err):
        assert b64(master) not in text


@postgres_only
@pytest.mark.usefixtures("root_logging")
async def test_to_catalog_refuses_other_keys_a_rotation_a_wrong_key_and_no_keyring(
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    database_url_postgresql: str,
) -> None:
    database_url = database_url_postgresql
    data_dir = tmp_path / "var"
    code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    assert err.startswith("callvault: CALLVAULT_MASTER_KEY: must be set")

    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(master))
    code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    assert f"keyring {data_dir / KEYRING_FILE}: does not exist" in err

    local = LocalKeyring.open(data_dir, master)
    await local.wrap("acme", "obj-1", generate_dek())
    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(new_master_key()))
    code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    assert err.startswith("callvault: CALLVAULT_MASTER_KEY: does not open")

    cli_env.setenv("CALLVAULT_MASTER_KEY", b64(master))
    local.begin_master_rotation(new_master_key())
    code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    assert "in the middle of a master-key rotation" in err
    local.finish_master_rotation(OLD)

    # Another node made its own KEK for the same tenant in the catalog keyring first: the
    # two cannot be merged (one KEK id a tenant there), and nothing is overwritten.
    other = node(database_url, tmp_path, master, opened)
    await other.wrap("acme", "obj-2", generate_dek())
    before = row(database_url, tmp_path)
    code, _, err = await callvault(capsys, "keys", "to-catalog")
    assert code == 2
    assert "cannot be merged with; nothing was copied" in err
    assert "tenant 'acme' has KEK" in err
    assert row(database_url, tmp_path) == before


@postgres_only
def test_a_local_keyring_left_beside_the_catalog_keyring_is_warned_about(
    database_url_postgresql: str, tmp_path: Path, master: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    database_url = database_url_postgresql
    settings = catalog_settings(tmp_path / "var", database_url, master)
    open_keyring(settings).close()
    LocalKeyring.open(settings.data_dir, master)  # a keyring.json, copied or not
    with caplog.at_level(logging.WARNING):
        warn_about_master_key(settings)
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events == ["keys.local_keyring_left"]

    keyring = open_keyring(settings)
    keyring.begin_master_rotation(new_master_key())
    keyring.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_about_master_key(settings)
    unfinished = [r for r in caplog.records if getattr(r, "event", None) == (
        "keys.master_rotation_unfinished")]  # fmt: skip
    assert len(unfinished) == 1
    assert "catalog keyring" in unfinished[0].getMessage()


# --- bounds: a stalled holder of the row, and a start off the event loop ----------------------


@contextmanager
def row_held(url: str, tmp_path: Path) -> Iterator[None]:
    """The keyring row locked by another session (a node stalled while it holds the lock)
    for as long as the body runs."""
    engine = sa.create_engine(sync_database_url(url, tmp_path))
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            conn.execute(sa.select(keyring_table.c.version).with_for_update())
            yield
            transaction.rollback()
    finally:
        engine.dispose()


@postgres_only
async def test_a_write_waits_a_bounded_time_behind_a_stalled_holder_of_the_row(
    database_url_postgresql: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    url = database_url_postgresql
    keyring = LocalKeyring.open_backing(
        CatalogBacking.open(url, tmp_path, busy_timeout_s=1), master
    )
    opened.append(keyring)
    dek = generate_dek()
    with row_held(url, tmp_path):
        started = time.monotonic()
        with pytest.raises(CatalogUnavailable, match="locked by another") as refused:
            await asyncio.wait_for(keyring.wrap("acme", "obj-1", dek), 15)
        assert time.monotonic() - started < 5
        assert "lock_timeout" in refused.value.message
        assert keyring.current("acme") is None  # nothing was made
    wrapped = await keyring.wrap("acme", "obj-1", dek)  # the holder gone: it goes through
    assert await node(url, tmp_path, master, opened).unwrap("acme", "obj-1", wrapped) == dek


@postgres_only
async def test_a_holder_stalled_inside_the_keyring_lock_is_ended_by_the_server(
    database_url_postgresql: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    url = database_url_postgresql
    stalled = CatalogBacking.open(url, tmp_path, busy_timeout_s=1)
    LocalKeyring.open_backing(stalled, master)  # the row exists
    waiting = LocalKeyring.open_backing(
        CatalogBacking.open(url, tmp_path, busy_timeout_s=8), master
    )
    opened.append(waiting)
    inside, leave = threading.Event(), threading.Event()

    def stall() -> None:
        with contextlib.suppress(CatalogUnavailable), stalled.locked():
            inside.set()
            leave.wait(10)  # a process frozen with the row locked, its transaction idle

    holder = threading.Thread(target=stall)
    holder.start()
    try:
        assert await asyncio.to_thread(inside.wait, 5)
        started = time.monotonic()
        await waiting.wrap("acme", "obj-1", generate_dek())
        # The server ended the idle transaction after its bound (1 s), well before the
        # holder woke up (10 s).
        assert time.monotonic() - started < 6
    finally:
        leave.set()
        await asyncio.to_thread(holder.join, 10)
        stalled.close()


@postgres_only
async def test_opening_the_services_waits_for_the_keyring_off_the_event_loop(
    database_url_postgresql: str, tmp_path: Path, master: bytes
) -> None:
    url = database_url_postgresql
    settings = catalog_settings(tmp_path / "var", url, master)
    open_keyring(settings).close()  # the row exists
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    opened_services = open_services(settings)
    ticker = asyncio.ensure_future(tick())
    try:
        with row_held(url, tmp_path):  # the keyring's lock is busy: opening waits for it
            opening = asyncio.ensure_future(opened_services.__aenter__())
            await asyncio.sleep(1.5)
            assert not opening.done()
        async with asyncio.timeout(20):
            services = await opening
        assert services.keys is not None
        await opened_services.__aexit__(None, None, None)
    finally:
        ticker.cancel()
    assert max(gaps) < 0.5, max(gaps)  # the loop went on while the keyring waited
