"""Envelope keys: per-tenant key-encryption keys (KEKs) that wrap one DEK per object.

Callers see only the ``KeyProvider`` protocol, so a KMS or Vault-transit provider can
replace the local keyring without touching them. The local keyring ("local": its KEKs are
unwrapped here, by the master key, not in a KMS) keeps each tenant's KEK versions in one
JSON document, every KEK wrapped by the master key. Where the document lives is its
*backing* (``crypto.keyringbacking``): ``keyring.json`` in the data dir, shared by the
processes of one host (``serve``, ``worker``, ``keys rotate``), or one row of the catalog
database, shared by every node of a fleet (``storage.keyring``). Writes take the backing's
exclusive lock, read the document as it is then, change it and write it back; every
operation first asks the backing whether the document changed since it was loaded and
reloads it if so, so a KEK destroyed or rotated by another process or node is seen at the
next operation.

The master key itself can be rotated while processes run (``begin_master_rotation``,
``finish_master_rotation``; ``crypto.keyfile`` explains the two phases that keep it
crash-safe), and KEK versions that no stored wrap references any more can be retired
(``retire_unused``).

Other crypto modules keep sections of their own in the same document (``crypto.auditkeys``: the
audit keys and the checkpoint signing key), read and changed through ``section`` and
``update_sections``; each is registered below (``WRAPPED_SECTIONS``, ``PLAIN_SECTIONS``) so
that a master-key rotation re-wraps its values with the rest.

Destroying a tenant's KEKs makes every DEK of that tenant unwrappable, and so every object
of the tenant unreadable, wherever copies of the objects or of the catalog remain.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import orjson

from crypto import keyfile
from crypto.errors import ConfigError, DecryptionFailed, KeyUnavailable
from crypto.keyfile import NEW, OLD, Side, SlotPath, SlotWalker
from crypto.keyringbacking import FileBacking, FileLock, Identity, KeyringBacking
from crypto.objectformat import DEK_SIZE, unwrap_key, wrap_key

log = logging.getLogger(__name__)

MASTER_KEY_SETTING = "CALLVAULT_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
KEYRING_FILE = "keyring.json"
_KEYRING_FORMAT = 1
_UNKNOWN = object()
"""The identity of a document a keyring must reload before it trusts what it holds (a
write under the lock failed part-way, so its view may hold what was never stored)."""
_OWN_FIELDS = frozenset({"format", "check", "tenants", "destroyed"})
"""The top-level fields of the keyring document this class reads; every other top-level field is
a *section* another crypto module keeps here (``crypto.auditkeys``): registered in
``WRAPPED_SECTIONS`` or ``PLAIN_SECTIONS``, and kept as it is."""
T = TypeVar("T")


@dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under one version of a tenant's KEK, as the key table stores it."""

    kek_id: str
    kek_version: int
    blob: bytes


@dataclass(frozen=True)
class KekRef:
    """The KEK that new wraps use: its id and version."""

    kek_id: str
    kek_version: int


class KeyProvider(Protocol):
    """Wraps and unwraps per-object DEKs under per-tenant KEKs."""

    async def wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        """Wrap ``dek`` under the tenant's current KEK (created on first use)."""

    async def unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        """Return the DEK; raise ``KeyUnavailable`` if the KEK version is unknown or gone."""

    async def rotate(self, tenant: str) -> KekRef:
        """Add a new KEK version and make it current; return it."""

    async def destroy_tenant(self, tenant: str) -> None:
        """Destroy every KEK version of the tenant (crypto-shreds all its objects)."""


def dek_context(tenant: str, object_id: str, kek_id: str, kek_version: int) -> bytes:
    """The AAD binding a wrapped DEK to its tenant, object and KEK version."""
    return f"callvault/dek/v1|{tenant}|{object_id}|{kek_id}|{kek_version}".encode()


def kek_context(tenant: str, kek_id: str, version: int) -> bytes:
    """The context a tenant's KEK version is wrapped under by the master key."""
    return f"callvault/kek/v1|{tenant}|{kek_id}|{version}".encode()


def _tenant_keks(section: dict[str, Any]) -> list[tuple[SlotPath, bytes]]:
    """``tenants``: ``{tenant: {"kek_id", "current", "versions": {version: wrap}}}``."""
    return [
        ((tenant, "versions", version), kek_context(tenant, entry["kek_id"], int(version)))
        for tenant, entry in section.items()
        for version in entry["versions"]
    ]


def audit_key_context(tenant: str, *, pending: bool = False) -> bytes:
    """The context a tenant's audit key is wrapped under (active, or pending:
    ``crypto.auditkeys``)."""
    kind = "audit-key-pending" if pending else "audit-key"
    return f"callvault/{kind}/v1|{tenant}".encode()


def legacy_head_context(tenant: str) -> bytes:
    """The context the digest of the legacy head a pending audit key was made for is wrapped
    under (``crypto.auditkeys``)."""
    return f"callvault/audit-legacy-head/v1|{tenant}".encode()


def signing_key_context(key_id: str) -> bytes:
    """The context the audit checkpoint signing key's seed is wrapped under."""
    return f"callvault/audit-signing-key/v1|{key_id}".encode()


def _signing_key(section: dict[str, Any]) -> list[tuple[SlotPath, bytes]]:
    """``audit_signing_key``: ``{"key_id": id, "seed": wrap}``."""
    return [(("seed",), signing_key_context(str(section["key_id"])))]


WRAPPED_SECTIONS: dict[str, SlotWalker] = {
    "check": keyfile.one(keyfile.CHECK_CONTEXT),
    "tenants": _tenant_keks,
    "audit_keys": keyfile.per_name(audit_key_context),
    "audit_keys_pending": keyfile.per_name(lambda t: audit_key_context(t, pending=True)),
    "audit_legacy_heads": keyfile.per_name(legacy_head_context),
    "audit_signing_key": _signing_key,
    # Each further top-level section of keyring.json holding values wrapped by the master
    # key is one line here, naming where its values sit and their AAD context, so that a
    # master-key rotation re-wraps them and writers keep both sides of them.
}
"""Where keyring.json keeps values wrapped by the master key, section by section."""

PLAIN_SECTIONS = frozenset({"format", "destroyed", "audit_legacy"})
"""The top-level sections of keyring.json that hold no secret. Any other section must be
in ``WRAPPED_SECTIONS``, or the keyring refuses to open."""


@dataclass
class _TenantKeys:
    kek_id: str
    current: int
    versions: dict[int, bytes]  # version -> KEK wrapped by the master key


@dataclass(frozen=True)
class RetiredVersions:
    """What ``retire_unused`` did to one tenant's KEK."""

    kek_id: str
    retired: tuple[int, ...]
    kept: tuple[int, ...]


InUse = Callable[[], Awaitable[set[tuple[str, int]]]]
"""The ``(kek_id, kek_version)`` pairs that stored wraps reference now (the key table)."""


@runtime_checkable
class RetiresKekVersions(Protocol):
    """A key provider that can retire the KEK versions nothing uses any more."""

    async def retire_unused(self, tenant: str, in_use: InUse) -> RetiredVersions | None:
        """Remove every non-current KEK version of the tenant that ``in_use`` does not
        name; ``None`` when the tenant has no keys."""


class LocalKeyring:
    """A ``KeyProvider`` on a JSON keyring document wrapped by the master key, kept by a
    ``KeyringBacking`` (a file in the data dir, or the catalog)."""

    def __init__(
        self,
        backing: KeyringBacking,
        master_key: bytes,
        *,
        source: str = MASTER_KEY_SETTING,
        reload_master: Callable[[], bytes] | None = None,
    ) -> None:
        """``source`` names the master key in errors (the setting, or its file);
        ``reload_master`` reads it again (from its file) when the keyring no longer opens
        with the one in hand because it was rotated meanwhile."""
        if len(master_key) != DEK_SIZE:
            raise ValueError("the master key is 32 bytes")
        self._backing = backing
        self._state = threading.RLock()
        """Serializes this process's threads that load or change the view below (the
        backing's lock serializes processes and nodes)."""
        self._master = master_key
        self._source = source
        self._reload_master = reload_master
        self._tenants: dict[str, _TenantKeys] = {}
        self._destroyed: set[str] = set()
        """Tenants whose keys were destroyed: they never get a KEK again (a deleted tenant's
        id stays taken, so nothing new can be sealed for it by a worker that was busy)."""
        self._check = ""
        self._doc: dict[str, Any] = {}
        """The document as last read, with both sides of a master-key rotation in progress."""
        self._side: Side | None = None
        """The side of a rotation in progress that this process's master key opens."""
        self._kek_cache: dict[tuple[str, int, bytes], bytes] = {}
        """Unwrapped KEKs by tenant, version and wrap: a version made again elsewhere (with
        another wrap) is never answered by a KEK cached for the first."""
        self._sections: dict[str, Any] = {}
        self._seen: Identity | None = None
        """The backing's identity of the document last loaded or written."""
        self._staged: tuple[dict[str, Any], Identity, bytes] | None = None
        """A document written under the backing's lock, its identity and the master key
        that opens it: published as the view only once the lock's transaction committed
        (``_locked``), so that no other coroutine or thread of this process uses a key, or
        reads a section, that never reached the backing."""

    @classmethod
    def open(
        cls,
        data_dir: Path,
        master_key: bytes,
        *,
        source: str = MASTER_KEY_SETTING,
        reload_master: Callable[[], bytes] | None = None,
    ) -> LocalKeyring:
        """Open (or create) the keyring file in ``data_dir``; refuse a master key that does
        not open it, naming the setting, so a wrong key stops the process at start."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls.open_backing(
            FileBacking(data_dir / KEYRING_FILE),
            master_key,
            source=source,
            reload_master=reload_master,
        )

    @classmethod
    def open_backing(
        cls,
        backing: KeyringBacking,
        master_key: bytes,
        *,
        source: str = MASTER_KEY_SETTING,
        reload_master: Callable[[], bytes] | None = None,
        create: bool = True,
    ) -> LocalKeyring:
        """Open the keyring ``backing`` keeps (made there, with the master key's check
        value, if it holds none and ``create``); refuse a master key that does not open it,
        naming ``source``. The backing is closed if the keyring does not open."""
        keyring = cls(backing, master_key, source=source, reload_master=reload_master)
        try:
            with keyring._locked():
                keyring._load(create=create)
        except BaseException:
            backing.close()
            raise
        return keyring

    @property
    def location(self) -> str:
        """Where the document is kept, as errors and logs name it (no secret)."""
        return self._backing.name

    def close(self) -> None:
        """Release the backing's connections (a catalog backing's pool)."""
        self._backing.close()

    # -- KeyProvider ----------------------------------------------------------------------

    async def wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        await self._refresh()
        keys = self._tenants.get(tenant)
        if keys is None:
            keys = await asyncio.to_thread(self._ensure_tenant, tenant)
        kek = self._kek(tenant, keys, keys.current)
        context = dek_context(tenant, object_id, keys.kek_id, keys.current)
        return WrappedKey(keys.kek_id, keys.current, wrap_key(kek, dek, context=context))

    async def unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        await self._refresh()
        keys = self._tenants.get(tenant)
        if keys is None:
            raise KeyUnavailable(f"no keys exist for tenant {tenant!r} (destroyed or never made)")
        if keys.kek_id != wrapped.kek_id or wrapped.kek_version not in keys.versions:
            raise KeyUnavailable(
                f"KEK {wrapped.kek_id} version {wrapped.kek_version} of tenant {tenant!r} "
                "is unknown, retired or destroyed"
            )
        kek = self._kek(tenant, keys, wrapped.kek_version)
        context = dek_context(tenant, object_id, wrapped.kek_id, wrapped.kek_version)
        try:
            return unwrap_key(kek, wrapped.blob, context=context)
        except DecryptionFailed:
            raise KeyUnavailable(
                f"the wrapped DEK of object {object_id} does not open under its KEK "
                "(altered key-table row, or a row of another object)"
            ) from None

    async def rotate(self, tenant: str) -> KekRef:
        return await asyncio.to_thread(self._rotate, tenant)

    async def destroy_tenant(self, tenant: str) -> None:
        await asyncio.to_thread(self._destroy, tenant)

    # -- KEK retirement ---------------------------------------------------------------------

    async def retire_unused(self, tenant: str, in_use: InUse) -> RetiredVersions | None:
        """Remove the tenant's non-current KEK versions that no stored wrap references.

        A process with a stale view of the keyring may have wrapped a DEK under a version
        that was current a moment ago, and its key row may land after ``in_use`` was read.
        So the references are read again after the removal, and a version that gained one
        is put back; a row that lands later still is caught by the writer, which checks
        that its wrap opens after storing it (``MediaVault.create_object``). The versions
        are chosen under the keyring lock from the file as it is then: the current version
        is never removed."""
        referenced = await in_use()
        removed = await asyncio.to_thread(self._remove_versions, tenant, referenced)
        if removed is None:
            return None
        kek_id, gone = removed
        back: dict[int, bytes] = {}
        if gone:
            again = await in_use()
            back = {v: wrap for v, wrap in gone.items() if (kek_id, v) in again}
            if back:
                await asyncio.to_thread(self._reinstate, tenant, kek_id, back)
        keys = self._tenants.get(tenant)
        kept = tuple(sorted(keys.versions)) if keys is not None else ()
        return RetiredVersions(kek_id, tuple(sorted(set(gone) - set(back))), kept)

    def _remove_versions(
        self, tenant: str, referenced: set[tuple[str, int]]
    ) -> tuple[str, dict[int, bytes]] | None:
        with self._locked():
            self._load()
            if self._side is not None:
                raise ConfigError(
                    self._source,
                    "a master-key rotation is in progress; finish it before retiring KEK "
                    "versions (`callvault keys rotate-master`, with --commit when the key "
                    "comes from CALLVAULT_MASTER_KEY)",
                )
            keys = self._tenants.get(tenant)
            if keys is None:
                return None
            gone = {
                version: wrap
                for version, wrap in keys.versions.items()
                if version != keys.current and (keys.kek_id, version) not in referenced
            }
            if gone:
                kept = {v: wrap for v, wrap in keys.versions.items() if v not in gone}
                self._save(tenants=self._with(tenant, keys.kek_id, keys.current, kept))
            return keys.kek_id, gone

    def _reinstate(self, tenant: str, kek_id: str, versions: dict[int, bytes]) -> None:
        with self._locked():
            self._load()
            keys = self._tenants.get(tenant)
            if keys is None or keys.kek_id != kek_id:
                return  # destroyed meanwhile: nothing to put back
            restored = {**keys.versions, **versions}
            self._save(tenants=self._with(tenant, kek_id, keys.current, restored))

    # -- master-key rotation (blocking; the CLI runs these) ----------------------------------

    @property
    def rotation_side(self) -> Side | None:
        """The side of a master-key rotation in progress that this keyring's key opens
        (``"old"`` or ``"new"``), or ``None`` when none is in progress."""
        return self._side

    def begin_master_rotation(self, new_key: bytes, *, new_source: str = "new master key") -> int:
        """Phase one: every value of the document wrapped under both the current and the
        new master key, so that either opens it (processes running with the old key go on).
        Run again, it completes a rotation in progress to the same key. Returns how many
        values the document holds."""
        if len(new_key) != DEK_SIZE:
            raise ValueError("the master key is 32 bytes")
        with self._locked():
            self._load()
            if self._side == NEW:
                raise ConfigError(
                    self._source,
                    "is already the new key of the master-key rotation in progress; "
                    "finish it (--commit) instead",
                )
            if new_key == self._master:
                raise ConfigError(new_source, "is the current master key, not a new one")
            try:
                doc = keyfile.add_side(
                    self._doc, self._master, new_key, WRAPPED_SECTIONS, PLAIN_SECTIONS
                )
            except DecryptionFailed:
                raise ConfigError(
                    new_source,
                    "is not the key of the master-key rotation already in progress; "
                    "finish that one (--commit) or abandon it (--abort) first",
                ) from None
            self._write(doc)
            return len(keyfile.slots(doc, WRAPPED_SECTIONS, PLAIN_SECTIONS))

    def finish_master_rotation(
        self,
        keep: Side,
        other_key: bytes | None = None,
        *,
        other_source: str = "the other master key",
    ) -> int:
        """Phase two: only the ``keep`` side stays (``"new"``: commit; ``"old"``: abort).

        This keyring's key opens one side; ``other_key`` opens the other (needed when this
        key is not the kept one, and to re-wrap values that gained one side only since
        phase one). Every kept wrap is checked to open first, so a wrong key leaves the
        document as it was. Afterwards this keyring holds the kept key. Returns how many
        values the document holds."""
        with self._locked():
            self._load()
            if self._side is None:
                raise ConfigError(self._source, "opens a keyring with no rotation in progress")
            keys: dict[Side, bytes] = {self._side: self._master}
            other: Side = NEW if self._side == OLD else OLD
            if other_key is not None and other_key != self._master:
                try:
                    opens = keyfile.side_of(self._doc, other_key) == other
                except DecryptionFailed:
                    opens = False
                if not opens:
                    raise ConfigError(
                        other_source, f"does not open the {other} side of the rotation"
                    )
                keys[other] = other_key
            if keep not in keys:
                raise ConfigError(other_source, f"is needed: it is the {keep} key, the one kept")
            doc, count = keyfile.keep_side(self._doc, keep, keys, WRAPPED_SECTIONS, PLAIN_SECTIONS)
            self._write(doc, master=keys[keep])  # this keyring holds the kept key once committed
            return count

    # -- sections of other crypto modules (blocking; call them in threads) ----------------

    def seal(self, key: bytes, *, context: bytes) -> bytes:
        """``key`` (32 bytes) wrapped by the master key, bound to ``context``: how every
        value of every section is stored."""
        return wrap_key(self._master, key, context=context)

    def unseal(self, wrapped: bytes, *, context: bytes) -> bytes:
        """Reverse ``seal``; ``DecryptionFailed`` if the value or its context is wrong."""
        return unwrap_key(self._master, wrapped, context=context)

    def section(self, name: str) -> Any:
        """The top-level field ``name`` of the keyring document as last written (reloaded
        if another process or node changed it), or None. During a master-key rotation, the side
        this keyring's key opens."""
        if name in _OWN_FIELDS:
            raise ValueError(f"{name!r} is the keyring's own field")
        self._refresh_now()
        return copy.deepcopy(self._sections.get(name))

    def update_sections(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Change sections under the backing's lock, on the document as it is now:
        ``change`` gets a copy of every section (``{name: value}``), changes it in place and
        returns a result, which is returned; the document is written if anything changed.
        A section must be registered (``WRAPPED_SECTIONS``, ``PLAIN_SECTIONS``), else
        ``ValueError``."""
        with self._locked():
            self._load()
            sections = copy.deepcopy(self._sections)
            result = change(sections)
            if any(name in _OWN_FIELDS for name in sections):
                raise ValueError("a section may not replace the keyring's own fields")
            keyfile.slots(sections, WRAPPED_SECTIONS, PLAIN_SECTIONS)
            if sections != self._sections:
                self._save(sections=sections)
            return result

    # -- the document (blocking; called in threads) ----------------------------------------

    def current(self, tenant: str) -> KekRef | None:
        keys = self._tenants.get(tenant)
        return None if keys is None else KekRef(keys.kek_id, keys.current)

    def _ensure_tenant(self, tenant: str) -> _TenantKeys:
        with self._locked():
            self._load()
            if tenant in self._destroyed:
                raise KeyUnavailable(
                    f"the keys of tenant {tenant!r} were destroyed; nothing new can be sealed"
                )
            keys = self._tenants.get(tenant)
            if keys is None:
                kek_id = f"kek-{secrets.token_hex(8)}"
                keys = _TenantKeys(kek_id, 1, {1: self._new_kek(tenant, kek_id, 1)})
                self._save(tenants={**self._tenants, tenant: keys})
            return keys

    def _rotate(self, tenant: str) -> KekRef:
        with self._locked():
            self._load()
            keys = self._tenants.get(tenant)
            if keys is None:
                raise KeyUnavailable(f"no keys exist for tenant {tenant!r}")
            version = max(keys.versions) + 1
            versions = {**keys.versions, version: self._new_kek(tenant, keys.kek_id, version)}
            self._save(tenants=self._with(tenant, keys.kek_id, version, versions))
            return KekRef(keys.kek_id, version)

    def _destroy(self, tenant: str) -> None:
        with self._locked():
            self._load()
            tenants = {name: keys for name, keys in self._tenants.items() if name != tenant}
            self._save(tenants=tenants, destroyed=self._destroyed | {tenant})

    async def _refresh(self) -> None:
        """Reload the document if another process or node (``keys rotate``, a tenant
        deletion) changed it, so new DEKs are wrapped under the newest KEK and destroyed
        KEKs stop working. A file's identity is one ``stat``, asked here on the event loop
        as before; a database's is a query, asked in a thread."""
        if self._backing.cheap_identity and self._backing.identity() == self._seen:
            return
        await asyncio.to_thread(self._refresh_now)

    def _refresh_now(self) -> None:
        """``_refresh``, blocking (in a thread, or a caller that is one)."""
        if self._backing.identity() != self._seen:
            self._reload()

    def _reload(self) -> None:
        """Load the document as it is now. The backing's read is one consistent snapshot
        (an atomic file replace, one row), so no cross-process lock is taken: reloading
        after every change never queues behind the writers of other nodes."""
        with self._state:
            self._load()

    def _new_kek(self, tenant: str, kek_id: str, version: int) -> bytes:
        return wrap_key(
            self._master,
            secrets.token_bytes(DEK_SIZE),
            context=kek_context(tenant, kek_id, version),
        )

    def _with(
        self, tenant: str, kek_id: str, current: int, versions: dict[int, bytes]
    ) -> dict[str, _TenantKeys]:
        """The tenants of the view with ``tenant``'s keys replaced: a new mapping, so the
        view that other threads read stays as it is until the write commits."""
        return {**self._tenants, tenant: _TenantKeys(kek_id, current, versions)}

    def _kek(self, tenant: str, keys: _TenantKeys, version: int) -> bytes:
        wrap = keys.versions[version]
        cached = self._kek_cache.get((tenant, version, wrap))
        if cached is None:
            try:
                cached = unwrap_key(
                    self._master, wrap, context=kek_context(tenant, keys.kek_id, version)
                )
            except DecryptionFailed:
                raise KeyUnavailable(
                    f"KEK version {version} of tenant {tenant!r} does not open under the master key"
                ) from None
            self._kek_cache[(tenant, version, wrap)] = cached
        return cached

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The backing's lock, for one read-modify-write of the document. What is written
        inside (``_write``) becomes this keyring's view only once the backing committed it:
        until then every wrap, unwrap and section read of the process's other coroutines
        and threads uses the view as stored. If anything fails inside, nothing written is
        published, and the document is reloaded before the next use (another node may
        have written meanwhile)."""
        with self._state:
            self._staged = None
            try:
                with self._backing.locked():
                    yield
            except BaseException:
                self._staged = None
                self._seen = _UNKNOWN
                raise
            staged = self._take_staged()
            if staged is not None:
                self._publish(*staged)

    def _take_staged(self) -> tuple[dict[str, Any], Identity, bytes] | None:
        """What ``_write`` staged in this lock (committed now), taken."""
        staged, self._staged = self._staged, None
        return staged

    def _load(self, *, create: bool = False) -> None:
        """Make the document as stored now this keyring's view; with ``create`` (under the
        lock), write a new, empty one when there is none (the view once committed)."""
        loaded = self._backing.read()
        if loaded is None:
            if not create:
                raise ConfigError(self._backing.name, "has disappeared")
            self._write(
                {
                    "format": _KEYRING_FORMAT,
                    "check": keyfile.new_check(self._master),
                    "tenants": {},
                    "destroyed": [],
                }
            )
            return
        try:
            doc = orjson.loads(loaded.document)
            if doc.get("format") != _KEYRING_FORMAT:
                raise ValueError(f"unknown keyring format {doc.get('format')!r}")
            missing = {"check", "tenants"} - set(doc)
            if missing:
                raise ValueError(f"no {' or '.join(sorted(missing))}")
            keyfile.slots(doc, WRAPPED_SECTIONS, PLAIN_SECTIONS)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(self._backing.name, f"is unreadable ({e})") from None
        self._publish(doc, loaded.identity, None)

    def _publish(self, doc: dict[str, Any], identity: Identity, master: bytes | None) -> None:
        """Make ``doc`` (stored, with ``identity``) this keyring's view; ``master``: the
        key that opens it, when a committed rotation replaced the one held."""
        if master is not None:
            self._master = master
        side = self._open_side(doc)
        try:
            view = keyfile.select(doc, side, WRAPPED_SECTIONS, PLAIN_SECTIONS)
            tenants = {
                name: _TenantKeys(
                    kek_id=entry["kek_id"],
                    current=int(entry["current"]),
                    versions={int(v): base64.b64decode(w) for v, w in entry["versions"].items()},
                )
                for name, entry in view["tenants"].items()
            }
            destroyed = {str(name) for name in view.get("destroyed", [])}
            # The other modules' sections as this key's side sees them: one wrap a value.
            sections = {name: value for name, value in view.items() if name not in _OWN_FIELDS}
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
            raise ConfigError(self._backing.name, f"is unreadable ({e})") from None
        self._doc = doc
        self._side = side
        self._check = view["check"]
        self._tenants = tenants
        self._destroyed = destroyed
        self._sections = sections
        self._seen = identity
        # Forget unwrapped KEKs whose versions are gone from the document (destroyed tenants,
        # retired versions).
        self._kek_cache = {
            (name, version, wrap): kek
            for (name, version, wrap), kek in self._kek_cache.items()
            if name in tenants and tenants[name].versions.get(version) == wrap
        }

    def _open_side(self, doc: dict[str, Any]) -> Side | None:
        """The side of the document this keyring's master key opens. When it opens none and the
        key came from a file, the file is read again: ``keys rotate-master`` may have
        replaced it, and this process then goes on with the new key without a restart."""
        try:
            return keyfile.side_of(doc, self._master)
        except (DecryptionFailed, binascii.Error):
            pass
        if self._reload_master is not None:
            key = self._reload_master()
            if key != self._master:
                try:
                    side = keyfile.side_of(doc, key)
                except (DecryptionFailed, binascii.Error):
                    pass
                else:
                    self._master = key
                    log.warning(
                        "%s: the master key was rotated; this process now holds the "
                        "new one (read again from %s)",
                        self._backing.name,
                        self._source,
                    )
                    return side
        raise ConfigError(
            self._source,
            f"does not open the {self._backing.name}: this is not the master key that wraps "
            "it (a wrong key, or the old key of a rotation by `callvault keys rotate-master` "
            "since committed); give the current one, and restart processes that hold the old",
        )

    def _save(
        self,
        *,
        tenants: dict[str, _TenantKeys] | None = None,
        destroyed: set[str] | None = None,
        sections: dict[str, Any] | None = None,
    ) -> None:
        """Write the view with ``tenants``, ``destroyed`` and ``sections`` replaced (each
        a new value: the view itself changes only once the write committed)."""
        tenants = self._tenants if tenants is None else tenants
        destroyed = self._destroyed if destroyed is None else destroyed
        sections = self._sections if sections is None else sections
        doc = {
            **sections,
            "format": _KEYRING_FORMAT,
            "check": self._check,
            "tenants": {
                name: {
                    "kek_id": keys.kek_id,
                    "current": keys.current,
                    "versions": {
                        str(v): base64.b64encode(w).decode() for v, w in keys.versions.items()
                    },
                }
                for name, keys in tenants.items()
            },
            "destroyed": sorted(destroyed),
        }
        # During a master-key rotation, values this process did not change keep the wrap
        # of the other key too (``crypto.keyfile.merge``).
        self._write(keyfile.merge(doc, self._doc, self._side, WRAPPED_SECTIONS, PLAIN_SECTIONS))

    def _write(self, doc: dict[str, Any], *, master: bytes | None = None) -> None:
        """Write ``doc`` (under the lock); it is published when the lock's transaction
        commits (``_locked``). ``master``: the key that opens it, if not the one held."""
        identity = self._backing.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._staged = (doc, identity, master or self._master)


def admin_lock(data_dir: Path, *, wait: bool = True) -> FileLock:
    """Serializes the ``callvault keys`` commands on this host (a rotation and a
    retirement of the same tenant must not interleave). ``wait=False``: the ``with``
    target says whether the lock was free and is now held (else it is not waited for)."""
    return FileLock(data_dir / (KEYRING_FILE + ".admin.lock"), wait=wait)
