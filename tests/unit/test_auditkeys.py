"""The audit log's keys in the keyring: per-tenant HMAC keys (pending, active, never destroyed),
the checkpoint signing key, and their re-wrap by a rotation of the master key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from crypto import keyfile
from crypto.auditkeys import (
    ACTIVE_SECTION,
    LEGACY_SECTION,
    PENDING_SECTION,
    SIGNING_SECTION,
    AuditKey,
    AuditKeyring,
)
from crypto.errors import ConfigError, DecryptionFailed, KeyUnavailable
from crypto.keyfile import NEW, OLD
from crypto.keys import KEYRING_FILE, PLAIN_SECTIONS, WRAPPED_SECTIONS, LocalKeyring
from crypto.objectformat import unwrap_key
from crypto.signing import key_id_of, verify_signature

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(32, 64))


def ring(path: Path, master: bytes = MASTER) -> AuditKeyring:
    """The audit keys of the keyring in ``path``, as one process opens them."""
    return AuditKeyring(LocalKeyring.open(path, master))


def document(path: Path) -> dict:  # type: ignore[type-arg]
    return dict(json.loads((path / KEYRING_FILE).read_text()))


async def test_an_empty_chain_gets_an_active_key_that_every_process_shares(
    tmp_path: Path,
) -> None:
    first, second = ring(tmp_path), ring(tmp_path)  # two processes on one keyring
    assert await first.audit_key("acme") is None
    made = await first.create_audit_key("acme", pending=False)
    assert made.active and len(made.key) == 32
    assert await second.audit_key("acme") == made  # the other process reads the file
    assert await second.create_audit_key("acme", pending=False) == made  # no second key
    assert await first.create_audit_key("beta", pending=False) != made  # one key per tenant
    # On disk only wrapped, under the tenant's context.
    stored = document(tmp_path)[ACTIVE_SECTION]["acme"]
    assert made.key.hex() not in (tmp_path / KEYRING_FILE).read_text()
    assert base64.b64decode(stored) != made.key
    assert "key" not in repr(made).replace("AuditKey", "")


async def test_a_pending_key_becomes_active_once(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    pending = await keys.create_audit_key("acme", pending=True)
    assert not pending.active
    assert "acme" in document(tmp_path)[PENDING_SECTION]
    assert await keys.create_audit_key("acme", pending=False) == pending  # as it is
    await keys.activate_audit_key("acme")
    doc = document(tmp_path)
    assert "acme" in doc[ACTIVE_SECTION] and "acme" not in doc[PENDING_SECTION]
    active = await ring(tmp_path).audit_key("acme")
    assert active is not None and active.active and active.key == pending.key
    await keys.activate_audit_key("acme")  # again: nothing changes
    assert await ring(tmp_path).audit_key("acme") == active


async def test_moving_a_pending_entry_into_the_active_section_by_hand_fails(
    tmp_path: Path,
) -> None:
    # The state is bound to the wrap's context: editing the file cannot activate a key.
    keys = ring(tmp_path)
    await keys.create_audit_key("acme", pending=True)
    doc = document(tmp_path)
    doc[ACTIVE_SECTION] = {"acme": doc[PENDING_SECTION].pop("acme")}
    (tmp_path / KEYRING_FILE).write_text(json.dumps(doc))
    with pytest.raises(KeyUnavailable, match="acme"):
        await ring(tmp_path).audit_key("acme")


async def test_audit_keys_outlive_the_tenants_keks(tmp_path: Path) -> None:
    keyring = LocalKeyring.open(tmp_path, MASTER)
    keys = AuditKeyring(keyring)
    made = await keys.create_audit_key("acme", pending=False)
    await keyring.wrap("acme", "obj-1", bytes(32))  # a KEK exists
    await keyring.rotate("acme")
    await keyring.destroy_tenant("acme")  # crypto-shreds the tenant's objects...
    assert await ring(tmp_path).audit_key("acme") == made  # ...not the log of it


async def test_the_signing_key_is_made_once_and_verifies_with_cryptography(
    tmp_path: Path,
) -> None:
    signer = await ring(tmp_path).checkpoint_signer()
    again = await ring(tmp_path).checkpoint_signer()
    assert (again.key_id, again.public_key) == (signer.key_id, signer.public_key)
    assert signer.key_id == key_id_of(signer.public_key)
    assert document(tmp_path)[SIGNING_SECTION]["key_id"] == signer.key_id
    signature = again.sign(b"message")
    Ed25519PublicKey.from_public_bytes(signer.public_key).verify(signature, b"message")
    pem = load_pem_public_key(signer.public_key_pem.encode())
    assert isinstance(pem, Ed25519PublicKey)
    pem.verify(signature, b"message")
    assert not verify_signature(signer.public_key, b"other", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(signer.public_key, b"message", flipped)
    assert not verify_signature(signer.public_key, b"message", b"short")


async def test_a_swapped_signing_key_id_is_refused(tmp_path: Path) -> None:
    await ring(tmp_path).checkpoint_signer()
    doc = document(tmp_path)
    doc[SIGNING_SECTION]["key_id"] = "ed25519-0000000000000000"
    (tmp_path / KEYRING_FILE).write_text(json.dumps(doc))
    with pytest.raises(KeyUnavailable, match="signing key"):
        await ring(tmp_path).checkpoint_signer()


async def test_the_keyring_keeps_the_sections_when_it_writes_its_own(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    made = await keys.create_audit_key("acme", pending=False)
    signer = await keys.checkpoint_signer()
    keyring = LocalKeyring.open(tmp_path, MASTER)
    await keyring.wrap("globex", "obj-1", bytes(32))  # the keyring writes the file
    await keyring.rotate("globex")
    reopened = ring(tmp_path)
    assert await reopened.audit_key("acme") == made
    assert (await reopened.checkpoint_signer()).key_id == signer.key_id


def wraps(path: Path) -> list[tuple[tuple[str, ...], bytes, object]]:
    """Every wrapped value of the keyring file: its place, its context and its value."""
    doc = document(path)
    found = []
    for place, context in keyfile.contexts(doc, WRAPPED_SECTIONS, PLAIN_SECTIONS):
        value: object = doc
        for part in place:
            value = value[part]  # type: ignore[index]
        found.append((place, context, value))
    return found


def opens(master: bytes, wrapped: object, context: bytes) -> bool:
    try:
        unwrap_key(master, base64.b64decode(str(wrapped)), context=context)
    except DecryptionFailed:
        return False
    return True


async def test_a_master_key_rotation_rewraps_the_audit_keys_and_the_signing_key(
    tmp_path: Path,
) -> None:
    """The audit sections are registered with the keyring: ``begin_master_rotation`` wraps
    them under both keys, processes holding either key read them meanwhile, and after the
    commit they open under the new key only, with the same keys inside."""
    keyring = LocalKeyring.open(tmp_path, MASTER)
    keys = AuditKeyring(keyring)
    active = await keys.create_audit_key("acme", pending=False)
    pending = await keys.create_audit_key("beta", pending=True)
    signer = await keys.checkpoint_signer()
    await keys.close_legacy(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    await keyring.wrap("acme", "obj-1", bytes(32))  # a KEK beside them
    assert {place[0] for place, _, _ in wraps(tmp_path)} == {
        "check", "tenants", ACTIVE_SECTION, PENDING_SECTION, SIGNING_SECTION,
    }  # fmt: skip

    # check, one KEK, two audit keys, the signing seed
    assert keyring.begin_master_rotation(OTHER_MASTER) == 5
    for master in (MASTER, OTHER_MASTER):  # either key reads the sections meanwhile
        during = ring(tmp_path, master)
        assert await during.audit_key("acme") == active
        assert await during.audit_key("beta") == pending
        assert (await during.checkpoint_signer()).public_key == signer.public_key
    # A process still on the old key writes a section meanwhile (activates beta's key, makes
    # gamma's): the values it did not change keep both sides, its new ones have the old only.
    old_process = ring(tmp_path, MASTER)
    await old_process.activate_audit_key("beta")
    gamma = await old_process.create_audit_key("gamma", pending=False)
    doc = document(tmp_path)
    assert set(doc[ACTIVE_SECTION]["acme"]) == {"old", "new"}
    assert set(doc[SIGNING_SECTION]["seed"]) == {"old", "new"}
    assert set(doc[ACTIVE_SECTION]["gamma"]) == {"old"}
    with pytest.raises(KeyUnavailable, match="no new side"):
        LocalKeyring.open(tmp_path, OTHER_MASTER).finish_master_rotation(NEW)

    assert LocalKeyring.open(tmp_path, OTHER_MASTER).finish_master_rotation(NEW, MASTER) == 6
    moved = ring(tmp_path, OTHER_MASTER)
    assert await moved.audit_key("acme") == active
    assert await moved.audit_key("beta") == AuditKey(pending.key, active=True)
    assert await moved.audit_key("gamma") == gamma
    assert (await moved.checkpoint_signer()).public_key == signer.public_key
    assert await moved.legacy_closed()
    # No wrap under the old master key remains, and every one opens under the new.
    found = wraps(tmp_path)
    assert len(found) == 6
    for place, context, wrapped in found:
        assert isinstance(wrapped, str), place  # one side only
        assert opens(OTHER_MASTER, wrapped, context), place
        assert not opens(MASTER, wrapped, context), place
    with pytest.raises(ConfigError, match="not the master key"):
        LocalKeyring.open(tmp_path, MASTER)


async def test_aborting_a_master_key_rotation_keeps_the_audit_keys_under_the_old_key(
    tmp_path: Path,
) -> None:
    keys = ring(tmp_path)
    active = await keys.create_audit_key("acme", pending=False)
    signer = await keys.checkpoint_signer()
    LocalKeyring.open(tmp_path, MASTER).begin_master_rotation(OTHER_MASTER)
    LocalKeyring.open(tmp_path, MASTER).finish_master_rotation(OLD)
    back = ring(tmp_path, MASTER)
    assert await back.audit_key("acme") == active
    assert (await back.checkpoint_signer()).key_id == signer.key_id
    for _place, context, wrapped in wraps(tmp_path):
        assert opens(MASTER, wrapped, context) and not opens(OTHER_MASTER, wrapped, context)


async def test_a_section_that_is_not_registered_is_refused_before_it_is_written(
    tmp_path: Path,
) -> None:
    keyring = LocalKeyring.open(tmp_path, MASTER)
    before = (tmp_path / KEYRING_FILE).read_bytes()

    def change(sections: dict[str, object]) -> None:
        sections["unregistered_keys"] = {"acme": "c2VjcmV0"}

    with pytest.raises(ValueError, match="unregistered_keys.*neither registered"):
        keyring.update_sections(change)
    assert (tmp_path / KEYRING_FILE).read_bytes() == before
    assert keyring.section("unregistered_keys") is None


async def test_the_legacy_door_closes_once(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    assert not await keys.legacy_closed()
    first = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    await keys.close_legacy(first)
    await keys.close_legacy(first + timedelta(days=1))
    assert await ring(tmp_path).legacy_closed()  # another process sees it
    assert document(tmp_path)[LEGACY_SECTION] == {"closed_at": first.isoformat()}
