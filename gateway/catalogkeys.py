"""The keyring of a fleet: kept in the catalog (``CALLVAULT_KEYS__PROVIDER=catalog``), and
moved there from a node's local keyring (``callvault keys to-catalog``).

Every node opens the one keyring row of the catalog (``storage.keyring``) with the master
key, so the master key must be the same on every node. It is therefore taken only from
``CALLVAULT_MASTER_KEY`` (a secret store that every node reads): a ``master.key`` file is
made per data dir, and a node that made its own would make, or fail to open, a keyring
that no other node opens. Without the setting the process refuses to start.

The catalog must be PostgreSQL. A SQLite catalog is one node's file, so there is no fleet
to share it with; and a keyring row in it could not be written while a catalog write is
open (SQLite has one write lock, and the catalog makes a tenant's audit key inside the
transaction of the tenant's first audit event), so a process would wait on itself.

A node that has run with the local keyring holds its keys in ``keyring.json``; the catalog
keyring does not hold them until ``keys to-catalog`` copies that document into the row
(the same document: every value stays wrapped by the same master key). Until then a start
with ``provider=catalog`` is refused, rather than making an empty keyring in the catalog
under which none of the node's objects would open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from crypto import keyfile
from crypto.errors import ConfigError, KeyUnavailable
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


def fleet_master_key(settings: Settings) -> bytes:
    """The master key of the catalog keyring: ``CALLVAULT_MASTER_KEY``, or a refusal."""
    if settings.master_key is None:
        raise ConfigError(
            MASTER_KEY_SETTING,
            f"must be set when {PROVIDER_SETTING}={settings.keys.provider}: every node opens "
            "the one keyring "
            "in the catalog, so every node needs the same master key, from a secret store "
            "(a master.key file is made per data dir; if this node has one, put its content "
            "in the secret store and set CALLVAULT_MASTER_KEY from there)",
        )
    return decode_master_key(settings.master_key.get_secret_value())


def require_shared_catalog(settings: Settings) -> None:
    """Refuse a SQLite catalog for the catalog keyring, naming the settings."""
    if make_url(settings.catalog_url).get_backend_name() != "postgresql":
        raise ConfigError(
            PROVIDER_SETTING,
            "is catalog, which needs the catalog that every node shares, on PostgreSQL "
            "(CALLVAULT_DATABASE_URL=postgresql://host/db); this one is SQLite, one node's "
            "file, whose single write lock cannot take the keyring's writes inside the "
            "catalog's own. With one node, use the local keyring (provider local)",
        )


def open_catalog_keyring(settings: Settings) -> LocalKeyring:
    """The keyring in the catalog, made there on the fleet's first start; a wrong master
    key is refused naming ``CALLVAULT_MASTER_KEY``. Refused as well on a SQLite catalog,
    and while the data dir holds a local keyring that was never copied into the catalog
    (``keys to-catalog``)."""
    require_shared_catalog(settings)
    master_key = fleet_master_key(settings)
    backing = CatalogBacking.open(settings.catalog_url, settings.data_dir)
    local = settings.data_dir / KEYRING_FILE
    try:
        if backing.read() is None and local.exists():
            raise ConfigError(
                PROVIDER_SETTING,
                f"is {settings.keys.provider}, but the catalog holds no keyring yet and this "
                "node's keys are in "
                f"its local keyring {local}: copy them there first with `callvault keys "
                "to-catalog` (a new, empty keyring in the catalog would open none of the "
                "objects this node sealed)",
            )
    except BaseException:
        backing.close()
        raise
    return LocalKeyring.open_backing(backing, master_key)


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_to_catalog`` did."""

    location: str
    """The catalog keyring, as messages name it."""
    values: int
    """How many wrapped values the catalog's keyring holds, each checked to open."""
    copied: bool
    """False when the catalog held the same document already (nothing written)."""


def copy_to_catalog(settings: Settings) -> CopyReport:
    """Copy the data dir's local keyring into the catalog, as it is (``keys to-catalog``).

    Refused when the local keyring is absent, does not open with ``CALLVAULT_MASTER_KEY``
    (every value is checked), or is in a master-key rotation; and when the catalog already
    holds a keyring with other keys (another node's, or one made since): nothing is merged.
    A catalog that holds the same document already is left as it is, so running it again
    is harmless. The copy is then opened from the catalog and every value checked again."""
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
            if present is None:
                backing.write(loaded.document)
            elif _parse(present.document, backing.name) != document:
                raise ConfigError(
                    backing.name,
                    f"already holds a keyring with other keys than {path} (another node's, "
                    "or one made since); nothing was copied. Keyrings are not merged: "
                    "copy one node's keyring into an empty catalog keyring",
                )
    except BaseException:
        backing.close()
        raise
    keyring = LocalKeyring.open_backing(backing, master_key, create=False)
    try:
        stored = backing.read()
        if stored is None:
            raise ConfigError(backing.name, "has disappeared")
        values = _check_opens(_parse(stored.document, backing.name), master_key, backing.name)
        return CopyReport(location=keyring.location, values=values, copied=present is None)
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
