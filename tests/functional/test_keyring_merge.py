"""A node's own keyring moving into a catalog keyring that other nodes already use, on a
real PostgreSQL (skipped when unreachable, failed instead when
``CALLVAULT_TEST_REQUIRE_PARTS=1``).

A node whose ``keyring.json`` holds keys the catalog keyring lacks is refused at start
(whether or not the catalog's row was empty), and told not to delete the file;
``callvault keys to-catalog`` merges what does not collide, and refuses, naming the tenants
and changing nothing, what cannot be merged (another KEK id or audit key for the same
tenant, versions made apart, a tombstone over the fleet's live KEK, a signing key that
signed checkpoints). With ``vault`` on PostgreSQL only the audit keys and the signing key
count. The admin paths treat ``vault`` on PostgreSQL as the catalog keyring it is.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError, KeyUnavailable
from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE, LocalKeyring
from crypto.masterkey import load_master_key
from crypto.objectformat import generate_dek
from gateway.cli import main
from gateway.keyadmin import warn_about_master_key
from gateway.services import open_keyring, open_services
from gateway.settings import Settings
from storage.keyring import CatalogBacking
from tests.leaks import WATCH

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture
def master() -> bytes:
    key = os.urandom(32)
    WATCH.remember("master key", key)
    return key


@pytest.fixture
def url(database_url_postgresql: str) -> str:
    return database_url_postgresql


@pytest.fixture
def opened() -> Iterator[list[LocalKeyring]]:
    keyrings: list[LocalKeyring] = []
    yield keyrings
    for keyring in keyrings:
        keyring.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, url: str) -> pytest.MonkeyPatch:
    """``callvault`` commands in this process: no CALLVAULT_ setting but those set here."""
    for name in list(os.environ):
        if name.startswith("CALLVAULT_") and name != "CALLVAULT_AI__WORKERS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CALLVAULT_DATABASE_URL", url)
    return monkeypatch


def settings(data_dir: Path, url: str, master: bytes | None, provider: str = "catalog") -> Settings:
    keys: dict[str, Any] = {"provider": provider}
    if provider == "vault":  # never reached by what these tests open
        keys.update(vault_addr="http://127.0.0.1:9", vault_token="unused")
    return Settings(
        data_dir=data_dir,
        database_url=url,
        master_key=None if master is None else b64(master),
        keys=keys,
        store={"url": (data_dir.parent / "objects").as_uri()},
    )


def catalog_node(
    url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> LocalKeyring:
    keyring = LocalKeyring.open_backing(CatalogBacking.open(url, tmp_path), master)
    opened.append(keyring)
    return keyring


async def to_catalog(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_dir: Path, master: bytes
) -> tuple[int, str, str]:
    env.setenv("CALLVAULT_DATA_DIR", str(data_dir))
    env.setenv("CALLVAULT_MASTER_KEY", b64(master))
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["keys", "to-catalog"])
    out, err = capsys.readouterr()
    assert b64(master) not in out + err
    return code, out, err


def catalog_row(url: str, tmp_path: Path) -> bytes | None:
    backing = CatalogBacking.open(url, tmp_path)
    try:
        loaded = backing.read()
        return None if loaded is None else loaded.document
    finally:
        backing.close()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def warned(node: Settings, prefix: str = "keys.local") -> list[logging.LogRecord]:
    """What ``serve`` and ``worker`` warn at start (events starting with ``prefix``),
    caught on the logger itself (``main`` replaces the root logger's handlers)."""
    logger = logging.getLogger("callvault.keys")
    records = Records()
    logger.addHandler(records)
    try:
        warn_about_master_key(node)
    finally:
        logger.removeHandler(records)
    return [r for r in records.records if str(getattr(r, "event", "")).startswith(prefix)]


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The root logger as it was (``main`` points it at the test's captured stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_node_with_keys_the_catalog_lacks_is_refused_then_merged_in(
    url: str,
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The fleet runs on the catalog keyring already (node 1's keys, copied or made there).
    fleet = catalog_node(url, tmp_path, master, opened)
    dek1 = generate_dek()
    sealed1 = await fleet.wrap("acme", "obj-1", dek1)
    acme_audit = await AuditKeyring(fleet).create_audit_key("acme", pending=False)
    # Node 2 ran on its own keyring, with the same master key, and other tenants.
    data_dir = tmp_path / "n2"
    own = LocalKeyring.open(data_dir, master)
    dek2 = generate_dek()
    sealed2 = await own.wrap("globex", "obj-2", dek2)
    await own.rotate("globex")
    sealed3 = await own.wrap("globex", "obj-3", dek2)
    globex_audit = await AuditKeyring(own).create_audit_key("globex", pending=False)
    await own.wrap("initech", "obj-4", generate_dek())
    await own.destroy_tenant("initech")
    node2 = settings(data_dir, url, master)

    # The catalog's row is not empty: the node is refused all the same, told what to run.
    with pytest.raises(ConfigError, match="keys to-catalog") as refused:
        open_keyring(node2)
    assert refused.value.setting == "CALLVAULT_KEYS__PROVIDER"
    assert "'globex'" in refused.value.message and "Do not delete the file" in refused.value.message
    left = warned(node2)
    assert [r.event for r in left] == ["keys.local_keyring_not_in_catalog"]  # type: ignore[attr-defined]
    assert "do not delete it" in left[0].getMessage() and "Delete it" not in left[0].getMessage()

    code, out, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 0, err
    assert "was merged into (3 key(s) added)" in out
    assert "tenant 'globex': KEK" in out and "tombstone" in out
    assert "then delete" in out
    code, out, err = await to_catalog(cli_env, capsys, data_dir, master)  # again: no change
    assert code == 0, err
    assert "was already in" in out

    # Node 2 starts on the catalog keyring, and every object opens on either node.
    merged = open_keyring(node2)
    opened.append(merged)
    for keyring in (merged, fleet):
        assert await keyring.unwrap("acme", "obj-1", sealed1) == dek1
        assert await keyring.unwrap("globex", "obj-2", sealed2) == dek2
        assert await keyring.unwrap("globex", "obj-3", sealed3) == dek2
        assert (await keyring.wrap("globex", "obj-5", dek2)).kek_version == 2
        with pytest.raises(KeyUnavailable, match="destroyed"):
            await keyring.wrap("initech", "obj-6", dek2)  # the node's tombstone holds
        for tenant, made in (("acme", acme_audit), ("globex", globex_audit)):
            found = await AuditKeyring(keyring).audit_key(tenant)
            assert found is not None and found.active and found.key == made.key
    # Now, and only now, the warning says to delete the file.
    left = warned(node2)
    assert [r.event for r in left] == ["keys.local_keyring_left"]  # type: ignore[attr-defined]
    assert "Delete it" in left[0].getMessage()


async def test_a_fleet_tombstone_stands_over_a_nodes_old_kek(
    url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    data_dir = tmp_path / "n2"
    own = LocalKeyring.open(data_dir, master)
    await own.wrap("acme", "obj-1", generate_dek())
    (tmp_path / "copy.json").write_bytes((data_dir / KEYRING_FILE).read_bytes())
    fleet = catalog_node(url, tmp_path, master, opened)
    await fleet.wrap("globex", "obj-2", generate_dek())
    # The fleet had acme too (the node's keyring copied), and destroyed it since.
    assert await asyncio.to_thread(lambda: copy_kek(fleet, data_dir, "acme"))
    await fleet.destroy_tenant("acme")
    keyring = open_keyring(settings(data_dir, url, master))  # nothing the fleet needs
    keyring.close()


def copy_kek(fleet: LocalKeyring, data_dir: Path, tenant: str) -> bool:
    """Put the file's KEK of ``tenant`` into the catalog keyring as it is (what an earlier
    ``keys to-catalog`` did)."""
    entry = orjson.loads((data_dir / KEYRING_FILE).read_bytes())["tenants"][tenant]
    backing = fleet._backing
    with backing.locked():
        loaded = backing.read()
        assert loaded is not None
        doc = orjson.loads(loaded.document)
        doc["tenants"][tenant] = entry
        backing.write(orjson.dumps(doc))
    return True


async def test_what_cannot_be_merged_is_refused_naming_the_tenants(
    url: str,
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = catalog_node(url, tmp_path, master, opened)
    await fleet.wrap("acme", "obj-1", generate_dek())  # the fleet's KEK for acme
    await fleet.wrap("hooli", "obj-1", generate_dek())
    await AuditKeyring(fleet).create_audit_key("globex", pending=False)
    data_dir = tmp_path / "n2"
    own = LocalKeyring.open(data_dir, master)
    await own.wrap("acme", "obj-2", generate_dek())  # the node's own KEK for acme
    await AuditKeyring(own).create_audit_key("globex", pending=False)  # a forked chain
    await own.wrap("hooli", "obj-3", generate_dek())
    await own.destroy_tenant("hooli")  # destroyed here, alive in the fleet
    await own.wrap("initech", "obj-4", generate_dek())  # this one alone would merge
    node2 = settings(data_dir, url, master)
    before = catalog_row(url, tmp_path)

    with pytest.raises(ConfigError, match="cannot be merged") as refused:
        open_keyring(node2)
    assert "keys to-catalog" in refused.value.message

    code, _, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 2
    assert "nothing was copied" in err
    assert "tenant 'acme' has KEK" in err
    assert "tenant 'globex' has another audit key" in err and "forked" in err
    assert "tenant 'hooli' was destroyed on this node" in err
    assert catalog_row(url, tmp_path) == before  # initech was not merged either


async def test_versions_made_apart_conflict_and_versions_only_the_file_has_merge(
    url: str,
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The node's keyring was once copied into the catalog (one KEK for acme, two copies).
    data_dir = tmp_path / "n2"
    own = LocalKeyring.open(data_dir, master)
    await own.wrap("acme", "obj-1", generate_dek())
    await own.wrap("globex", "obj-1", generate_dek())
    fleet = catalog_node(url, tmp_path, master, opened)
    for tenant in ("acme", "globex"):
        await asyncio.to_thread(copy_kek, fleet, data_dir, tenant)
    # Both rotate acme on their own (two different version 2s); the node alone rotates globex.
    await own.rotate("acme")
    await fleet.rotate("acme")
    await own.rotate("globex")
    dek = generate_dek()
    sealed = await own.wrap("globex", "obj-2", dek)

    code, _, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 2
    assert "tenant 'acme': KEK" in err and "version 2 is another key" in err

    await fleet.destroy_tenant("acme")  # the fleet's decision: acme's copy is not needed
    code, out, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 0, err
    assert "version 2" in out
    assert await fleet.unwrap("globex", "obj-2", sealed) == dek
    assert fleet.current("globex") is not None
    assert (await fleet.wrap("globex", "obj-3", dek)).kek_version == 2  # the file's current


async def test_a_signing_key_that_signed_checkpoints_is_not_dropped(
    url: str,
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = catalog_node(url, tmp_path, master, opened)
    fleet_signer = await AuditKeyring(fleet).checkpoint_signer()
    # Node 2 ran on its own keyring against the fleet's catalog: its signing key signed
    # its tenant's checkpoints there.
    data_dir = tmp_path / "n2"
    local = settings(data_dir, url, master, provider="local")
    async with open_services(local) as services:
        await services.catalog.tenants.create("globex", "Globex", "eu", T0)
        await services.catalog.audit.append("globex", "node-2", "test.a", None, {}, T0)
        checkpoint = await services.catalog.checkpoints.make("globex", T0)
        assert checkpoint is not None and checkpoint.key_id != fleet_signer.key_id

    with pytest.raises(ConfigError, match="cannot be merged") as refused:
        open_keyring(settings(data_dir, url, master))
    assert checkpoint.key_id in refused.value.message
    code, _, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 2
    assert f"signing key {checkpoint.key_id} of the file signed checkpoints" in err
    assert "'globex'" in err


async def test_vault_on_postgresql_merges_the_audit_keys_and_leaves_the_keks(
    url: str,
    tmp_path: Path,
    master: bytes,
    opened: list[LocalKeyring],
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = catalog_node(url, tmp_path, master, opened)
    await AuditKeyring(fleet).create_audit_key("acme", pending=False)
    data_dir = tmp_path / "n2"
    own = LocalKeyring.open(data_dir, master)  # vault on one node's SQLite, or local before
    await own.wrap("initech", "obj-1", generate_dek())
    made = await AuditKeyring(own).create_audit_key("globex", pending=False)
    node2 = settings(data_dir, url, master, provider="vault")

    with pytest.raises(ConfigError, match="keys to-catalog") as refused:
        open_keyring(node2)
    assert "audit key" in refused.value.message and "initech" not in refused.value.message

    cli_env.setenv("CALLVAULT_KEYS__PROVIDER", "vault")
    cli_env.setenv("CALLVAULT_KEYS__VAULT_ADDR", "http://127.0.0.1:9")
    code, out, err = await to_catalog(cli_env, capsys, data_dir, master)
    assert code == 0, err
    assert "keep CALLVAULT_KEYS__PROVIDER=vault" in out
    assert "KEKs of 1 tenant(s)" in out
    document = catalog_row(url, tmp_path)
    assert document is not None and orjson.loads(document)["tenants"] == {}

    keyring = open_keyring(node2)
    opened.append(keyring)
    found = await AuditKeyring(keyring).audit_key("globex")
    assert found is not None and found.key == made.key
    left = warned(node2)
    assert [r.event for r in left] == ["keys.local_keyring_left"]  # type: ignore[attr-defined]
    assert "vault never uses" in left[0].getMessage()


async def test_the_key_commands_and_warnings_take_vault_on_postgresql_for_the_catalog_keyring(
    url: str,
    tmp_path: Path,
    master: bytes,
    cli_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "var"
    cli_env.setenv("CALLVAULT_DATA_DIR", str(data_dir))
    cli_env.setenv("CALLVAULT_KEYS__PROVIDER", "vault")
    cli_env.setenv("CALLVAULT_KEYS__VAULT_ADDR", "http://127.0.0.1:9")
    # The node ran on its own before: its data dir holds a key file, unused now.
    LocalKeyring.open(data_dir, load_master_key(None, data_dir)).close()
    key_file = (data_dir / MASTER_KEY_FILE).read_bytes()
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["keys", "rotate-master"])
    _, err = capsys.readouterr()
    assert code == 2  # never the unused data-dir key file
    assert (data_dir / MASTER_KEY_FILE).read_bytes() == key_file
    assert err.startswith(
        "callvault: CALLVAULT_MASTER_KEY: must be set when CALLVAULT_KEYS__PROVIDER=vault on a "
        "PostgreSQL catalog"
    )

    # Another node of the fleet, whose catalog keyring is left in a master-key rotation.
    node = settings(tmp_path / "other", url, master, provider="vault")
    keyring = open_keyring(node)
    keyring.begin_master_rotation(os.urandom(32))
    keyring.close()
    unfinished = warned(node, "keys.master_rotation_unfinished")
    assert len(unfinished) == 1
    assert "catalog keyring" in unfinished[0].getMessage()
    assert "--commit" in unfinished[0].getMessage()


async def test_a_keyring_under_another_master_key_is_refused_naming_the_way_out(
    url: str, tmp_path: Path, master: bytes, opened: list[LocalKeyring]
) -> None:
    catalog_node(url, tmp_path, master, opened)
    data_dir = tmp_path / "n2"
    other = os.urandom(32)
    WATCH.remember("master key", other)
    await LocalKeyring.open(data_dir, other).wrap("globex", "obj-1", generate_dek())
    with pytest.raises(ConfigError, match="local keyring is wrapped by another master key") as no:
        open_keyring(settings(data_dir, url, master))
    assert no.value.setting == "CALLVAULT_MASTER_KEY"
    assert "keys rotate-master --new-key-file FILE --commit" in no.value.message
