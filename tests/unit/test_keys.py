"""The local keyring: master key handling, KEK versions, rotation and destruction."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from crypto.errors import ConfigError, KeyUnavailable
from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE, LocalKeyring, WrappedKey
from crypto.masterkey import decode_master_key, load_master_key
from crypto.objectformat import generate_dek

MASTER = bytes(range(32))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "exactly 32 bytes, not 5 bytes"),
        (base64.b64encode(bytes(33)).decode(), "not 33 bytes"),
    ],
)
def test_malformed_master_key_names_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failed:
        decode_master_key(value)
    assert failed.value.setting == "CALLVAULT_MASTER_KEY"
    assert "CALLVAULT_MASTER_KEY" in str(failed.value)
    assert value not in str(failed.value)


def test_master_key_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_master_key(None, tmp_path)
    path = tmp_path / MASTER_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_master_key(None, tmp_path) == key
    assert len(key) == 32


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_master_key(None, tmp_path)
    os.chmod(tmp_path / MASTER_KEY_FILE, 0o644)
    with pytest.raises(ConfigError, match="600"):
        load_master_key(None, tmp_path)


def test_master_key_from_the_setting_wins(tmp_path: Path) -> None:
    assert load_master_key(base64.b64encode(MASTER).decode(), tmp_path) == MASTER
    assert not (tmp_path / MASTER_KEY_FILE).exists()


def test_wrong_master_key_refuses_to_open_the_keyring(tmp_path: Path) -> None:
    LocalKeyring.open(tmp_path, MASTER)
    with pytest.raises(ConfigError, match="CALLVAULT_MASTER_KEY.*not the master key"):
        LocalKeyring.open(tmp_path, bytes(32))


async def test_keyring_file_holds_no_plaintext_key(tmp_path: Path) -> None:
    await LocalKeyring.open(tmp_path, MASTER).wrap("acme", "obj-1", generate_dek())
    path = tmp_path / KEYRING_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert base64.b64encode(MASTER) not in path.read_bytes()


async def test_wrap_unwrap_round_trip_is_bound_to_tenant_and_object(tmp_path: Path) -> None:
    keyring = LocalKeyring.open(tmp_path, MASTER)
    dek = generate_dek()
    wrapped = await keyring.wrap("acme", "obj-1", dek)
    assert wrapped.kek_version == 1
    assert dek not in wrapped.blob
    assert await keyring.unwrap("acme", "obj-1", wrapped) == dek
    with pytest.raises(KeyUnavailable, match="another object"):
        await keyring.unwrap("acme", "obj-2", wrapped)
    other = await keyring.wrap("globex", "obj-1", generate_dek())
    assert other.kek_id != wrapped.kek_id
    with pytest.raises(KeyUnavailable):
        await keyring.unwrap("globex", "obj-1", wrapped)


async def test_rotation_keeps_old_versions_and_wraps_new_keys_with_the_new_one(
    tmp_path: Path,
) -> None:
    keyring = LocalKeyring.open(tmp_path, MASTER)
    dek = generate_dek()
    old = await keyring.wrap("acme", "obj-1", dek)
    target = await keyring.rotate("acme")
    assert target.kek_version == 2
    new = await keyring.wrap("acme", "obj-2", dek)
    assert new.kek_version == 2
    assert await keyring.unwrap("acme", "obj-1", old) == dek
    assert await keyring.unwrap("acme", "obj-2", new) == dek


async def test_unknown_kek_version_is_key_unavailable(tmp_path: Path) -> None:
    keyring = LocalKeyring.open(tmp_path, MASTER)
    wrapped = await keyring.wrap("acme", "obj-1", generate_dek())
    forged = WrappedKey(wrapped.kek_id, 7, wrapped.blob)
    with pytest.raises(KeyUnavailable, match="version 7"):
        await keyring.unwrap("acme", "obj-1", forged)


async def test_rotation_by_another_process_is_seen(tmp_path: Path) -> None:
    """``callvault keys rotate`` runs beside ``serve``: serve must wrap new DEKs under the
    new version and open DEKs that the CLI re-wrapped."""
    serve = LocalKeyring.open(tmp_path, MASTER)
    cli = LocalKeyring.open(tmp_path, MASTER)
    dek = generate_dek()
    await serve.wrap("acme", "obj-1", dek)
    await cli.rotate("acme")
    rewrapped = await cli.wrap("acme", "obj-1", dek)
    assert rewrapped.kek_version == 2
    assert await serve.unwrap("acme", "obj-1", rewrapped) == dek
    assert (await serve.wrap("acme", "obj-3", dek)).kek_version == 2


async def test_destroyed_tenant_keys_make_its_deks_unwrappable_everywhere(
    tmp_path: Path,
) -> None:
    serve = LocalKeyring.open(tmp_path, MASTER)
    other_process = LocalKeyring.open(tmp_path, MASTER)
    dek = generate_dek()
    wrapped = await serve.wrap("acme", "obj-1", dek)
    assert await other_process.unwrap("acme", "obj-1", wrapped) == dek  # KEK now cached
    kept = await serve.wrap("globex", "obj-1", dek)
    await serve.destroy_tenant("acme")
    for keyring in (serve, other_process, LocalKeyring.open(tmp_path, MASTER)):
        with pytest.raises(KeyUnavailable, match="acme"):
            await keyring.unwrap("acme", "obj-1", wrapped)
        assert await keyring.unwrap("globex", "obj-1", kept) == dek
        # A destroyed tenant never gets a KEK again, in any process, after any reopen: a
        # worker still busy with its call cannot seal anything new for it.
        with pytest.raises(KeyUnavailable, match="destroyed"):
            await keyring.wrap("acme", "obj-2", dek)
