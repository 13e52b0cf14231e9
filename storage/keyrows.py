"""A DEK's row in the key table, read and written against a keyring that retires versions.

Objects (``storage.vault``) and webhook secrets (``storage.webhooksecret``) keep their DEK
the same way: wrapped by the tenant's KEK, in a row of the key table. ``keys rotate``
re-wraps those rows under a new KEK version and ``keys retire`` then removes the versions no
row references, both from another process, at any time. Two races follow, the same for
every DEK, and this module is the one place that handles them:

* a **reader** reads a row, then rotation re-wraps it and retirement removes the version it
  was read under, before the reader unwraps it: the reader reads the row again
  (``unwrap_stored``);
* a **writer** with a stale view of the keyring wraps under a version that was current a
  moment ago, and its row lands after retirement's last count: the wrap it stored opens
  nothing. The writer checks, after storing its row, that it still opens
  (``wrap_opens``), and if not makes it again (``keep_wrap_open`` re-wraps the DEK it
  holds, as the webhook secrets do; the vault re-makes the whole object instead).
"""

from __future__ import annotations

import logging
from datetime import datetime

from crypto.errors import KeyUnavailable
from crypto.keys import KeyProvider, RetiresKekVersions, WrappedKey
from storage.catalog import Catalog, ObjectKeyRow

__all__ = ["keep_wrap_open", "key_row", "unwrap_stored", "wrap_opens", "wrapped"]

log = logging.getLogger(__name__)

REWRAP_TRIES = 3
"""How many times ``keep_wrap_open`` re-wraps a row whose KEK version keeps being retired
before it gives up (each retirement needs a rotation first: one is already rare)."""


def wrapped(row: ObjectKeyRow) -> WrappedKey:
    """The wrap a key row stores."""
    return WrappedKey(row.kek_id, row.kek_version, row.wrapped_dek)


def key_row(object_id: str, tenant: str, wrap: WrappedKey, now: datetime) -> ObjectKeyRow:
    """The key row that stores ``wrap`` for a new object (``wrapped``'s inverse)."""
    return ObjectKeyRow(
        object_id=object_id,
        tenant_id=tenant,
        kek_id=wrap.kek_id,
        kek_version=wrap.kek_version,
        wrapped_dek=wrap.blob,
        created_at=now,
    )


async def unwrap_stored(catalog: Catalog, keys: KeyProvider, tenant: str, object_id: str) -> bytes:
    """The DEK of ``object_id``, from its row. ``KeyUnavailable`` when the row is gone
    (shredded, or never stored) or its KEK is (the tenant's keys destroyed); a row that
    was re-wrapped between its read and the unwrap is read again."""
    row = await catalog.keys.get(object_id, tenant_id=tenant)
    try:
        return await keys.unwrap(tenant, object_id, wrapped(row))
    except KeyUnavailable:
        again = await catalog.keys.get(object_id, tenant_id=tenant)
        if wrapped(again) == wrapped(row):
            raise
        return await keys.unwrap(tenant, object_id, wrapped(again))


async def wrap_opens(keys: KeyProvider, tenant: str, object_id: str, wrap: WrappedKey) -> bool:
    """Whether ``wrap``, whose row was just stored, opens with the keyring as it is now.

    ``keys retire`` removes the versions no row references, then counts again and puts
    back a version that gained a row meanwhile; a row that lands after that second count
    is caught only here, after it is stored. Always true for a provider that does not
    retire versions."""
    if not isinstance(keys, RetiresKekVersions):
        return True
    try:
        await keys.unwrap(tenant, object_id, wrap)
    except KeyUnavailable:
        return False
    return True


async def keep_wrap_open(
    catalog: Catalog, keys: KeyProvider, tenant: str, object_id: str, dek: bytes, *, now: datetime
) -> None:
    """After a writer stored the row of ``dek``: make sure it opens, re-wrapping ``dek``
    under the current KEK (in place, only over the row as read) while it does not. A row
    that is gone was shredded meanwhile (its secret replaced): nothing to keep.
    ``KeyUnavailable`` if the version keeps being retired, or the tenant's keys were
    destroyed."""
    if not isinstance(keys, RetiresKekVersions):
        return
    tries = 0
    while True:
        try:
            row = await catalog.keys.get(object_id, tenant_id=tenant)
        except KeyUnavailable:
            return
        if await wrap_opens(keys, tenant, object_id, wrapped(row)):
            return
        if tries == REWRAP_TRIES:
            raise KeyUnavailable(
                f"the KEK of tenant {tenant!r} kept being retired while key {object_id} was stored"
            )
        tries += 1
        log.warning(
            "key %s of tenant %s: its KEK version %d was retired; re-wrapped",
            object_id,
            tenant,
            row.kek_version,
        )
        again = await keys.wrap(tenant, object_id, dek)
        await catalog.keys.replace_wrap(row, again.kek_id, again.kek_version, again.blob, now)
