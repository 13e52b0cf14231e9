"""Master-key rotation of the local keyring: two phases, each an atomic replace of the file,
so that a crash between any two steps leaves a keyring the old key opens (before commit) and
the new key opens (after phase one); running keyrings go on; nothing is ever stranded."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crypto import keyfile
from crypto.errors import ConfigError, KeyUnavailable
from crypto.keyfile import NEW, OLD
from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE, WRAPPED_SECTIONS, LocalKeyring, WrappedKey
from crypto.masterkey import (
    NEXT_KEY_FILE,
    OLD_KEY_FILE,
    KeyFileRotation,
    load_master_key,
    master_key_source,
    read_key_file,
)
from crypto.objectformat import generate_dek, unwrap_key, wrap_key

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
WRONG_KEY = bytes(32)

Sealed = dict[tuple[str, str], tuple[WrappedKey, bytes]]


async def seal(keyring: LocalKeyring, tenant: str, object_id: str, sealed: Sealed) -> None:
    dek = generate_dek()
    sealed[(tenant, object_id)] = (await keyring.wrap(tenant, object_id, dek), dek)


async def assert_opens(keyring: LocalKeyring, sealed: Sealed) -> None:
    for (tenant, object_id), (wrapped, dek) in sealed.items():
        assert await keyring.unwrap(tenant, object_id, wrapped) == dek


async def two_tenants(data_dir: Path, key: bytes) -> Sealed:
    """A keyring with two tenants, one of them at KEK version 2 with a DEK under each."""
    keyring = LocalKeyring.open(data_dir, key)
    sealed: Sealed = {}
    await seal(keyring, "acme", "obj-1", sealed)
    await keyring.rotate("acme")
    await seal(keyring, "acme", "obj-2", sealed)
    await seal(keyring, "globex", "obj-1", sealed)
    return sealed


def refused(data_dir: Path, key: bytes, **kwargs: str) -> ConfigError:
    with pytest.raises(ConfigError, match="not the master key") as failed:
        LocalKeyring.open(data_dir, key, **kwargs)  # type: ignore[arg-type]
    return failed.value


def keyring_doc(data_dir: Path) -> dict:  # type: ignore[type-arg]
    return dict(orjson.loads((data_dir / KEYRING_FILE).read_bytes()))


# --- the two phases ------------------------------------------------------------------------


async def test_both_keys_open_the_keyring_until_commit_then_only_the_new(tmp_path: Path) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    values = LocalKeyring.open(tmp_path, OLD_KEY).begin_master_rotation(NEW_KEY)
    assert values == 4  # the check value and three KEK versions
    for key in (OLD_KEY, NEW_KEY):
        await assert_opens(LocalKeyring.open(tmp_path, key), sealed)
    refused(tmp_path, WRONG_KEY)

    assert LocalKeyring.open(tmp_path, NEW_KEY).finish_master_rotation(NEW) == 4
    await assert_opens(LocalKeyring.open(tmp_path, NEW_KEY), sealed)
    error = refused(tmp_path, OLD_KEY)
    assert error.setting == "CALLVAULT_MASTER_KEY"
    assert "rotate-master" in error.message
    assert not keyfile.in_rotation(keyring_doc(tmp_path))
    text = (tmp_path / KEYRING_FILE).read_bytes()
    for key in (OLD_KEY, NEW_KEY):
        assert key not in text and base64.b64encode(key) not in text


async def test_aborting_keeps_the_old_key_only(tmp_path: Path) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    keyring = LocalKeyring.open(tmp_path, OLD_KEY)
    keyring.begin_master_rotation(NEW_KEY)
    keyring.finish_master_rotation(OLD)
    await assert_opens(LocalKeyring.open(tmp_path, OLD_KEY), sealed)
    refused(tmp_path, NEW_KEY)


async def test_open_keyrings_go_on_through_the_rotation(tmp_path: Path) -> None:
    """``serve`` with the old key keeps working through phase one (and what it adds then
    survives the commit); after the commit, a keyring given the new key opens everything,
    and one still holding the old key says to restart it."""
    sealed = await two_tenants(tmp_path, OLD_KEY)
    serve = LocalKeyring.open(tmp_path, OLD_KEY)
    await assert_opens(serve, sealed)
    cli = LocalKeyring.open(tmp_path, OLD_KEY)
    cli.begin_master_rotation(NEW_KEY)

    await assert_opens(serve, sealed)  # reloads the two-sided file, reads its old side
    await seal(serve, "acme", "obj-3", sealed)
    await seal(serve, "initech", "obj-1", sealed)  # a new tenant: a KEK under the old key only
    restarted = LocalKeyring.open(tmp_path, NEW_KEY)  # restarted with the new key already
    await seal(restarted, "umbrella", "obj-1", sealed)  # a KEK under the new key only

    cli.finish_master_rotation(NEW, NEW_KEY)  # fills the missing sides with both keys
    await assert_opens(restarted, sealed)
    await assert_opens(LocalKeyring.open(tmp_path, NEW_KEY), sealed)
    with pytest.raises(ConfigError, match="CALLVAULT_MASTER_KEY.*restart"):
        await serve.unwrap("acme", "obj-1", sealed[("acme", "obj-1")][0])


async def test_a_value_added_under_one_key_needs_the_other_to_commit(tmp_path: Path) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    serve = LocalKeyring.open(tmp_path, OLD_KEY)
    serve.begin_master_rotation(NEW_KEY)
    await seal(serve, "initech", "obj-1", sealed)
    new = LocalKeyring.open(tmp_path, NEW_KEY)
    with pytest.raises(KeyUnavailable, match="does not open under the master key"):
        await assert_opens(new, sealed)  # its KEK has no new side yet
    before = (tmp_path / KEYRING_FILE).read_bytes()
    with pytest.raises(KeyUnavailable, match="1 value.*no new side"):
        new.finish_master_rotation(NEW)  # only the new key: cannot fill it
    assert (tmp_path / KEYRING_FILE).read_bytes() == before
    new.finish_master_rotation(NEW, OLD_KEY)
    await assert_opens(LocalKeyring.open(tmp_path, NEW_KEY), sealed)


async def test_a_tenant_destroyed_during_the_rotation_leaves_no_wrap_on_either_side(
    tmp_path: Path,
) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    keyring = LocalKeyring.open(tmp_path, OLD_KEY)
    keyring.begin_master_rotation(NEW_KEY)
    await keyring.destroy_tenant("acme")
    doc = keyring_doc(tmp_path)
    assert "acme" not in doc["tenants"]
    assert keyfile.in_rotation(doc)
    keyring.finish_master_rotation(NEW, NEW_KEY)
    with pytest.raises(KeyUnavailable, match="acme"):
        await LocalKeyring.open(tmp_path, NEW_KEY).unwrap(
            "acme", "obj-1", sealed[("acme", "obj-1")][0]
        )


# --- a wrong key never strands the keyring -------------------------------------------------


async def test_a_wrong_key_at_commit_changes_nothing(tmp_path: Path) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    keyring = LocalKeyring.open(tmp_path, OLD_KEY)
    keyring.begin_master_rotation(NEW_KEY)
    before = (tmp_path / KEYRING_FILE).read_bytes()
    with pytest.raises(ConfigError, match="does not open the new side"):
        keyring.finish_master_rotation(NEW, WRONG_KEY, other_source="--new-key-file")
    with pytest.raises(ConfigError, match="needed"):
        keyring.finish_master_rotation(NEW)  # the old key alone cannot keep the new side
    with pytest.raises(ConfigError, match="not the key of the master-key rotation"):
        keyring.begin_master_rotation(WRONG_KEY)  # another rotation over this one
    assert (tmp_path / KEYRING_FILE).read_bytes() == before
    await assert_opens(LocalKeyring.open(tmp_path, OLD_KEY), sealed)


async def test_a_new_side_that_does_not_open_is_never_committed(tmp_path: Path) -> None:
    sealed = await two_tenants(tmp_path, OLD_KEY)
    LocalKeyring.open(tmp_path, OLD_KEY).begin_master_rotation(NEW_KEY)
    doc = keyring_doc(tmp_path)
    slot = doc["tenants"]["globex"]["versions"]["1"]
    slot["new"] = slot["old"]  # a new-side wrap that is not under the new key
    (tmp_path / KEYRING_FILE).write_bytes(orjson.dumps(doc))
    before = (tmp_path / KEYRING_FILE).read_bytes()
    with pytest.raises(KeyUnavailable, match="tenants/globex/versions/1 does not open"):
        LocalKeyring.open(tmp_path, OLD_KEY).finish_master_rotation(NEW, NEW_KEY)
    assert (tmp_path / KEYRING_FILE).read_bytes() == before
    await assert_opens(LocalKeyring.open(tmp_path, OLD_KEY), sealed)


# --- every wrapped section, registered once ------------------------------------------------


def _feature_key_context(tenant: str) -> bytes:
    return f"callvault/test-feature-key/v1|{tenant}".encode()


async def test_a_registered_section_is_rewrapped_and_an_unregistered_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A section another part of callvault keeps in keyring.json (per-tenant keys of some
    new feature, say) is rotated with the rest once it has its line in
    ``WRAPPED_SECTIONS``; without it the keyring refuses to open, rather than leave the
    section under the old key. (The audit keys' sections are registered:
    ``tests/unit/test_auditkeys.py``.)"""
    await two_tenants(tmp_path, OLD_KEY)
    secret = bytes(range(50, 82))
    doc = keyring_doc(tmp_path)
    wrap = wrap_key(OLD_KEY, secret, context=_feature_key_context("acme"))
    doc["feature_keys"] = {"acme": base64.b64encode(wrap).decode()}
    (tmp_path / KEYRING_FILE).write_bytes(orjson.dumps(doc))
    with pytest.raises(ConfigError, match="feature_keys.*neither registered"):
        LocalKeyring.open(tmp_path, OLD_KEY)

    monkeypatch.setitem(WRAPPED_SECTIONS, "feature_keys", keyfile.per_name(_feature_key_context))
    keyring = LocalKeyring.open(tmp_path, OLD_KEY)
    assert keyring.begin_master_rotation(NEW_KEY) == 5
    keyring.finish_master_rotation(NEW, NEW_KEY)
    rewrapped = base64.b64decode(keyring_doc(tmp_path)["feature_keys"]["acme"])
    assert unwrap_key(NEW_KEY, rewrapped, context=_feature_key_context("acme")) == secret


# --- the master key file in the data dir ---------------------------------------------------


def file_steps(data_dir: Path) -> tuple[bytes, list[Callable[[], object]], dict[str, bytes]]:
    """The steps of ``KeyFileRotation`` one by one, as ``run`` takes them."""
    rotation = KeyFileRotation(data_dir)
    old = read_key_file(data_dir / MASTER_KEY_FILE)
    keyring = rotation.open_keyring()
    made: dict[str, bytes] = {}
    steps: list[Callable[[], object]] = [
        lambda: made.setdefault("new", rotation.write_next()),
        lambda: rotation.add_new_side(keyring, made["new"]),
        lambda: rotation.keep_old_copy(old),
        rotation.install_next,
        lambda: rotation.drop_old_side(keyring, made["new"]),
    ]
    return old, steps, made


@pytest.mark.parametrize("done", range(6))
async def test_a_crash_between_any_two_steps_of_the_file_rotation(
    tmp_path: Path, done: int
) -> None:
    """Kill the rotation after ``done`` steps: the data dir opens as a restarted process
    would open it (with whatever ``master.key`` holds), with the old key until the old wraps
    are dropped, with the new key once both sides exist; a ``serve`` that was running all
    along goes on, and what it adds meanwhile survives; running it again finishes it."""
    load_master_key(None, tmp_path)
    sealed = await two_tenants(tmp_path, read_key_file(tmp_path / MASTER_KEY_FILE))
    serve = KeyFileRotation(tmp_path).open_keyring()
    old, steps, made = file_steps(tmp_path)
    for step in steps[:done]:
        step()

    await assert_opens(KeyFileRotation(tmp_path).open_keyring(), sealed)
    if done < 5:
        await assert_opens(LocalKeyring.open(tmp_path, old), sealed)
    if done >= 2:
        await assert_opens(LocalKeyring.open(tmp_path, made["new"]), sealed)
    await assert_opens(serve, sealed)
    # A KEK made now by serve is under the key serve holds only (the old one up to step 4):
    # running the rotation again wraps it under the new key too.
    await seal(serve, "initech", "obj-1", sealed)

    report = KeyFileRotation(tmp_path).run()
    assert report.resumed == (2 <= done)
    final = read_key_file(tmp_path / MASTER_KEY_FILE)
    assert final != old
    if done >= 2:  # the interrupted rotation was finished, not started over
        assert final == made["new"]
    await assert_opens(LocalKeyring.open(tmp_path, final), sealed)
    await assert_opens(serve, sealed)
    refused(tmp_path, old)
    assert not (tmp_path / NEXT_KEY_FILE).exists()
    assert not (tmp_path / OLD_KEY_FILE).exists()
    assert not keyfile.in_rotation(keyring_doc(tmp_path))


async def test_a_lost_next_key_file_starts_the_rotation_over(tmp_path: Path) -> None:
    load_master_key(None, tmp_path)
    old = read_key_file(tmp_path / MASTER_KEY_FILE)
    sealed = await two_tenants(tmp_path, old)
    _, steps, made = file_steps(tmp_path)
    for step in steps[:2]:
        step()
    (tmp_path / NEXT_KEY_FILE).unlink()  # the new key is gone before it was installed
    KeyFileRotation(tmp_path).run()
    final = read_key_file(tmp_path / MASTER_KEY_FILE)
    assert final not in (old, made["new"])
    await assert_opens(LocalKeyring.open(tmp_path, final), sealed)
    refused(tmp_path, made["new"])


async def test_a_keyring_whose_key_is_the_file_follows_the_rotation(tmp_path: Path) -> None:
    """``serve`` and ``worker`` read the master key file again when the keyring stops
    opening with the key they hold: they go on after ``keys rotate-master``, no restart."""
    path = tmp_path / MASTER_KEY_FILE
    old = load_master_key(None, tmp_path)
    sealed = await two_tenants(tmp_path, old)
    serve = LocalKeyring.open(
        tmp_path, old, source=master_key_source(path), reload_master=lambda: read_key_file(path)
    )
    await assert_opens(serve, sealed)
    KeyFileRotation(tmp_path).run()
    await assert_opens(serve, sealed)
    await seal(serve, "initech", "obj-1", sealed)  # a new KEK, wrapped under the new key
    await assert_opens(LocalKeyring.open(tmp_path, read_key_file(path)), sealed)
    error = refused(tmp_path, old, source=master_key_source(path))
    assert error.setting == f"master key file {path}"
