"""Key custody in OpenBao/Vault transit, shared by every node (``CALLVAULT_KEYS__PROVIDER=vault``).

The local keyring keeps each tenant's KEKs in a file of one node, so no other node can open
what it sealed. Here the KEKs never leave OpenBao/Vault: each tenant has one transit key
(type ``aes256-gcm96``), and a DEK is wrapped by asking transit to encrypt it and unwrapped
by asking it to decrypt. Every node holding a token of the policy in the README (section
"Key custody with OpenBao/Vault") opens what any node sealed, and nothing is cached that
could go stale: a destroyed key fails on every node at its next request.

* **Names.** A tenant's key is ``<prefix><tenant>.kek``. The suffix is there because transit
  names must end in a letter, digit or ``_`` and a tenant id may end in ``-``; and the dot,
  which tenant ids never hold, keeps the tenant's other name, its tombstone, from being
  another tenant's key.
* **Binding.** The DEK is encrypted with ``associated_data`` =
  ``crypto.keys.dek_context(tenant, object, key name, version)``, as the local keyring binds
  its wraps: a wrapped DEK moved to another object's or tenant's key row does not decrypt.
  Transit picks the version when it encrypts; the version named in the AAD is the newest
  this process has seen, and when transit used a newer one (another node rotated), the DEK
  is encrypted again under that version by number, so AAD and ciphertext always agree.
* **Rotation** is transit's ``rotate``: old versions keep decrypting, new wraps use the new
  one. ``keys rotate`` then re-wraps every DEK row (``MediaVault.rotate_tenant_keys``).
* **Destruction** crypto-shreds: the key is made deletable and deleted, every version with
  it, so every DEK it wrapped, in the catalog or in any backup of it, opens nowhere the
  live OpenBao/Vault answers (a snapshot of OpenBao/Vault taken before still holds the key
  until that snapshot is gone: docs/security.md, "Crypto-shredding and backups").
* **The tombstone** of a destroyed tenant is a second transit key, ``<prefix><tenant>.destroyed``,
  made *before* the tenant's key is deleted and never deleted by callvault. It is kept in
  transit rather than in a KV engine or the catalog because it must be where the keys are:
  the same mount, the same policy, seen by every node that can make keys, with no other
  part to configure or to be down. It stops the one thing that could bring a destroyed key
  back, *making* it again: a node makes a tenant's key only after reading that there is no
  tombstone, and reads again after making it (a destruction may have passed in between, and
  then the key it made is deleted at once). Encrypting never makes a key: the token's
  policy must not grant ``create`` on ``encrypt/`` (transit would otherwise "upsert" a fresh
  key for a destroyed tenant under a node that was busy sealing), which ``open`` checks.
* **Retirement** of old versions (``keys retire``) is not offered: transit can only forget
  the versions *below* a threshold (``min_decryption_version``, then ``trim``, which cannot
  be undone), not the unreferenced versions the ``RetiresKekVersions`` contract names, and
  a ``trim`` cannot be taken back when a late writer turns out to still use a version. The
  operator trims in OpenBao/Vault after ``keys rotate`` (README).

hvac is blocking: every request runs in a thread (``asyncio.to_thread``), on one client
(one connection pool) for the life of the provider, each bounded by
``CALLVAULT_KEYS__VAULT_TIMEOUT``. An OpenBao/Vault that does not answer, or answers that it
is sealed or failing, is ``KeyUnavailable`` naming ``CALLVAULT_KEYS__VAULT_ADDR``: ingest and
workers treat it as the key outage it is. Neither the token nor a DEK is ever in an error, a
log line or a repr; errors carry OpenBao/Vault's own reason, which holds neither.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import hvac
from hvac import exceptions as vault_errors

from crypto.errors import ConfigError, KeyUnavailable
from crypto.keys import KekRef, WrappedKey, dek_context
from crypto.objectformat import DEK_SIZE

log = logging.getLogger(__name__)

ADDR_SETTING = "CALLVAULT_KEYS__VAULT_ADDR"
TOKEN_SETTING = "CALLVAULT_KEYS__VAULT_TOKEN"  # noqa: S105 - the setting's name
MOUNT_SETTING = "CALLVAULT_KEYS__VAULT_MOUNT"
PREFIX_SETTING = "CALLVAULT_KEYS__VAULT_KEY_PREFIX"

KEY_TYPE = "aes256-gcm96"
KEK_SUFFIX = ".kek"
TOMBSTONE_SUFFIX = ".destroyed"
_TENANT = re.compile(r"^[A-Za-z0-9_-]+$")
"""Tenant ids that make transit key names (callvault's are ``[a-z0-9-]``); no dot."""
_PREFIX = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_MOUNT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_CIPHERTEXT = re.compile(r"^vault:v([1-9][0-9]*):")
_SERVER_TROUBLE = (
    vault_errors.VaultDown,
    vault_errors.InternalServerError,
    vault_errors.BadGateway,
    vault_errors.RateLimitExceeded,
    vault_errors.UnexpectedError,
    vault_errors.VaultNotInitialized,
)
"""Answers that say OpenBao/Vault cannot serve now (sealed, failing, overloaded): an outage,
not a refusal of this request."""

NEEDED_CAPABILITIES: dict[str, frozenset[str]] = {
    "keys/{key}": frozenset({"create", "read", "update", "delete"}),
    "keys/{key}/rotate": frozenset({"update"}),
    "keys/{key}/config": frozenset({"update"}),
    "encrypt/{key}": frozenset({"update"}),
    "decrypt/{key}": frozenset({"update"}),
}
"""What the token must be allowed on the transit paths of every key under the prefix."""

POLICY_PATHS: dict[str, tuple[str, ...]] = {
    "keys": ("create", "read", "update", "delete"),  # also keys/<name>/rotate and /config
    "encrypt": ("update",),  # never "create": encrypting must not make a key
    "decrypt": ("update",),
}


def policy(mount: str = "transit", key_prefix: str = "callvault-") -> str:
    """The OpenBao/Vault policy (HCL) a callvault token needs, and no more, for the keys
    under ``key_prefix`` on ``mount``; the token also keeps the ``default`` policy (it
    looks up itself and its capabilities at start). README shows it for the defaults."""
    stanzas = []
    for path, capabilities in POLICY_PATHS.items():
        listed = ", ".join(f'"{c}"' for c in capabilities)
        stanzas.append(f'path "{mount}/{path}/{key_prefix}*" {{\n  capabilities = [{listed}]\n}}\n')
    return "".join(stanzas)


T = TypeVar("T")


@dataclass(frozen=True)
class VaultConfig:
    """Where the transit keys are and how to reach them (``CALLVAULT_KEYS__VAULT_*``)."""

    addr: str
    token: str = field(repr=False)
    mount: str = "transit"
    key_prefix: str = "callvault-"
    timeout_s: float = 5.0


class _KeyMissing(Exception):
    """The tenant's transit key does not exist (never made here, or destroyed)."""


class VaultTransitKeys:
    """A ``KeyProvider`` over OpenBao/Vault transit: one transit key per tenant. Made with
    ``open``, which checks what the provider relies on (the token's policy above all)."""

    def __init__(self, config: VaultConfig) -> None:
        """No request is made here; ``open`` checks the server, token and mount first."""
        if not config.addr:
            raise ConfigError(ADDR_SETTING, "is needed with CALLVAULT_KEYS__PROVIDER=vault")
        if not config.token:
            raise ConfigError(TOKEN_SETTING, "is needed with CALLVAULT_KEYS__PROVIDER=vault")
        if not _PREFIX.match(config.key_prefix):
            raise ConfigError(
                PREFIX_SETTING,
                f"{config.key_prefix!r} cannot begin a transit key name: letters, digits, "
                "'_', '-' and '.', beginning with a letter, digit or '_'",
            )
        if not _MOUNT.match(config.mount):
            raise ConfigError(MOUNT_SETTING, f"{config.mount!r} is not a mount path")
        self._config = config
        self._client = hvac.Client(url=config.addr, token=config.token, timeout=config.timeout_s)
        self._versions: dict[str, int] = {}
        """Per tenant, the newest key version this process has seen (what the AAD of the
        next wrap names; transit corrects it when another node rotated)."""
        self._destroyed: set[str] = set()
        """Tenants whose tombstone this process has seen (a tombstone is forever)."""

    @classmethod
    async def open(cls, config: VaultConfig) -> VaultTransitKeys:
        """The provider, once OpenBao/Vault answers, the token is valid, its policy allows
        what the provider does (and no more on ``encrypt/``) and the mount is transit; else
        a ``ConfigError`` naming the setting to fix, so a node refuses to start."""
        keys = cls(config)
        try:
            await asyncio.to_thread(keys._check)
        except BaseException:
            keys.close()
            raise
        return keys

    def __repr__(self) -> str:
        c = self._config
        return f"VaultTransitKeys(addr={c.addr!r}, mount={c.mount!r}, key_prefix={c.key_prefix!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.adapter.close()

    def key_name(self, tenant: str) -> str:
        """The transit key of ``tenant``: the ``kek_id`` of its wraps."""
        return f"{self._config.key_prefix}{_checked(tenant)}{KEK_SUFFIX}"

    def tombstone_name(self, tenant: str) -> str:
        """The transit key that says ``tenant``'s keys were destroyed."""
        return f"{self._config.key_prefix}{_checked(tenant)}{TOMBSTONE_SUFFIX}"

    # -- KeyProvider ----------------------------------------------------------------------

    async def wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        return await asyncio.to_thread(self._wrap, tenant, object_id, dek)

    async def unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        return await asyncio.to_thread(self._unwrap, tenant, object_id, wrapped)

    async def rotate(self, tenant: str) -> KekRef:
        return await asyncio.to_thread(self._rotate, tenant)

    async def destroy_tenant(self, tenant: str) -> None:
        await asyncio.to_thread(self._destroy, tenant)

    # -- the requests (blocking; called in threads) -----------------------------------------

    def _wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        name = self.key_name(tenant)
        if tenant in self._destroyed:
            _destroyed(tenant)
        version = self._versions.get(tenant)
        if version is None:
            version = self._ensure_key(tenant)
        try:
            ciphertext, used = self._encrypt(tenant, object_id, dek, version, pin=False)
        except _KeyMissing:
            # Gone since this process last used it: destroyed (the tombstone says so), or
            # deleted behind callvault's back (made again, as at first use).
            version = self._ensure_key(tenant)
            try:
                ciphertext, used = self._encrypt(tenant, object_id, dek, version, pin=False)
            except _KeyMissing:
                _vanished(name, tenant)
        if used != version:
            # Another node rotated: the AAD named an older version than transit used, so
            # this wrap would never open. Encrypt again under the version transit has now.
            try:
                ciphertext, used = self._encrypt(tenant, object_id, dek, used, pin=True)
            except _KeyMissing:
                _vanished(name, tenant)
        self._versions[tenant] = used
        return WrappedKey(name, used, ciphertext.encode("ascii"))

    def _encrypt(
        self, tenant: str, object_id: str, dek: bytes, version: int, *, pin: bool
    ) -> tuple[str, int]:
        """Transit's ciphertext of ``dek`` bound to ``version`` (used when ``pin``, else the
        key's latest), and the version it used."""
        name = self.key_name(tenant)
        aad = dek_context(tenant, object_id, name, version)
        try:
            answer = self._send(
                f"encrypt with transit key {name}",
                lambda: self._transit.encrypt_data(
                    name,
                    plaintext=_b64(dek),
                    associated_data=_b64(aad),
                    key_version=version if pin else None,
                    mount_point=self._config.mount,
                ),
            )
        except vault_errors.Forbidden:
            # The policy grants no `create` on encrypt/, so a key that does not exist is
            # "permission denied" here: find out which it is.
            if not self._key_exists(name):
                raise _KeyMissing from None
            self._refused(f"encrypt with transit key {name}")
        except vault_errors.InvalidRequest as e:
            if _says_not_found(e):
                raise _KeyMissing from None
            raise KeyUnavailable(
                f"transit key {name} of tenant {tenant!r} refused to wrap a DEK: {_reason(e)}"
            ) from None
        ciphertext = str(answer["data"]["ciphertext"])
        return ciphertext, _version_of(ciphertext, name)

    def _unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        name = self.key_name(tenant)
        if wrapped.kek_id != name:
            raise KeyUnavailable(
                f"KEK {wrapped.kek_id} is not tenant {tenant!r}'s transit key {name} "
                "(a row of another tenant, of another key provider, or made under another "
                f"{PREFIX_SETTING})"
            )
        try:
            ciphertext = wrapped.blob.decode("ascii")
            altered = _version_of(ciphertext, name) != wrapped.kek_version
        except (UnicodeDecodeError, KeyUnavailable):
            altered = True
        if altered:
            raise KeyUnavailable(
                f"the wrapped DEK of object {object_id} is not a transit ciphertext of "
                f"version {wrapped.kek_version} (altered key-table row)"
            )
        aad = dek_context(tenant, object_id, name, wrapped.kek_version)
        try:
            answer = self._send(
                f"decrypt with transit key {name}",
                lambda: self._transit.decrypt_data(
                    name,
                    ciphertext=ciphertext,
                    associated_data=_b64(aad),
                    mount_point=self._config.mount,
                ),
            )
        except vault_errors.Forbidden:
            self._refused(f"decrypt with transit key {name}")
        except vault_errors.InvalidRequest as e:
            if _says_not_found(e):
                raise KeyUnavailable(
                    f"transit key {name} of tenant {tenant!r} does not exist (destroyed, or "
                    "never made on this OpenBao/Vault)"
                ) from None
            raise KeyUnavailable(
                f"the wrapped DEK of object {object_id} does not open under transit key "
                f"{name} version {wrapped.kek_version}: {_reason(e)} (altered key-table row, "
                "a row of another object, or a version trimmed away)"
            ) from None
        try:
            dek = base64.b64decode(answer["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            dek = b""
        if len(dek) != DEK_SIZE:
            raise KeyUnavailable(f"transit key {name} returned no {DEK_SIZE}-byte DEK")
        return dek

    def _rotate(self, tenant: str) -> KekRef:
        name = self.key_name(tenant)
        if not self._key_exists(name):
            raise KeyUnavailable(f"no keys exist for tenant {tenant!r}")
        try:
            self._send(
                f"rotate transit key {name}",
                lambda: self._transit.rotate_key(name, mount_point=self._config.mount),
            )
        except vault_errors.Forbidden:
            self._refused(f"rotate transit key {name}")
        except vault_errors.InvalidRequest as e:
            raise KeyUnavailable(f"transit key {name} was not rotated: {_reason(e)}") from None
        latest = self._latest_version(name)
        if latest is None:
            raise KeyUnavailable(f"no keys exist for tenant {tenant!r} (destroyed meanwhile)")
        self._versions[tenant] = latest
        return KekRef(name, latest)

    def _destroy(self, tenant: str) -> None:
        name = self.key_name(tenant)
        # The tombstone first: from this moment no node makes the tenant's key again.
        self._make_key(self.tombstone_name(tenant))
        self._destroyed.add(tenant)
        self._versions.pop(tenant, None)
        self._delete_key(name)
        log.info("transit key %s of tenant %s destroyed (crypto-shredded)", name, tenant)

    def _ensure_key(self, tenant: str) -> int:
        """The tenant's key's latest version, the key made first if it does not exist and
        the tenant has no tombstone. ``KeyUnavailable`` for a destroyed tenant."""
        name = self.key_name(tenant)
        latest = self._latest_version(name)
        if latest is None:
            if self._tombstoned(tenant):
                _destroyed(tenant)
            self._make_key(name)
            if self._tombstoned(tenant):
                # Destroyed between the look and the making: what was made goes at once.
                self._delete_key(name)
                _destroyed(tenant)
            latest = self._latest_version(name)
            if latest is None:
                _destroyed(tenant)
        self._versions[tenant] = latest
        return latest

    def _tombstoned(self, tenant: str) -> bool:
        if tenant in self._destroyed:
            return True
        if self._key_exists(self.tombstone_name(tenant)):
            self._destroyed.add(tenant)
            return True
        return False

    def _key_exists(self, name: str) -> bool:
        return self._latest_version(name) is not None

    def _latest_version(self, name: str) -> int | None:
        """The key's latest version, or None when there is no such key."""
        try:
            answer = self._send(
                f"read transit key {name}",
                lambda: self._transit.read_key(name, mount_point=self._config.mount),
            )
        except vault_errors.InvalidPath as e:
            if e.errors:  # "no handler for route": no engine at the mount
                self._no_mount()
            return None
        except vault_errors.Forbidden:
            self._refused(f"read transit key {name}")
        return int(answer["data"]["latest_version"])

    def _make_key(self, name: str) -> None:
        """Make the key (a no-op when it exists)."""
        try:
            self._send(
                f"make transit key {name}",
                lambda: self._transit.create_key(
                    name, key_type=KEY_TYPE, mount_point=self._config.mount
                ),
            )
        except vault_errors.Forbidden:
            self._refused(f"make transit key {name}")
        except (vault_errors.InvalidRequest, vault_errors.InvalidPath) as e:
            raise KeyUnavailable(f"transit key {name} was not made: {_reason(e)}") from None

    def _delete_key(self, name: str) -> None:
        """Allow the key's deletion and delete it (a no-op when it is gone)."""
        for what, call in (
            (
                f"allow the deletion of transit key {name}",
                lambda: self._transit.update_key_configuration(
                    name, deletion_allowed=True, mount_point=self._config.mount
                ),
            ),
            (
                f"delete transit key {name}",
                lambda: self._transit.delete_key(name, mount_point=self._config.mount),
            ),
        ):
            try:
                self._send(what, call)
            except vault_errors.Forbidden:
                self._refused(what)
            except vault_errors.InvalidRequest as e:
                if _says_not_found(e):
                    return
                raise KeyUnavailable(f"could not {what}: {_reason(e)}") from None

    @property
    def _transit(self) -> Any:
        return self._client.secrets.transit

    def _send(self, what: str, call: Callable[[], T]) -> T:
        """One request; an outage of OpenBao/Vault becomes ``KeyUnavailable`` naming its
        address setting. Refusals (``Forbidden``, ``InvalidRequest``, ``InvalidPath``) are
        the caller's to read."""
        addr = self._config.addr
        try:
            return call()
        except OSError as e:  # requests' errors (refused, timed out, TLS) are OSErrors
            raise KeyUnavailable(
                f"OpenBao/Vault at {addr} ({ADDR_SETTING}) did not answer to {what} "
                f"({type(e).__name__})"
            ) from None
        except _SERVER_TROUBLE as e:
            raise KeyUnavailable(
                f"OpenBao/Vault at {addr} ({ADDR_SETTING}) could not {what}: {_reason(e)} "
                "(sealed, failing or overloaded)"
            ) from None
        except vault_errors.Unauthorized:
            raise KeyUnavailable(
                f"OpenBao/Vault at {addr} refused the token ({TOKEN_SETTING}) to {what}: "
                "not authenticated"
            ) from None

    def _refused(self, what: str) -> NoReturn:
        raise KeyUnavailable(
            f"OpenBao/Vault at {self._config.addr} did not allow the token ({TOKEN_SETTING}) "
            f"to {what}: permission denied (an expired or revoked token, or a policy without "
            "the capabilities in README, section 'Key custody with OpenBao/Vault')"
        )

    def _no_mount(self) -> NoReturn:
        raise KeyUnavailable(
            f"OpenBao/Vault at {self._config.addr} has no secrets engine at "
            f"{self._config.mount!r} ({MOUNT_SETTING}); enable transit there"
        )

    # -- the start-up check (blocking) -------------------------------------------------------

    def _check(self) -> None:
        c = self._config
        try:
            self._send("look up its token", self._client.auth.token.lookup_self)
        except vault_errors.Forbidden:
            raise ConfigError(
                TOKEN_SETTING,
                f"is not accepted by OpenBao/Vault at {c.addr} (wrong, expired or revoked)",
            ) from None
        except KeyUnavailable as e:
            raise ConfigError(ADDR_SETTING, e.message) from None
        probe = f"{c.key_prefix}start-check{KEK_SUFFIX}"
        paths = {
            f"{c.mount}/{path.format(key=probe)}": need
            for path, need in NEEDED_CAPABILITIES.items()
        }
        try:
            answer = self._send(
                "look up its capabilities",
                lambda: self._client.adapter.post(
                    "/v1/sys/capabilities-self", json={"paths": list(paths)}
                ),
            )
        except KeyUnavailable as e:
            raise ConfigError(ADDR_SETTING, e.message) from None
        except vault_errors.VaultError as e:
            raise ConfigError(
                TOKEN_SETTING, f"may not look up its own capabilities: {_reason(e)}"
            ) from None
        held = {path: set(answer.get("data", answer).get(path, [])) for path in paths}
        encrypt = f"{c.mount}/encrypt/{probe}"
        if held[encrypt] & {"create", "root"}:
            raise ConfigError(
                TOKEN_SETTING,
                f"its policy may create transit keys by encrypting ('create' or root on "
                f"{c.mount}/encrypt/{c.key_prefix}*): a node still sealing for a tenant being "
                "deleted would make its destroyed key anew. Give callvault a token of the "
                "policy in README, section 'Key custody with OpenBao/Vault' (not a root "
                "token)",
            )
        for path, need in paths.items():
            missing = need - held[path]
            if missing:
                where = path.replace(probe, f"{c.key_prefix}*")
                raise ConfigError(
                    TOKEN_SETTING,
                    f"its policy lacks {', '.join(sorted(missing))} on {where} "
                    "(README, section 'Key custody with OpenBao/Vault', gives the policy)",
                )
        try:
            self._latest_version(f"{c.key_prefix}start-check{TOMBSTONE_SUFFIX}")
        except KeyUnavailable as e:
            setting = MOUNT_SETTING if "secrets engine" in e.message else ADDR_SETTING
            raise ConfigError(setting, e.message) from None


def _checked(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant id {tenant!r} cannot name a transit key")
    return tenant


def _destroyed(tenant: str) -> NoReturn:
    raise KeyUnavailable(f"the keys of tenant {tenant!r} were destroyed; nothing new can be sealed")


def _vanished(name: str, tenant: str) -> NoReturn:
    raise KeyUnavailable(
        f"transit key {name} of tenant {tenant!r} was deleted while a DEK was wrapped under "
        "it (its keys are being destroyed)"
    )


def _version_of(ciphertext: str, name: str) -> int:
    found = _CIPHERTEXT.match(ciphertext)
    if found is None:
        raise KeyUnavailable(f"transit key {name} answered with no versioned ciphertext")
    return int(found.group(1))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _reason(error: vault_errors.VaultError) -> str:
    """OpenBao/Vault's own words (never the request's URL, body or token)."""
    errors = [str(e).strip() for e in (error.errors or []) if str(e).strip()]
    return "; ".join(errors) or type(error).__name__


def _says_not_found(error: vault_errors.VaultError) -> bool:
    """Whether transit said the key does not exist (its words differ by endpoint)."""
    reason = _reason(error).lower()
    return "not found" in reason or "no existing key" in reason
