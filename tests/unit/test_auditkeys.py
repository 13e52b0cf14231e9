"""The audit log's keys in the keyring: per-tenant HMAC keys (pending, active, never destroyed),
the checkpoint signing key, and their re-wrap under a new master key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from crypto.auditkeys import (
    ACTIVE_SECTION,
    LEGACY_SECTION,
    PENDING_SECTION,
    SIGNING_SECTION,
    AuditKeyring,
    rewrap_audit_sections,
)
from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import KEYRING_FILE, LocalKeyring
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


async def test_rewrapping_the_sections_under_a_new_master_key(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    active = await keys.create_audit_key("acme", pending=False)
    pending = await keys.create_audit_key("beta", pending=True)
    signer = await keys.checkpoint_signer()
    doc = document(tmp_path)
    sections = {name: doc[name] for name in (ACTIVE_SECTION, PENDING_SECTION, SIGNING_SECTION)}
    rewrapped = rewrap_audit_sections({**sections, "other": [1]}, MASTER, OTHER_MASTER)
    assert rewrapped["other"] == [1]
    # What `keys rotate-master` would write: the keyring's own fields under the new master
    # (here: a fresh keyring) with the audit sections re-wrapped.
    new_dir = tmp_path / "new"
    LocalKeyring.open(new_dir, OTHER_MASTER)
    new_doc = document(new_dir)
    new_doc.update({name: rewrapped[name] for name in sections})
    (new_dir / KEYRING_FILE).write_text(json.dumps(new_doc))
    moved = ring(new_dir, OTHER_MASTER)
    assert await moved.audit_key("acme") == active
    assert await moved.audit_key("beta") == pending
    assert (await moved.checkpoint_signer()).public_key == signer.public_key
    with pytest.raises(DecryptionFailed):
        rewrap_audit_sections(sections, OTHER_MASTER, MASTER)


async def test_the_legacy_door_closes_once(tmp_path: Path) -> None:
    keys = ring(tmp_path)
    assert not await keys.legacy_closed()
    first = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    await keys.close_legacy(first)
    await keys.close_legacy(first + timedelta(days=1))
    assert await ring(tmp_path).legacy_closed()  # another process sees it
    assert document(tmp_path)[LEGACY_SECTION] == {"closed_at": first.isoformat()}
