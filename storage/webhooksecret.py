"""The tenant's webhook secret at rest: sealed under the tenant's keys, like an object.

Whoever holds a tenant's webhook secret can forge its events, so the catalog (and with it every
database dump and backup) never holds one in clear. A new secret is sealed by the object format
(``crypto.objectformat.seal``) under a fresh DEK; the DEK, wrapped by the tenant's KEK, is a
row of the key table under a ``whsec_…`` id, and the stored document keeps only that id and
the ciphertext (a `SealedSecret`). To the key machinery the secret is one more object: KEK
rotation re-wraps its DEK with the others, retirement races its writer and its readers as it
races an object's (``storage.keyrows`` handles both), and deleting the tenant (its KEKs
destroyed) crypto-shreds it with everything else.

One sealed secret per secret, not per version: a version that keeps the secret (a PUT of
`REDACTED`) refers to the same sealed secret, and a version that changes or removes it
shreds the previous one (``catalog.instructions.add`` deletes its key row in the version's
transaction). Older versions keep a ciphertext nobody can open, so at any time only the
current secret is readable, and only by the webhook sender (`open_secret`, at each attempt).

Catalogs written before secrets were sealed hold them in clear in every version:
`seal_clear_secrets` seals them when the services open, once (a sealed catalog has nothing
left to do), the current version's secret under a stored key, a superseded one under a key
that is dropped at once, exactly as if it had been changed after sealing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import KeyProvider
from crypto.objectformat import generate_dek, open_sealed, seal
from storage.catalog import Catalog, Instructions, ObjectKeyRow
from storage.errors import NotFound
from storage.instructions import (
    REDACTED,
    SEALED_SECRET_PREFIX,
    InstructionsDoc,
    SealedSecret,
)
from storage.keyrows import keep_wrap_open, key_row, unwrap_stored

__all__ = ["open_secret", "seal_clear_secrets", "seal_secret", "store_instructions"]

log = logging.getLogger(__name__)

# The KEK named in the header of a secret sealed under a DEK that is never stored (a
# superseded secret of a catalog being sealed): nothing can open it, nothing needs to.
_DROPPED_KEK = "dropped"


async def seal_secret(
    keys: KeyProvider, tenant: str, secret: str, *, now: datetime
) -> tuple[SealedSecret, ObjectKeyRow]:
    """``secret`` sealed under a fresh DEK, and the key row (the DEK wrapped by the tenant's
    current KEK) that must be stored for it to open; ``KeyUnavailable`` when the tenant's
    keys were destroyed."""
    new = await _seal_under_new_key(keys, tenant, secret, now=now)
    return new.sealed, new.key


@dataclass(frozen=True)
class _NewSecret:
    sealed: SealedSecret
    key: ObjectKeyRow
    dek: bytes = field(repr=False)
    """Kept until the key row is stored: whoever stores it re-wraps the DEK if the wrap
    stopped opening meanwhile (``storage.keyrows.keep_wrap_open``)."""

    async def keep_open(self, catalog: Catalog, keys: KeyProvider, *, now: datetime) -> None:
        await keep_wrap_open(
            catalog, keys, self.key.tenant_id, self.key.object_id, self.dek, now=now
        )


async def _seal_under_new_key(
    keys: KeyProvider, tenant: str, secret: str, *, now: datetime
) -> _NewSecret:
    key_id = f"{SEALED_SECRET_PREFIX}{secrets.token_hex(16)}"
    dek = generate_dek()
    wrapped = await keys.wrap(tenant, key_id, dek)
    sealed = _seal(secret, dek, tenant, key_id, wrapped.kek_id, wrapped.kek_version)
    return _NewSecret(sealed, key_row(key_id, tenant, wrapped, now), dek)


def _seal(
    secret: str, dek: bytes, tenant: str, key_id: str, kek_id: str, kek_version: int
) -> SealedSecret:
    ciphertext = seal(
        secret.encode(),
        dek=dek,
        tenant=tenant,
        object_id=key_id,
        kek_id=kek_id,
        kek_version=kek_version,
    )
    return SealedSecret(key_id=key_id, ciphertext=base64.b64encode(ciphertext).decode())


def _sealed_and_dropped(tenant: str, secret: str) -> SealedSecret:
    """``secret`` sealed under a DEK that is forgotten at once: the stored form of a secret
    that is already superseded (or whose tenant's keys are gone)."""
    key_id = f"{SEALED_SECRET_PREFIX}{secrets.token_hex(16)}"
    return _seal(secret, generate_dek(), tenant, key_id, _DROPPED_KEK, 0)


async def open_secret(
    catalog: Catalog, keys: KeyProvider, tenant: str, sealed: SealedSecret
) -> str:
    """The secret in clear. ``KeyUnavailable`` when its key row is gone (the secret was
    replaced since) or the tenant's KEKs were destroyed; ``DecryptionFailed`` when the
    ciphertext was altered or belongs to another tenant or key. A key row re-wrapped by
    ``keys rotate`` while it was read is read again (``storage.keyrows``)."""
    dek = await unwrap_stored(catalog, keys, tenant, sealed.key_id)
    try:
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
    except binascii.Error:
        raise DecryptionFailed("the sealed webhook secret is not base64") from None
    plaintext = open_sealed(ciphertext, dek=dek, tenant=tenant, object_id=sealed.key_id)
    return plaintext.decode()


async def store_instructions(
    catalog: Catalog,
    keys: KeyProvider,
    tenant: str,
    document: InstructionsDoc,
    *,
    created_by: str,
    now: datetime,
) -> Instructions:
    """Store ``document`` (as PUT) as the tenant's new version, its webhook secret sealed:
    a new secret under a new key, `REDACTED` keeping the current sealed secret (see
    ``catalog.instructions.add``, which also shreds the secret the new version drops).

    A new secret's key row is checked once stored, and re-wrapped if ``keys retire``
    removed the KEK version it was wrapped under meanwhile (``storage.keyrows``)."""
    stored = document.document()
    secret = document.webhook.secret
    if not isinstance(secret, str) or secret == REDACTED:
        return await catalog.instructions.add(tenant, stored, created_by, now)
    await catalog.tenants.get(tenant)  # NotFound before a KEK is made for no tenant
    new = await _seal_under_new_key(keys, tenant, secret, now=now)
    stored["webhook"] = {**stored["webhook"], "secret": new.sealed.model_dump()}
    row = await catalog.instructions.add(tenant, stored, created_by, now, secret_key=new.key)
    await new.keep_open(catalog, keys, now=now)
    return row


async def seal_clear_secrets(catalog: Catalog, keys: KeyProvider, *, now: datetime) -> int:
    """Seal every webhook secret a catalog from before sealing holds in clear; returns how
    many versions were rewritten (0 once done, so running it at every start is cheap).

    Per tenant, the newest version's secret is sealed under a stored key (versions holding
    the same secret share it); every other secret is superseded and sealed under a key that
    is never stored, as is every secret of a deleted tenant (or of one whose keys are
    destroyed). Safe against a concurrent PUT or a concurrent run: a version changed since
    it was read is left alone, and the key is stored only while its version is still the
    newest (then checked to open, as a PUT's)."""
    by_tenant: defaultdict[str, list[Instructions]] = defaultdict(list)
    for row in await catalog.instructions.clear_secrets():
        by_tenant[row.tenant_id].append(row)
    rewritten = 0
    renew: list[str] = []
    for tenant, rows in by_tenant.items():
        latest = await catalog.instructions.latest(tenant)
        current = latest.version if latest is not None else 0
        current_secret = next((_clear_secret(row) for row in rows if row.version == current), None)
        new = None
        if current_secret is not None:
            new = await _seal_if_live(catalog, keys, tenant, current_secret, now=now)
        sealed = {}
        for row in rows:
            secret = _clear_secret(row)
            form = new.sealed if new is not None and secret == current_secret else None
            form = form or _sealed_and_dropped(tenant, secret)
            webhook = {**row.document["webhook"], "secret": form.model_dump()}
            sealed[row.version] = (row.document, {**row.document, "webhook": webhook})
        count = await catalog.instructions.seal_clear_secrets(
            tenant, sealed, current=current, secret_key=new.key if new is not None else None
        )
        if new is not None:
            await new.keep_open(catalog, keys, now=now)
        rewritten += count
        if count:
            log.info("sealed the webhook secrets of %d instructions versions of %s", count, tenant)
        if count and new is not None:
            renew.append(tenant)
    if rewritten:
        _warn_about_clear_copies(catalog.backend, renew)
    return rewritten


def _warn_about_clear_copies(backend: str, renew: list[str]) -> None:
    """Sealing rewrites the rows, not the copies made before: backups and dumps of the
    catalog, and on PostgreSQL the rows' old versions (until VACUUM) and the write-ahead
    log (its archive, base backups). Only a new secret makes a copied one harmless;
    ``renew``: the live tenants whose current secret was among those sealed."""
    postgres = backend == "postgresql"
    todo = []
    if renew:
        todo.append(
            "have these tenants set a new webhook secret (a PUT of their instructions): "
            + ", ".join(renew)
        )
    if postgres:
        todo.append("run `VACUUM FULL instructions` on the catalog database")
    log.warning(
        "webhook secrets that an earlier callvault stored in clear were sealed; copies made "
        "before (catalog backups and dumps%s) still hold them in clear%s",
        ", PostgreSQL's write-ahead log and the rows' old versions" if postgres else "",
        ": " + "; ".join(todo) if todo else " (none is a live tenant's current secret)",
        extra={"event": "webhooks.clear_secrets_sealed"},
    )


def _clear_secret(row: Instructions) -> str:
    secret = row.document["webhook"]["secret"]
    if not isinstance(secret, str):  # pragma: no cover - clear_secrets selects strings
        raise TypeError(f"version {row.version} of {row.tenant_id!r} holds no clear secret")
    return secret


async def _seal_if_live(
    catalog: Catalog, keys: KeyProvider, tenant: str, secret: str, *, now: datetime
) -> _NewSecret | None:
    """The tenant's current secret sealed under a new key; ``None`` (to be sealed under a
    dropped key) when the tenant is deleted, or its keys are destroyed: a DELETE that
    stopped between destroying them and marking the tenant deleted (the secret is
    crypto-shredded, as the DELETE meant)."""
    try:
        await catalog.tenants.get(tenant)
        return await _seal_under_new_key(keys, tenant, secret, now=now)
    except NotFound:
        return None
    except KeyUnavailable:
        log.warning(
            "tenant %s has no keys (a deletion that did not finish destroyed them): its "
            "webhook secret is sealed under a key that is not kept",
            tenant,
        )
        return None
