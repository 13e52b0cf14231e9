"""The audit log's keys: one HMAC key per tenant, and the gateway's checkpoint signing key.

Why they live in the keyring: the audit chain is only as strong as the secrecy of what
keys it. A database writer can rewrite rows and recompute plain hashes, but not HMACs under
a key that is not in the database, nor signatures under a key that is not either. So both
kinds of key are kept in the keyring file beside the tenants' KEKs, each wrapped by the
master key (AES-256-GCM, ``wrap_key``) and bound to a context string, in sections of their
own (``LocalKeyring.section``):

* ``audit_keys``: ``{tenant: base64(wrap(master, key))}``, each under the context
  ``callvault/audit-key/v1|<tenant>``;
* ``audit_keys_pending``: the same shape, context ``callvault/audit-key-pending/v1|<tenant>``;
* ``audit_legacy_heads``: beside each pending key, ``{tenant: base64(wrap(master,
  legacy_head_digest(seq, hash)))}``, context ``callvault/audit-legacy-head/v1|<tenant>``:
  the legacy chain's head the pending key was made to re-key, which nobody without the
  master key can change, so that a chain rewritten after a crash is not re-keyed as if it
  were that one (``AuditKey.made_for``);
* ``audit_signing_key``: ``{"key_id": <id>, "seed": base64(wrap(master, ed25519 seed))}``,
  context ``callvault/audit-signing-key/v1|<key_id>``;
* ``audit_legacy``: ``{"closed_at": <ISO time>}``, no secret: when the chains written before
  audit keys existed were re-keyed (the first start of this version). After it, a chain
  with events and no key (a tenant an old node made during the upgrade, or one a database
  writer made up) is not re-keyed on its own, which would vouch for it: the operator re-keys
  it on purpose (``callvault audit rekey``).

The sections are registered in ``crypto.keys.WRAPPED_SECTIONS`` (with their contexts, which
live there) and ``PLAIN_SECTIONS``, so ``callvault keys rotate-master`` re-wraps the audit
keys and the signing seed with the rest of the file, and a process holding one side of a
rotation in progress keeps the other side of every value it does not change.

An audit key is never destroyed, not even with its tenant: the log of what was done to a
deleted tenant's data outlives it. A key is *pending* while a legacy (plain SHA-256) chain
is being re-keyed under it and becomes *active* once the re-keyed chain is committed; the
state is where the key sits in the file, under a context of its own, so that nobody without
the master key can move a key between the two. A tenant with an active key is always
verified keyed: that is decided here, never by anything in the database.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import (
    LocalKeyring,
    audit_key_context,
    legacy_head_context,
    signing_key_context,
)
from crypto.signing import CheckpointSigner, new_seed

AUDIT_KEY_SIZE = 32
ACTIVE_SECTION = "audit_keys"
PENDING_SECTION = "audit_keys_pending"
HEADS_SECTION = "audit_legacy_heads"
SIGNING_SECTION = "audit_signing_key"
LEGACY_SECTION = "audit_legacy"


@dataclass(frozen=True)
class AuditKey:
    """A tenant's audit key and whether it is active (pending: its chain is being re-keyed)."""

    key: bytes
    active: bool
    legacy_head: bytes | None = None
    """For a pending key: ``legacy_head_digest`` of the legacy head it was made to re-key."""

    def made_for(self, seq: int, head: str) -> bool:
        """Whether this pending key was made to re-key the legacy chain whose head is
        (``seq``, ``head``)."""
        return self.legacy_head is not None and hmac.compare_digest(
            self.legacy_head, legacy_head_digest(seq, head)
        )

    def __repr__(self) -> str:  # never the key itself, in a log or a traceback
        return f"AuditKey(active={self.active})"


def legacy_head_digest(seq: int, head: str) -> bytes:
    """SHA-256 of ``callvault-legacy-head/v1\n`` and the canonical JSON of ``{hash, seq}``."""
    body = json.dumps({"hash": head, "seq": seq}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"callvault-legacy-head/v1\n" + body.encode()).digest()


class AuditKeyProvider(Protocol):
    """The audit log's keys, as the catalog asks for them."""

    async def audit_key(self, tenant: str) -> AuditKey | None:
        """The tenant's audit key (active or pending); None if it has none yet."""

    async def create_audit_key(
        self, tenant: str, *, pending: bool, legacy_head: tuple[int, str] | None = None
    ) -> AuditKey:
        """The tenant's audit key, made now if it has none: active for an empty chain,
        pending for a legacy chain about to be re-keyed (``legacy_head``: that chain's
        (seq, hash), kept beside the key). An existing key is returned as it is (two
        processes racing get the same key)."""

    async def activate_audit_key(self, tenant: str) -> None:
        """Make the tenant's pending key active (its re-keyed chain is committed)."""

    async def checkpoint_signer(self) -> CheckpointSigner:
        """The gateway's Ed25519 checkpoint key (made on first use)."""


class AuditKeyring:
    """An ``AuditKeyProvider`` in sections of a ``LocalKeyring``'s file. Active keys and the
    signing key are cached for the life of the process (they never change); a tenant that
    has no active key is looked up in the file again each time (another process may have
    made or activated it)."""

    def __init__(self, keyring: LocalKeyring) -> None:
        self._keyring = keyring
        self._active: dict[str, bytes] = {}
        self._signer: CheckpointSigner | None = None

    async def audit_key(self, tenant: str) -> AuditKey | None:
        cached = self._active.get(tenant)
        if cached is not None:
            return AuditKey(cached, active=True)
        return await asyncio.to_thread(self._lookup, tenant)

    async def create_audit_key(
        self, tenant: str, *, pending: bool, legacy_head: tuple[int, str] | None = None
    ) -> AuditKey:
        found = await self.audit_key(tenant)
        if found is not None:
            return found
        return await asyncio.to_thread(self._create, tenant, pending, legacy_head)

    async def activate_audit_key(self, tenant: str) -> None:
        await asyncio.to_thread(self._activate, tenant)

    async def checkpoint_signer(self) -> CheckpointSigner:
        if self._signer is None:
            self._signer = await asyncio.to_thread(self._load_signer)
        return self._signer

    async def legacy_closed(self) -> bool:
        """Whether the legacy chains were re-keyed already (at this keyring's first start
        with audit keys): from then on a chain without a key is not re-keyed on its own."""
        section = await asyncio.to_thread(self._keyring.section, LEGACY_SECTION)
        return isinstance(section, dict) and "closed_at" in section

    async def close_legacy(self, now: datetime) -> None:
        """Record that every legacy chain was re-keyed (``now``: when), once."""

        def change(sections: dict[str, Any]) -> None:
            if not isinstance(sections.get(LEGACY_SECTION), dict):
                sections[LEGACY_SECTION] = {"closed_at": now.isoformat()}

        await asyncio.to_thread(self._keyring.update_sections, change)

    # -- blocking parts (threads) ----------------------------------------------------------

    def _lookup(self, tenant: str) -> AuditKey | None:
        return self._find(
            tenant,
            {
                ACTIVE_SECTION: self._keyring.section(ACTIVE_SECTION),
                PENDING_SECTION: self._keyring.section(PENDING_SECTION),
                HEADS_SECTION: self._keyring.section(HEADS_SECTION),
            },
        )

    def _find(self, tenant: str, sections: dict[str, Any]) -> AuditKey | None:
        """The tenant's key in ``sections``; an active entry wins over a pending one."""
        active = _entries(sections.get(ACTIVE_SECTION)).get(tenant)
        if active is not None:
            key = self._open(tenant, active, pending=False)
            self._active[tenant] = key
            return AuditKey(key, active=True)
        pending = _entries(sections.get(PENDING_SECTION)).get(tenant)
        if pending is not None:
            key = self._open(tenant, pending, pending=True)
            head = _entries(sections.get(HEADS_SECTION)).get(tenant)
            digest = None if head is None else self._open_head(tenant, head)
            return AuditKey(key, active=False, legacy_head=digest)
        return None

    def _open_head(self, tenant: str, wrapped: str) -> bytes:
        try:
            return self._keyring.unseal(
                base64.b64decode(wrapped), context=legacy_head_context(tenant)
            )
        except (DecryptionFailed, binascii.Error, ValueError):
            raise KeyUnavailable(
                f"the legacy head of tenant {tenant!r} does not open under the master key"
            ) from None

    def _open(self, tenant: str, wrapped: str, *, pending: bool) -> bytes:
        try:
            return self._keyring.unseal(
                base64.b64decode(wrapped), context=audit_key_context(tenant, pending=pending)
            )
        except (DecryptionFailed, binascii.Error, ValueError):
            raise KeyUnavailable(
                f"the audit key of tenant {tenant!r} does not open under the master key"
            ) from None

    def _seal(self, tenant: str, key: bytes, *, pending: bool) -> str:
        wrapped = self._keyring.seal(key, context=audit_key_context(tenant, pending=pending))
        return base64.b64encode(wrapped).decode()

    def _create(self, tenant: str, pending: bool, legacy_head: tuple[int, str] | None) -> AuditKey:
        def change(sections: dict[str, Any]) -> AuditKey:
            # Under the file lock: another process may have made (or activated) it meanwhile.
            found = self._find(tenant, sections)
            if found is not None:
                return found
            key = secrets.token_bytes(AUDIT_KEY_SIZE)
            section = PENDING_SECTION if pending else ACTIVE_SECTION
            entries = _entries(sections.get(section))
            entries[tenant] = self._seal(tenant, key, pending=pending)
            sections[section] = entries
            digest = None
            if pending and legacy_head is not None:
                digest = legacy_head_digest(*legacy_head)
                wrapped = self._keyring.seal(digest, context=legacy_head_context(tenant))
                heads = _entries(sections.get(HEADS_SECTION))
                heads[tenant] = base64.b64encode(wrapped).decode()
                sections[HEADS_SECTION] = heads
            return AuditKey(key, active=not pending, legacy_head=digest)

        made = self._keyring.update_sections(change)
        if made.active:
            self._active[tenant] = made.key
        return made

    def _activate(self, tenant: str) -> None:
        """Move the pending key into the active section, re-wrapped under the active
        context, in one write of the file."""

        def change(sections: dict[str, Any]) -> bytes:
            found = self._find(tenant, sections)
            if found is None:
                raise KeyUnavailable(f"tenant {tenant!r} has no audit key to activate")
            active = _entries(sections.get(ACTIVE_SECTION))
            pending = _entries(sections.get(PENDING_SECTION))
            if not found.active:
                active[tenant] = self._seal(tenant, found.key, pending=False)
            pending.pop(tenant, None)
            sections[ACTIVE_SECTION], sections[PENDING_SECTION] = active, pending
            heads = _entries(sections.get(HEADS_SECTION))
            if heads.pop(tenant, None) is not None:
                sections[HEADS_SECTION] = heads
            return found.key

        self._active[tenant] = self._keyring.update_sections(change)

    def _load_signer(self) -> CheckpointSigner:
        current = self._keyring.section(SIGNING_SECTION)
        if current is not None:
            return self._open_signer(current)

        def change(sections: dict[str, Any]) -> CheckpointSigner:
            if sections.get(SIGNING_SECTION) is not None:  # another process made it first
                return self._open_signer(sections[SIGNING_SECTION])
            seed = new_seed()
            signer = CheckpointSigner(seed)
            wrapped = self._keyring.seal(seed, context=signing_key_context(signer.key_id))
            sections[SIGNING_SECTION] = {
                "key_id": signer.key_id,
                "seed": base64.b64encode(wrapped).decode(),
            }
            return signer

        return self._keyring.update_sections(change)

    def _open_signer(self, value: Any) -> CheckpointSigner:
        try:
            key_id = str(value["key_id"])
            seed = self._keyring.unseal(
                base64.b64decode(value["seed"]), context=signing_key_context(key_id)
            )
        except (DecryptionFailed, binascii.Error, ValueError, TypeError, KeyError):
            raise KeyUnavailable(
                "the audit checkpoint signing key does not open under the master key"
            ) from None
        signer = CheckpointSigner(seed)
        if signer.key_id != key_id:
            raise KeyUnavailable("the audit checkpoint signing key does not match its key id")
        return signer


def _entries(value: Any) -> dict[str, str]:
    """A section of tenant entries as a fresh dict (an absent section is empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KeyUnavailable("a section of audit keys in the keyring is malformed")
    return {str(k): str(v) for k, v in value.items()}
