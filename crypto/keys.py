"""Envelope keys: per-tenant key-encryption keys (KEKs) that wrap one DEK per object.

Callers see only the ``KeyProvider`` protocol, so a KMS or Vault-transit provider can
replace the local keyring without touching them. The local keyring keeps each tenant's KEK
versions in one JSON file in the data dir, every KEK wrapped by the master key, and is
shared safely by several processes on one host (``serve``, ``worker``, ``keys rotate``):
writes take an exclusive file lock and replace the file atomically, and a reader that meets
a KEK version it does not know reloads the file once before giving up.

Destroying a tenant's KEKs makes every DEK of that tenant unwrappable, and so every object
of the tenant unreadable, wherever copies of the objects or of the catalog remain.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import fcntl
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson

from crypto.errors import ConfigError, DecryptionFailed, KeyUnavailable
from crypto.objectformat import DEK_SIZE, unwrap_key, wrap_key

MASTER_KEY_SETTING = "CALLVAULT_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
KEYRING_FILE = "keyring.json"
_KEYRING_FORMAT = 1
_CHECK_PLAINTEXT = b"callvault keyring check value v1"[:DEK_SIZE].ljust(DEK_SIZE, b"\0")
_OWN_FIELDS = frozenset({"format", "check", "tenants", "destroyed"})
"""The top-level fields of the keyring file this class reads; every other top-level field is
a *section* another crypto module keeps here (``crypto.auditkeys``), kept as it is."""
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


def _kek_context(tenant: str, kek_id: str, version: int) -> bytes:
    return f"callvault/kek/v1|{tenant}|{kek_id}|{version}".encode()


def decode_master_key(value: str, *, source: str = MASTER_KEY_SETTING) -> bytes:
    """Decode a base64 master key, or refuse with a sentence naming ``source``."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(source, "is not valid base64; it must encode exactly 32 bytes") from None
    if len(key) != DEK_SIZE:
        raise ConfigError(
            source, f"must be the base64 encoding of exactly 32 bytes, not {len(key)} bytes"
        )
    return key


def load_master_key(value: str | None, data_dir: Path) -> bytes:
    """The master key from the setting, else from (or into) a 0600 file in the data dir.

    The file is created on first start with a fresh random key. An existing file that
    others can read is refused: the master key unlocks every tenant's keys.
    """
    if value is not None:
        return decode_master_key(value)
    path = data_dir / MASTER_KEY_FILE
    source = f"master key file {path}"
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        encoded = base64.b64encode(secrets.token_bytes(DEK_SIZE)) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first; read theirs below
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(source, f"has mode {mode:o}; it must be readable by its owner only (600)")
    return decode_master_key(path.read_text(), source=source)


@dataclass
class _TenantKeys:
    kek_id: str
    current: int
    versions: dict[int, bytes]  # version -> KEK wrapped by the master key


class LocalKeyring:
    """A ``KeyProvider`` backed by a JSON keyring file wrapped by the master key."""

    def __init__(self, path: Path, master_key: bytes) -> None:
        if len(master_key) != DEK_SIZE:
            raise ValueError("the master key is 32 bytes")
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._master = master_key
        self._tenants: dict[str, _TenantKeys] = {}
        self._destroyed: set[str] = set()
        """Tenants whose keys were destroyed: they never get a KEK again (a deleted tenant's
        id stays taken, so nothing new can be sealed for it by a worker that was busy)."""
        self._kek_cache: dict[tuple[str, int], bytes] = {}
        self._sections: dict[str, Any] = {}
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime, size) last loaded

    @classmethod
    def open(cls, data_dir: Path, master_key: bytes) -> LocalKeyring:
        """Open (or create) the keyring in ``data_dir``; refuse a master key that does not
        open it, naming the setting, so a wrong key stops the process at start."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keyring = cls(data_dir / KEYRING_FILE, master_key)
        with keyring._locked():
            keyring._load(create=True)
        return keyring

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
                "is unknown or destroyed"
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

    # -- sections of other crypto modules (blocking; call them in threads) ----------------

    def seal(self, key: bytes, *, context: bytes) -> bytes:
        """``key`` (32 bytes) wrapped by the master key, bound to ``context``: how every
        value of every section is stored."""
        return wrap_key(self._master, key, context=context)

    def unseal(self, wrapped: bytes, *, context: bytes) -> bytes:
        """Reverse ``seal``; ``DecryptionFailed`` if the value or its context is wrong."""
        return unwrap_key(self._master, wrapped, context=context)

    def section(self, name: str) -> Any:
        """The top-level field ``name`` of the keyring file as last written (reloaded if
        another process changed the file), or None."""
        if name in _OWN_FIELDS:
            raise ValueError(f"{name!r} is the keyring's own field")
        if _identity(self._path) != self._seen:
            self._reload()
        return copy.deepcopy(self._sections.get(name))

    def update_sections(self, change: Callable[[dict[str, Any]], T]) -> T:
        """Change sections under the file lock, on the file as it is now: ``change`` gets a
        copy of every section (``{name: value}``), changes it in place and returns a result,
        which is returned; the file is written if anything changed."""
        with self._locked():
            self._load()
            sections = copy.deepcopy(self._sections)
            result = change(sections)
            if any(name in _OWN_FIELDS for name in sections):
                raise ValueError("a section may not replace the keyring's own fields")
            if sections != self._sections:
                self._sections = sections
                self._save()
            return result

    # -- file handling (blocking; called in threads) ---------------------------------------

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
            if tenant not in self._tenants:
                kek_id = f"kek-{secrets.token_hex(8)}"
                self._tenants[tenant] = _TenantKeys(
                    kek_id, 1, {1: self._new_kek(tenant, kek_id, 1)}
                )
                self._save()
            return self._tenants[tenant]

    def _rotate(self, tenant: str) -> KekRef:
        with self._locked():
            self._load()
            keys = self._tenants.get(tenant)
            if keys is None:
                raise KeyUnavailable(f"no keys exist for tenant {tenant!r}")
            version = max(keys.versions) + 1
            keys.versions[version] = self._new_kek(tenant, keys.kek_id, version)
            keys.current = version
            self._save()
            return KekRef(keys.kek_id, version)

    def _destroy(self, tenant: str) -> None:
        with self._locked():
            self._load()
            self._tenants.pop(tenant, None)
            self._destroyed.add(tenant)
            self._save()
            self._load()

    async def _refresh(self) -> None:
        """Reload the file if another process (``keys rotate``, a tenant deletion) changed
        it, so new DEKs are wrapped under the newest KEK and destroyed KEKs stop working."""
        if _identity(self._path) != self._seen:
            await asyncio.to_thread(self._reload)

    def _reload(self) -> None:
        with self._locked():
            self._load()

    def _new_kek(self, tenant: str, kek_id: str, version: int) -> bytes:
        return wrap_key(
            self._master,
            secrets.token_bytes(DEK_SIZE),
            context=_kek_context(tenant, kek_id, version),
        )

    def _kek(self, tenant: str, keys: _TenantKeys, version: int) -> bytes:
        cached = self._kek_cache.get((tenant, version))
        if cached is None:
            try:
                cached = unwrap_key(
                    self._master,
                    keys.versions[version],
                    context=_kek_context(tenant, keys.kek_id, version),
                )
            except DecryptionFailed:
                raise KeyUnavailable(
                    f"KEK version {version} of tenant {tenant!r} does not open under the master key"
                ) from None
            self._kek_cache[(tenant, version)] = cached
        return cached

    def _locked(self) -> _FileLock:
        return _FileLock(self._lock_path)

    def _load(self, *, create: bool = False) -> None:
        if not self._path.exists():
            if not create:
                raise ConfigError(f"keyring {self._path}", "has disappeared")
            self._tenants = {}
            self._save()
        try:
            doc = orjson.loads(self._path.read_bytes())
            check = base64.b64decode(doc["check"])
            tenants = {
                name: _TenantKeys(
                    kek_id=entry["kek_id"],
                    current=int(entry["current"]),
                    versions={int(v): base64.b64decode(w) for v, w in entry["versions"].items()},
                )
                for name, entry in doc["tenants"].items()
            }
            destroyed = {str(name) for name in doc.get("destroyed", [])}
            sections = {name: value for name, value in doc.items() if name not in _OWN_FIELDS}
            if doc.get("format") != _KEYRING_FORMAT:
                raise ValueError(f"unknown keyring format {doc.get('format')!r}")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ConfigError(f"keyring {self._path}", f"is unreadable ({e})") from None
        try:
            unwrap_key(self._master, check, context=b"callvault/keyring/check")
        except DecryptionFailed:
            raise ConfigError(
                MASTER_KEY_SETTING,
                f"does not open the keyring {self._path}: this is not the master key it was "
                "made with",
            ) from None
        self._tenants = tenants
        self._destroyed = destroyed
        self._sections = sections
        self._seen = _identity(self._path)
        # Forget unwrapped KEKs whose versions are gone from the file (destroyed tenants).
        self._kek_cache = {
            (name, version): kek
            for (name, version), kek in self._kek_cache.items()
            if name in tenants and version in tenants[name].versions
        }

    def _save(self) -> None:
        doc = {
            **self._sections,
            "format": _KEYRING_FORMAT,
            "check": base64.b64encode(
                wrap_key(self._master, _CHECK_PLAINTEXT, context=b"callvault/keyring/check")
            ).decode(),
            "tenants": {
                name: {
                    "kek_id": keys.kek_id,
                    "current": keys.current,
                    "versions": {
                        str(v): base64.b64encode(w).decode() for v, w in keys.versions.items()
                    },
                }
                for name, keys in self._tenants.items()
            },
            "destroyed": sorted(self._destroyed),
        }
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        self._seen = _identity(self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced: inode, mtime and size (None if absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _FileLock:
    """An exclusive advisory lock across processes on one host (fcntl.flock)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> _FileLock:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
