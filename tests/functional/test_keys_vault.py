"""The OpenBao/Vault transit key provider keeps the key promises on a real OpenBao.

Every test runs against ``bao server -dev`` (``tests/vaultserver.py``) with a token of the
policy the README gives, never the root token (the provider refuses it). Two provider
instances on one server are two nodes: what one seals the other opens, what one destroys
the other can neither open nor seal for again. Each test takes a key prefix of its own, so
tests share the server without sharing keys.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import hvac
import pytest
from hvac import exceptions as vault_errors

from crypto.errors import CallvaultError, ConfigError, KeyUnavailable
from crypto.keys import WrappedKey
from crypto.vaultkeys import VaultConfig, VaultTransitKeys, policy
from gateway.services import open_services
from gateway.settings import Settings
from tests.functional.test_cli import callvault, clean_env
from tests.leaks import WATCH
from tests.vaultserver import MOUNT, BaoServer

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
README = Path(__file__).resolve().parents[2] / "README.md"


def new_dek() -> bytes:
    dek = secrets.token_bytes(32)
    WATCH.remember("DEK", dek)
    return dek


@pytest.fixture
def prefix() -> str:
    return f"cv{secrets.token_hex(4)}-"


@pytest.fixture
def root(bao: BaoServer) -> Iterator[hvac.Client]:
    client = bao.root()
    yield client
    client.adapter.close()


@asynccontextmanager
async def node(config: VaultConfig) -> AsyncIterator[VaultTransitKeys]:
    """One node's provider, checked at open as ``serve`` opens it."""
    keys = await VaultTransitKeys.open(config)
    try:
        yield keys
    finally:
        keys.close()


@pytest.fixture
async def node_a(bao: BaoServer, prefix: str) -> AsyncIterator[VaultTransitKeys]:
    async with node(bao.config(prefix)) as keys:
        yield keys


@pytest.fixture
async def node_b(bao: BaoServer, prefix: str) -> AsyncIterator[VaultTransitKeys]:
    async with node(bao.config(prefix)) as keys:
        yield keys


def latest_version(root: hvac.Client, name: str) -> int | None:
    try:
        return int(root.secrets.transit.read_key(name, mount_point=MOUNT)["data"]["latest_version"])
    except vault_errors.InvalidPath:
        return None


# -- wrapping ---------------------------------------------------------------------------------


async def test_a_dek_wrapped_on_one_node_unwraps_on_another(
    node_a: VaultTransitKeys, node_b: VaultTransitKeys, root: hvac.Client, prefix: str
) -> None:
    dek = new_dek()
    wrapped = await node_a.wrap("acme", "obj-1", dek)
    assert wrapped.kek_id == f"{prefix}acme.kek"
    assert wrapped.kek_version == 1
    assert wrapped.blob.startswith(b"vault:v1:")
    assert dek not in wrapped.blob and base64.b64encode(dek) not in wrapped.blob
    # The key was made in transit on first use, of the type the module names.
    key = root.secrets.transit.read_key(wrapped.kek_id, mount_point=MOUNT)["data"]
    assert key["type"] == "aes256-gcm96"
    assert key["deletion_allowed"] is False
    assert await node_b.unwrap("acme", "obj-1", wrapped) == dek
    assert await node_a.unwrap("acme", "obj-1", wrapped) == dek


async def test_each_tenant_has_its_own_transit_key(node_a: VaultTransitKeys, prefix: str) -> None:
    dek = new_dek()
    acme = await node_a.wrap("acme", "obj-1", dek)
    globex = await node_a.wrap("globex", "obj-1", dek)
    assert acme.kek_id != globex.kek_id
    with pytest.raises(KeyUnavailable, match="not tenant 'globex'"):
        await node_a.unwrap("globex", "obj-1", acme)
    # A tenant id may end in '-' (callvault's slugs do): its key name still is valid.
    odd = await node_a.wrap("ab-", "obj-1", dek)
    assert odd.kek_id == f"{prefix}ab-.kek"
    assert await node_a.unwrap("ab-", "obj-1", odd) == dek


async def test_a_wrapped_dek_is_bound_to_its_object(node_a: VaultTransitKeys) -> None:
    first, second = new_dek(), new_dek()
    wrap_1 = await node_a.wrap("acme", "obj-1", first)
    wrap_2 = await node_a.wrap("acme", "obj-2", second)
    # Swapped key rows: each wrap presented as the other object's.
    with pytest.raises(KeyUnavailable, match="does not open") as raised:
        await node_a.unwrap("acme", "obj-2", wrap_1)
    assert "message authentication failed" in raised.value.message
    with pytest.raises(KeyUnavailable, match="does not open"):
        await node_a.unwrap("acme", "obj-1", wrap_2)
    # A row whose version was changed, or whose blob is not a transit ciphertext.
    with pytest.raises(KeyUnavailable, match="altered key-table row"):
        await node_a.unwrap("acme", "obj-1", WrappedKey(wrap_1.kek_id, 2, wrap_1.blob))
    with pytest.raises(KeyUnavailable, match="altered key-table row"):
        await node_a.unwrap("acme", "obj-1", WrappedKey(wrap_1.kek_id, 1, b"\xff" * 40))
    assert await node_a.unwrap("acme", "obj-1", wrap_1) == first


# -- rotation ---------------------------------------------------------------------------------


async def test_rotation_keeps_old_wraps_open_and_new_wraps_use_the_new_version(
    node_a: VaultTransitKeys, node_b: VaultTransitKeys, root: hvac.Client
) -> None:
    old_dek = new_dek()
    old = await node_a.wrap("acme", "obj-old", old_dek)
    # node_b has wrapped too, so it holds version 1 as the newest it has seen.
    await node_b.wrap("acme", "obj-b1", new_dek())
    ref = await node_a.rotate("acme")
    assert (ref.kek_id, ref.kek_version) == (old.kek_id, 2)
    assert latest_version(root, ref.kek_id) == 2
    new_dek_a = new_dek()
    new = await node_a.wrap("acme", "obj-new", new_dek_a)
    assert new.kek_version == 2 and new.blob.startswith(b"vault:v2:")
    # The other node learns of the rotation from transit itself on its next wrap.
    new_dek_b = new_dek()
    from_b = await node_b.wrap("acme", "obj-b2", new_dek_b)
    assert from_b.kek_version == 2 and from_b.blob.startswith(b"vault:v2:")
    for keys in (node_a, node_b):
        assert await keys.unwrap("acme", "obj-old", old) == old_dek
        assert await keys.unwrap("acme", "obj-new", new) == new_dek_a
        assert await keys.unwrap("acme", "obj-b2", from_b) == new_dek_b


async def test_rotating_a_tenant_without_keys_is_refused(node_a: VaultTransitKeys) -> None:
    with pytest.raises(KeyUnavailable, match="no keys exist for tenant 'nobody'"):
        await node_a.rotate("nobody")


# -- destruction ------------------------------------------------------------------------------


async def test_destroying_a_tenant_shreds_its_key_on_every_node_and_leaves_a_tombstone(
    node_a: VaultTransitKeys, node_b: VaultTransitKeys, root: hvac.Client, bao: BaoServer,
    prefix: str,
) -> None:  # fmt: skip
    dek = new_dek()
    wrapped = await node_a.wrap("acme", "obj-1", dek)
    await node_b.wrap("acme", "obj-2", new_dek())  # node_b is busy sealing for acme too
    other = await node_a.wrap("globex", "obj-1", dek)
    await node_a.destroy_tenant("acme")
    assert latest_version(root, f"{prefix}acme.kek") is None  # the key is gone from transit
    assert latest_version(root, f"{prefix}acme.destroyed") is not None  # the tombstone stays
    for keys in (node_a, node_b):
        with pytest.raises(KeyUnavailable, match="does not exist"):
            await keys.unwrap("acme", "obj-1", wrapped)
        with pytest.raises(KeyUnavailable, match="destroyed; nothing new can be sealed"):
            await keys.wrap("acme", "obj-3", new_dek())
        with pytest.raises(KeyUnavailable, match="no keys exist"):
            await keys.rotate("acme")
    # A node that starts later, and has never seen the tenant, makes no key for it either.
    async with node(bao.config(prefix)) as late:
        with pytest.raises(KeyUnavailable, match="destroyed; nothing new can be sealed"):
            await late.wrap("acme", "obj-4", new_dek())
    assert latest_version(root, f"{prefix}acme.kek") is None
    # Other tenants are untouched; destroying again is harmless.
    assert await node_b.unwrap("globex", "obj-1", other) == dek
    await node_b.destroy_tenant("acme")
    await node_b.destroy_tenant("never-had-keys")
    with pytest.raises(KeyUnavailable, match="destroyed"):
        await node_a.wrap("never-had-keys", "obj-1", new_dek())


async def test_a_key_deleted_while_a_node_looks_is_deleted_again_when_a_tombstone_appears(
    node_a: VaultTransitKeys, root: hvac.Client, prefix: str
) -> None:
    """The window the tombstone closes: a node read "no key, no tombstone" and makes the
    key, while another node destroys the tenant. The maker reads again after making, finds
    the tombstone and deletes what it made."""
    made: list[str] = []
    real_make = node_a._make_key

    def make_then_destroyed_elsewhere(name: str) -> None:
        real_make(name)
        made.append(name)
        if name.endswith(".kek"):  # the destroying node's tombstone lands just after
            root.secrets.transit.create_key(f"{prefix}acme.destroyed", mount_point=MOUNT)

    node_a._make_key = make_then_destroyed_elsewhere  # type: ignore[method-assign]
    with pytest.raises(KeyUnavailable, match="destroyed"):
        await node_a.wrap("acme", "obj-1", new_dek())
    assert made == [f"{prefix}acme.kek"]
    assert latest_version(root, f"{prefix}acme.kek") is None


# -- outages and the start-up check -----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_vault_is_a_key_outage_naming_the_address_setting(
    bao: BaoServer, prefix: str
) -> None:
    config = bao.config(prefix, addr=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_ADDR"):
        await VaultTransitKeys.open(config)
    keys = VaultTransitKeys(config)  # a node whose Vault went away after its start
    try:
        with pytest.raises(KeyUnavailable, match="CALLVAULT_KEYS__VAULT_ADDR") as raised:
            await keys.wrap("acme", "obj-1", new_dek())
        assert "did not answer" in raised.value.message
    finally:
        keys.close()


async def test_a_vault_that_stops_answering_times_out_and_the_same_provider_recovers(
    node_a: VaultTransitKeys, bao: BaoServer
) -> None:
    dek = new_dek()
    wrapped = await node_a.wrap("acme", "obj-1", dek)
    with bao.paused():
        started = time.monotonic()
        with pytest.raises(KeyUnavailable, match="CALLVAULT_KEYS__VAULT_ADDR"):
            await node_a.unwrap("acme", "obj-1", wrapped)
        with pytest.raises(KeyUnavailable, match="CALLVAULT_KEYS__VAULT_ADDR"):
            await node_a.wrap("acme", "obj-2", new_dek())
        # Bounded by the timeout (2 s a request here), not hung.
        assert time.monotonic() - started < 10
    assert await node_a.unwrap("acme", "obj-1", wrapped) == dek
    again = new_dek()
    assert await node_a.unwrap("acme", "obj-3", await node_a.wrap("acme", "obj-3", again)) == again


async def test_the_start_check_refuses_a_bad_token_a_root_token_a_thin_policy_and_a_bad_mount(
    bao: BaoServer, root: hvac.Client, prefix: str
) -> None:
    bad = f"s.{secrets.token_hex(12)}"
    WATCH.remember("OpenBao token", bad)
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_TOKEN: is not accepted"):
        await VaultTransitKeys.open(bao.config(prefix, token=bad))
    # The root token may make keys by encrypting: a busy node could resurrect a destroyed
    # tenant's key with it.
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_TOKEN: its policy may create"):
        await VaultTransitKeys.open(bao.config(prefix, token=bao.root_token))
    # A policy without decrypt.
    thin = policy(MOUNT, "cv").replace(f'"{MOUNT}/decrypt/', f'"{MOUNT}/not-decrypt/')
    root.sys.create_or_update_policy("callvault-thin", thin)
    with pytest.raises(ConfigError, match=r"lacks update on transit/decrypt/cv\w+-\*"):
        await VaultTransitKeys.open(bao.config(prefix, token=bao.mint_token(["callvault-thin"])))
    # A policy for another mount name, where nothing is mounted.
    root.sys.create_or_update_policy("callvault-elsewhere", policy("nothing-here", "cv"))
    token = bao.mint_token(["callvault-elsewhere"])
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_MOUNT"):
        await VaultTransitKeys.open(bao.config(prefix, token=token, mount="nothing-here"))
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_KEY_PREFIX"):
        VaultTransitKeys(bao.config("-bad"))
    with pytest.raises(ConfigError, match="CALLVAULT_KEYS__VAULT_ADDR: is needed"):
        VaultTransitKeys(bao.config(prefix, addr=""))


async def test_neither_the_token_nor_a_dek_is_in_an_error_a_log_line_or_a_repr(
    bao: BaoServer, node_a: VaultTransitKeys, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dek = new_dek()
    wrapped = await node_a.wrap("acme", "obj-1", dek)
    errors: list[CallvaultError] = []
    attempts = [
        node_a.unwrap("acme", "obj-2", wrapped),
        node_a.unwrap("acme", "obj-1", WrappedKey(wrapped.kek_id, 1, b"vault:v1:AAAA")),
    ]
    for attempt in attempts:
        with pytest.raises(KeyUnavailable) as raised:
            await attempt
        errors.append(raised.value)
    down = VaultTransitKeys(bao.config(prefix, addr=f"http://127.0.0.1:{closed_port()}"))
    try:
        with pytest.raises(KeyUnavailable) as raised:
            await down.wrap("acme", "obj-3", dek)
        errors.append(raised.value)
        shown = [repr(node_a), repr(down), repr(bao.config(prefix))]
    finally:
        down.close()
    with pytest.raises(ConfigError) as refused:
        await VaultTransitKeys.open(bao.config(prefix, token=bao.root_token))
    errors.append(refused.value)
    await node_a.destroy_tenant("acme")
    with pytest.raises(KeyUnavailable) as raised:
        await node_a.wrap("acme", "obj-4", dek)
    errors.append(raised.value)
    said = [str(e) for e in errors] + [repr(e) for e in errors] + shown
    said += [record.getMessage() for record in caplog.records]
    assert any("transit key" in line for line in said)  # errors that say something
    forms = [bao.token, bao.root_token, base64.b64encode(dek).decode(), dek.hex()]
    for line in said:
        for secret in forms:
            assert secret not in line


# -- wired into the gateway's services ---------------------------------------------------------


def vault_settings(data_dir: Path, shared: Path, bao: BaoServer, prefix: str) -> Settings:
    """One node: its own data dir (keyring, master key), the shared catalog and store."""
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{shared / 'catalog.sqlite3'}",
        store={"url": (shared / "objects").as_uri()},
        keys={
            "provider": "vault",
            "vault_addr": bao.addr,
            "vault_token": bao.token,
            "vault_key_prefix": prefix,
            "vault_timeout": "PT2S",
        },
    )


async def test_an_object_sealed_by_one_node_is_read_by_another_through_vault(
    tmp_path: Path, bao: BaoServer, root: hvac.Client, prefix: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    audio = os.urandom(200_000)
    one = vault_settings(tmp_path / "node-1", shared, bao, prefix)
    two = vault_settings(tmp_path / "node-2", shared, bao, prefix)
    async with open_services(one) as services:
        assert isinstance(services.keys, VaultTransitKeys)
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
        record = await services.vault.put_object(
            audio, tenant="acme", kind="audio", data_class="recordings", now=T0
        )
        row = await services.catalog.keys.get(record.id, tenant_id="acme")
        assert row.kek_id == f"{prefix}acme.kek"
        assert row.wrapped_dek.startswith(b"vault:v1:")
    # Node 2 has a data dir (and local keyring) of its own: the DEK comes from transit.
    async with open_services(two) as services:
        assert await services.vault.read_object("acme", record.id) == audio
        await services.keys.destroy_tenant("acme")
    async with open_services(one) as services:
        with pytest.raises(KeyUnavailable):
            await services.vault.read_object("acme", record.id)
        with pytest.raises(KeyUnavailable, match="destroyed"):
            await services.vault.put_object(
                b"late", tenant="acme", kind="audio", data_class="recordings", now=T0
            )


def vault_env(data_dir: Path, bao: BaoServer, prefix: str, **extra: str) -> dict[str, str]:
    return clean_env(
        **{
            "CALLVAULT_DATA_DIR": str(data_dir),
            "CALLVAULT_KEYS__PROVIDER": "vault",
            "CALLVAULT_KEYS__VAULT_ADDR": bao.addr,
            "CALLVAULT_KEYS__VAULT_TOKEN": bao.token,
            "CALLVAULT_KEYS__VAULT_KEY_PREFIX": prefix,
            **extra,
        }
    )


async def test_keys_rotate_works_and_keys_retire_is_refused_clearly_with_vault(
    tmp_path: Path, bao: BaoServer, root: hvac.Client, prefix: str
) -> None:
    settings = vault_settings(tmp_path, tmp_path, bao, prefix)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
        record = await services.vault.put_object(
            b"sealed before rotation", tenant="acme", kind="audio",
            data_class="recordings", now=T0,
        )  # fmt: skip
    env = vault_env(tmp_path, bao, prefix, CALLVAULT_DATABASE_URL=settings.database_url or "")
    env["CALLVAULT_STORE__URL"] = settings.store_url
    result = callvault("keys", "rotate", "--tenant", "acme", env=env)
    assert result.returncode == 0, result.stderr
    assert f"KEK {prefix}acme.kek is now at version 2; 1 DEK(s) re-wrapped" in result.stdout
    assert latest_version(root, f"{prefix}acme.kek") == 2
    async with open_services(settings) as services:
        row = await services.catalog.keys.get(record.id, tenant_id="acme")
        assert (row.kek_version, row.wrapped_dek[:9]) == (2, b"vault:v2:")
        assert await services.vault.read_object("acme", record.id) == b"sealed before rotation"
    result = callvault("keys", "retire", "--tenant", "acme", env=env)
    assert result.returncode == 2
    assert "CALLVAULT_KEYS__PROVIDER: is vault" in result.stderr
    assert "trim" in result.stderr
    # A refused token stops the command before it touches anything, naming the setting.
    bad = f"s.{secrets.token_hex(12)}"
    WATCH.remember("OpenBao token", bad)
    env["CALLVAULT_KEYS__VAULT_TOKEN"] = bad
    result = callvault("keys", "rotate", "--tenant", "acme", env=env)
    assert result.returncode == 2
    assert "CALLVAULT_KEYS__VAULT_TOKEN: is not accepted" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_when_vault_does_not_answer(
    tmp_path: Path, bao: BaoServer, prefix: str
) -> None:
    address = f"http://127.0.0.1:{closed_port()}"
    env = vault_env(tmp_path, bao, prefix, CALLVAULT_KEYS__VAULT_ADDR=address)
    result = callvault("serve", env=env)
    assert result.returncode == 2
    assert f"CALLVAULT_KEYS__VAULT_ADDR: OpenBao/Vault at {address}" in result.stderr
    assert "did not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readme_gives_the_policy_the_tests_run_with() -> None:
    assert policy() in README.read_text()
