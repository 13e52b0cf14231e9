"""The keyring of a fleet: kept in the catalog (``CALLVAULT_KEYS__PROVIDER=catalog``, and
``vault`` on a PostgreSQL catalog, where it keeps the audit keys and the signing key), and
a node's local keyring merged into it (``callvault keys to-catalog``).

Every node opens the one keyring row of the catalog (``storage.keyring``) with the master
key, so the master key must be the same on every node. It is therefore taken only from
``CALLVAULT_MASTER_KEY`` (a secret store that every node reads): a ``master.key`` file is
made per data dir, and a node that made its own would make, or fail to open, a keyring
that no other node opens. Without the setting the process refuses to start.

The catalog must be PostgreSQL. A SQLite catalog is one node's file, so there is no fleet
to share it with; and a keyring row in it could not be written while a catalog write is
open (SQLite has one write lock, and the catalog makes a tenant's audit key inside the
transaction of the tenant's first audit event), so a process would wait on itself.

A node that has run with its own keyring holds its keys in ``keyring.json``; the catalog
keyring does not hold them until ``keys to-catalog`` merges that document into the row
(``crypto.keymerge``: every value stays wrapped by the same master key, and what cannot be
merged is refused, naming the tenants). A node starts on the catalog keyring only once the
row holds every key of its file that it needs, whether or not the row was empty before:
otherwise its objects would fail ``KeyUnavailable``, and an operator who deleted the file
would lose their only copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from crypto import keyfile
from crypto.errors import CallvaultError, ConfigError, KeyUnavailable
from crypto.keymerge import Merge, merge_keyrings
from crypto.keyringbacking import FileBacking
from crypto.keys import (
    KEYRING_FILE,
    MASTER_KEY_SETTING,
    PLAIN_SECTIONS,
    WRAPPED_SECTIONS,
    LocalKeyring,
)
from crypto.masterkey import decode_master_key
from gateway.settings import Settings
from storage.keyring import CatalogBacking

PROVIDER_SETTING = "CALLVAULT_KEYS__PROVIDER"
SHOWN = 5
"""How many of the missing or conflicting keys a refusal names (and how many more)."""


def keyring_in_catalog(settings: Settings) -> bool:
    """Whether this process's keyring is the catalog's: with ``catalog``, and with ``vault``
    on a PostgreSQL catalog (a fleet, whose nodes must share the audit keys). Every path
    that decides where the keyring or its master key is (start, ``callvault keys``, the
    start-time warnings) asks this."""
    provider = settings.keys.provider
    if provider == "vault":
        return _on_postgresql(settings)
    return provider == "catalog"


def _on_postgresql(settings: Settings) -> bool:
    return make_url(settings.catalog_url).get_backend_name() == "postgresql"


def _provider(settings: Settings) -> str:
    """The provider as messages name it."""
    if settings.keys.provider == "vault":
        return f"{PROVIDER_SETTING}=vault on a PostgreSQL catalog"
    return f"{PROVIDER_SETTING}={settings.keys.provider}"


def fleet_master_key(settings: Settings) -> bytes:
    """The master key of the catalog keyring: ``CALLVAULT_MASTER_KEY``, or a refusal."""
    if settings.master_key is None:
        raise ConfigError(
            MASTER_KEY_SETTING,
            f"must be set when {_provider(settings)}: every node opens the one keyring "
            "in the catalog, so every node needs the same master key, from a secret store "
            "(a master.key file is made per data dir; if this node has one, put its content "
            "in the secret store and set CALLVAULT_MASTER_KEY from there)",
        )
    return decode_master_key(settings.master_key.get_secret_value())


def require_shared_catalog(settings: Settings) -> None:
    """Refuse a SQLite catalog for the catalog keyring, naming the setting to change."""
    if _on_postgresql(settings):
        return
    why = (
        "the catalog that every node shares, on PostgreSQL "
        "(CALLVAULT_DATABASE_URL=postgresql://host/db); this one is SQLite, one node's "
        "file, whose single write lock cannot take the keyring's writes inside the "
        "catalog's own"
    )
    provider = settings.keys.provider
    if provider == "catalog":
        raise ConfigError(
            PROVIDER_SETTING,
            f"is catalog, which needs {why}. With one node, use the local keyring (provider local)",
        )
    if provider == "vault":
        raise ConfigError(
            PROVIDER_SETTING,
            "is vault on a SQLite catalog, whose keyring (the audit keys and the signing "
            f"key) stays in the data dir: there is no catalog keyring to move it to; that "
            f"needs {why}",
        )
    raise ConfigError(
        "CALLVAULT_DATABASE_URL",
        f"must name a PostgreSQL catalog: the catalog keyring lives in {why}",
    )


def open_catalog_keyring(settings: Settings) -> LocalKeyring:
    """The keyring in the catalog, made there on the fleet's first start; a wrong master
    key is refused naming ``CALLVAULT_MASTER_KEY``. Refused as well on a SQLite catalog,
    and while the data dir's ``keyring.json`` holds a key this provider needs that the
    catalog keyring does not hold (``keys to-catalog`` merges it)."""
    require_shared_catalog(settings)
    master_key = fleet_master_key(settings)
    backing = CatalogBacking.open(settings.catalog_url, settings.data_dir)
    try:
        local = settings.data_dir / KEYRING_FILE
        merge = _compare(settings, backing, master_key)
        if merge is not None and not merge.complete:
            problem = (
                f"keys that cannot be merged into it ({_listed(merge.conflicts)})"
                if merge.conflicts
                else f"{len(merge.missing)} key(s) it does not: {_listed(merge.missing)}"
            )
            raise ConfigError(
                PROVIDER_SETTING,
                f"is {settings.keys.provider}, but this node's local keyring {local} holds "
                f"{problem}. Run `callvault keys to-catalog` on this node first (it merges "
                "them into the catalog keyring, or says why it cannot); until then the "
                "objects and audit events they key would not open on this node. Do not "
                "delete the file: it is the only copy of those keys",
            )
    except BaseException:
        backing.close()
        raise
    return LocalKeyring.open_backing(backing, master_key)


@dataclass(frozen=True)
class LocalKeyringLeft:
    """The data dir's ``keyring.json`` beside the catalog keyring, compared with it."""

    merge: Merge | None
    """``None`` when it could not be compared (its reason in ``reason``)."""
    reason: str = ""
    kek_tenants: int = 0
    """How many tenants have KEKs in the file (with ``vault``: keys it never uses)."""


def local_keyring_left(settings: Settings) -> LocalKeyringLeft | None:
    """The data dir's ``keyring.json`` compared with the catalog keyring (for the start
    warning, which says "delete" only when the catalog holds every key of it); ``None``
    when there is no such file."""
    path = settings.data_dir / KEYRING_FILE
    if not path.exists():
        return None
    try:
        document = _local_document(settings)
        tenants = document.get("tenants") if document is not None else None
        kek_tenants = len(tenants) if isinstance(tenants, dict) else 0
        master_key = fleet_master_key(settings)
        backing = CatalogBacking.open(settings.catalog_url, settings.data_dir)
        try:
            merge = _compare(settings, backing, master_key)
        finally:
            backing.close()
    except CallvaultError as e:
        return LocalKeyringLeft(None, reason=e.message)
    return LocalKeyringLeft(merge, kek_tenants=kek_tenants)


def _keks(settings: Settings) -> bool:
    """Whether the catalog keyring keeps the tenants' KEKs (not with ``vault``)."""
    return settings.keys.provider != "vault"


def _local_document(settings: Settings) -> dict[str, Any] | None:
    local = FileBacking(settings.data_dir / KEYRING_FILE)
    loaded = local.read()  # an atomic replace: one consistent snapshot
    return None if loaded is None else _parse(loaded.document, local.name)


def _compare(settings: Settings, backing: CatalogBacking, master_key: bytes) -> Merge | None:
    """The data dir's keyring compared with the catalog's row as it is now (``None``:
    there is no local keyring). A local keyring the master key does not open is refused:
    whether the catalog holds its keys cannot be told."""
    document = _local_document(settings)
    if document is None:
        return None
    present = backing.read()
    catalog = None if present is None else _parse(present.document, backing.name)
    return _merge(document, catalog, master_key, settings, backing)


def _merge(
    document: dict[str, Any],
    catalog: dict[str, Any] | None,
    master_key: bytes,
    settings: Settings,
    backing: CatalogBacking,
) -> Merge:
    """``crypto.keymerge.merge_keyrings`` for this provider, its failures as
    ``ConfigError``s naming the file or the master key."""
    name = f"keyring {settings.data_dir / KEYRING_FILE}"
    try:
        return merge_keyrings(
            document,
            catalog,
            master_key,
            keks=_keks(settings),
            signed_with=backing.checkpoint_tenants,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(name, f"is unreadable ({e})") from None
    except KeyUnavailable as e:
        raise ConfigError(
            MASTER_KEY_SETTING,
            f"does not open all of {name} and the {backing.name} ({e.message}): both must "
            "be wrapped by the fleet's master key to be compared or merged. A node whose "
            "keyring has a master key of its own moves it to the fleet's first: with "
            f"{PROVIDER_SETTING}=local and CALLVAULT_MASTER_KEY set to its own key, `callvault "
            "keys rotate-master --new-key-file FILE --commit` with the fleet's key in FILE "
            "(README, section Keys)",
        ) from None


def _listed(items: tuple[str, ...]) -> str:
    shown = "; ".join(items[:SHOWN])
    more = len(items) - SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_to_catalog`` did."""

    location: str
    """The catalog keyring, as messages name it."""
    values: int
    """How many wrapped values the catalog's keyring holds, each checked to open."""
    copied: bool
    """False when the catalog held every key of the file already (nothing written)."""
    merged: bool
    """True when the catalog held a keyring already, into which the file was merged."""
    added: tuple[str, ...]
    """What was added (descriptions: nothing secret)."""
    kek_tenants_left: int
    """With ``vault``: how many tenants have KEKs in the file, which were not copied."""


def copy_to_catalog(settings: Settings) -> CopyReport:
    """Merge the data dir's local keyring into the catalog keyring (``keys to-catalog``).

    Into an empty catalog keyring the file goes as it is (with ``vault``: its audit keys
    and signing key only). Into one that other nodes made already, what the file holds and
    the catalog does not is added (``crypto.keymerge``); refused, writing nothing, when
    something cannot be merged (the message names the tenants), when the local keyring is
    absent, does not open with ``CALLVAULT_MASTER_KEY`` (every value is checked), or when
    either keyring is in a master-key rotation. Run again, it changes nothing. The
    catalog's keyring is then opened and every value checked again, and compared with the
    file once more: every key of the file is in it."""
    require_shared_catalog(settings)
    master_key = fleet_master_key(settings)
    path = settings.data_dir / KEYRING_FILE
    local = FileBacking(path)
    with local.locked():  # the file as one snapshot: no local writer changes it meanwhile
        loaded = local.read()
    if loaded is None:
        raise ConfigError(local.name, "does not exist: there is no local keyring to copy")
    document = _parse(loaded.document, local.name)
    _check_opens(document, master_key, local.name)
    backing = CatalogBacking.open(settings.catalog_url, settings.data_dir)
    try:
        with backing.locked():
            present = backing.read()
            catalog = None if present is None else _parse(present.document, backing.name)
            if catalog is not None:
                _check_opens(catalog, master_key, backing.name)
            merge = _merge(document, catalog, master_key, settings, backing)
            if merge.conflicts:
                raise ConfigError(
                    backing.name,
                    f"holds keys that those of {path} cannot be merged with; nothing was "
                    f"copied: {_listed(merge.conflicts)}. Such a node's keys stay in its "
                    "local keyring (keep it on the local provider, with its own catalog)",
                )
            copied = merge.document != catalog
            if copied:
                backing.write(orjson.dumps(merge.document, option=orjson.OPT_INDENT_2))
    except BaseException:
        backing.close()
        raise
    keyring = LocalKeyring.open_backing(backing, master_key, create=False)
    try:
        stored = backing.read()
        if stored is None:
            raise ConfigError(backing.name, "has disappeared")
        stored_document = _parse(stored.document, backing.name)
        values = _check_opens(stored_document, master_key, backing.name)
        again = _merge(document, stored_document, master_key, settings, backing)
        if not again.complete:  # another writer between the commit and this read
            raise ConfigError(
                backing.name, f"lacks keys of {path} after the copy: {_listed(again.missing)}"
            )
        tenants = document.get("tenants")
        left = 0 if _keks(settings) or not isinstance(tenants, dict) else len(tenants)
        return CopyReport(
            location=keyring.location,
            values=values,
            copied=copied,
            merged=catalog is not None,
            added=merge.missing,
            kek_tenants_left=left,
        )
    finally:
        keyring.close()


def _parse(document: bytes, name: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(document)
    except orjson.JSONDecodeError as e:
        raise ConfigError(name, f"is unreadable ({e})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(name, "is unreadable (not a JSON object)")
    return parsed


def _check_opens(document: dict[str, Any], master_key: bytes, name: str) -> int:
    """Every value of ``document`` opens under the master key (it is what the catalog's
    nodes will open it with); a document in a master-key rotation is refused."""
    if keyfile.in_rotation(document):
        raise ConfigError(
            name,
            "is in the middle of a master-key rotation: finish it first (`callvault keys "
            "rotate-master --commit`, or --abort), then copy it",
        )
    try:
        return keyfile.open_all(document, master_key, WRAPPED_SECTIONS, PLAIN_SECTIONS)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(name, f"is unreadable ({e})") from None
    except KeyUnavailable as e:
        raise ConfigError(
            MASTER_KEY_SETTING,
            f"does not open {name} ({e.message}): it must be the master key that wraps it",
        ) from None
