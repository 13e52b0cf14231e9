"""A node's local keyring merged into the catalog keyring that a fleet already shares:
what the node's ``keyring.json`` holds that the catalog's document does not, and the two
documents merged (``callvault keys to-catalog``; the start of a node on the catalog
keyring refuses while anything is missing).

Why a merge can be exact: both documents are wrapped by the same master key
(``CALLVAULT_MASTER_KEY``), and each value is bound by its context to its tenant, KEK id
and version (or to its tenant's audit key), so a value moves from one document to the
other as it is. What cannot be merged, named in ``Merge.conflicts``:

* a tenant with KEKs in both under different KEK ids. The catalog document keeps one KEK
  id per tenant, and the node's DEK rows are wrapped under its own. Re-wrapping those rows
  under the catalog's KEK is not done: such a node made its own audit key for the tenant
  too (at the tenant's first audit event there), which cannot be merged either (below),
  so a re-wrap would move the keys and leave the chain broken;
* a version both hold with different KEKs (each side rotated on its own);
* a tenant with an audit key in both that is not the same key: the node's events and the
  fleet's are keyed apart, so the tenant's chain has forked already;
* a tenant destroyed on the node and alive in the catalog: destroying the fleet's KEK here
  would crypto-shred what other nodes sealed; the operator decides;
* the node's checkpoint signing key, when it signed checkpoints in the catalog and the
  catalog keyring has another: the catalog keeps one, under which those would not verify.

What is needed from the file and merged, named in ``Merge.missing``: a tenant's KEK, or KEK
versions, the catalog lacks; a tombstone; an audit key (or its activation); the signing key
when the catalog has none and it signed checkpoints. Not needed: a tenant's KEK the
catalog tombstoned (the fleet destroyed it: the file's copy is what crypto-shredding
removes), and a signing key that signed nothing (the catalog's signs from now on).

With ``keks=False`` (``CALLVAULT_KEYS__PROVIDER=vault``, whose KEKs are transit keys; the
catalog keyring keeps the audit keys and the signing key) the file's KEKs and tombstones
are neither compared nor merged: vault never uses them, and a KEK copied into the catalog
would never be destroyed with its tenant.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crypto import keyfile
from crypto.auditkeys import ACTIVE_SECTION, HEADS_SECTION, PENDING_SECTION, SIGNING_SECTION
from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import (
    PLAIN_SECTIONS,
    WRAPPED_SECTIONS,
    audit_key_context,
    kek_context,
)
from crypto.objectformat import unwrap_key

LEGACY_SECTION = "audit_legacy"
SignedWith = Callable[[str], Sequence[str]]
"""The tenants with checkpoints signed under a signing key id (in the catalog)."""


@dataclass(frozen=True)
class Merge:
    """The file compared with the catalog keyring (descriptions name tenants, KEK ids and
    versions: nothing secret)."""

    missing: tuple[str, ...]
    """What the file holds, and needs, that the catalog keyring does not."""
    conflicts: tuple[str, ...]
    """What cannot be merged."""
    document: dict[str, Any]
    """The catalog's document with everything missing added (what ``keys to-catalog``
    writes when there is no conflict; neither document may be in a master-key rotation)."""

    @property
    def complete(self) -> bool:
        """Whether the catalog keyring holds everything the file holds and needs."""
        return not self.missing and not self.conflicts


def merge_keyrings(
    local: Mapping[str, Any],
    catalog: Mapping[str, Any] | None,
    master: bytes,
    *,
    keks: bool,
    signed_with: SignedWith,
) -> Merge:
    """Compare the file's document ``local`` with the catalog's (``None``: there is none
    yet) and merge them, both opened with ``master`` (the side it opens, during a
    rotation). ``KeyUnavailable`` when a value the comparison needs does not open."""
    if catalog is None:
        catalog = {
            "format": local["format"],
            "check": local["check"],
            "tenants": {},
            "destroyed": [],
        }
    merging = _Merging(
        _view(local, master, "the local keyring"),
        _view(catalog, master, "the catalog keyring"),
        master,
    )
    if keks:
        merging.keks()
    merging.audit_keys()
    merging.signing_key(signed_with)
    if LEGACY_SECTION not in merging.merged and LEGACY_SECTION in merging.local:
        merging.merged[LEGACY_SECTION] = copy.deepcopy(merging.local[LEGACY_SECTION])
    return Merge(tuple(merging.missing), tuple(merging.conflicts), merging.merged)


def _view(doc: Mapping[str, Any], master: bytes, name: str) -> dict[str, Any]:
    """``doc`` as ``master`` sees it (one wrap a value)."""
    try:
        side = keyfile.side_of(doc, master)
    except (DecryptionFailed, binascii.Error) as e:
        raise KeyUnavailable(f"{name} is wrapped by another master key") from e
    view: dict[str, Any] = keyfile.select(doc, side, WRAPPED_SECTIONS, PLAIN_SECTIONS)
    return view


class _Merging:
    def __init__(self, local: dict[str, Any], catalog: dict[str, Any], master: bytes) -> None:
        self.local, self.catalog, self._master = local, catalog, master
        self.merged = copy.deepcopy(catalog)
        self.missing: list[str] = []
        self.conflicts: list[str] = []

    def _open(self, wrapped: str, context: bytes, what: str) -> bytes:
        try:
            return unwrap_key(self._master, base64.b64decode(wrapped), context=context)
        except (DecryptionFailed, binascii.Error, ValueError):
            raise KeyUnavailable(f"{what} does not open under the master key") from None

    # -- the tenants' KEKs and tombstones ---------------------------------------------------

    def keks(self) -> None:
        local, catalog = self.local["tenants"], self.catalog["tenants"]
        gone = set(self.catalog.get("destroyed", []))
        merged = self.merged.setdefault("tenants", {})
        for tenant in sorted(local):
            if tenant in gone:
                continue  # the fleet destroyed it: the file's copy is not needed
            mine, theirs = local[tenant], catalog.get(tenant)
            kek_id = mine["kek_id"]
            if theirs is None:
                versions = ", ".join(sorted(mine["versions"], key=int))
                self.missing.append(f"tenant {tenant!r}: KEK {kek_id} (version(s) {versions})")
                merged[tenant] = copy.deepcopy(mine)
                continue
            if theirs["kek_id"] != kek_id:
                self.conflicts.append(
                    f"tenant {tenant!r} has KEK {kek_id} in the file and KEK {theirs['kek_id']} "
                    "in the catalog keyring (a tenant keeps one KEK there, and the node's DEKs "
                    "are wrapped under its own)"
                )
                continue
            self._kek_versions(tenant, mine, theirs, merged[tenant])
        for tenant in sorted(set(self.local.get("destroyed", [])) - gone):
            if tenant in catalog:
                self.conflicts.append(
                    f"tenant {tenant!r} was destroyed on this node and has a KEK in the "
                    "catalog keyring (merging the tombstone would crypto-shred what other "
                    "nodes sealed for it)"
                )
            else:
                self.missing.append(f"tenant {tenant!r}: its tombstone (destroyed)")
                self.merged["destroyed"] = sorted({*self.merged.get("destroyed", []), tenant})

    def _kek_versions(
        self, tenant: str, mine: dict[str, Any], theirs: dict[str, Any], merged: dict[str, Any]
    ) -> None:
        kek_id = mine["kek_id"]
        for version in sorted(mine["versions"], key=int):
            wrap = mine["versions"][version]
            if version not in theirs["versions"]:
                self.missing.append(f"tenant {tenant!r}: KEK {kek_id} version {version}")
                merged["versions"][version] = wrap
                continue
            context = kek_context(tenant, kek_id, int(version))
            what = f"KEK {kek_id} version {version} of tenant {tenant!r}"
            if self._open(wrap, context, what) != self._open(
                theirs["versions"][version], context, what
            ):
                self.conflicts.append(
                    f"tenant {tenant!r}: KEK {kek_id} version {version} is another key in "
                    "the file than in the catalog keyring (each side rotated on its own)"
                )
        merged["current"] = max(int(merged["current"]), int(mine["current"]))

    # -- audit keys ------------------------------------------------------------------------------

    def audit_keys(self) -> None:
        tenants = {
            t for name in (ACTIVE_SECTION, PENDING_SECTION) for t in _entries(self.local, name)
        }
        for tenant in sorted(tenants):
            mine = self._audit_key(self.local, tenant)
            theirs = self._audit_key(self.catalog, tenant)
            if mine is None:
                continue
            if theirs is None:
                state = "active" if mine[1] else "pending"
                self.missing.append(f"tenant {tenant!r}: its audit key ({state})")
                for name in (ACTIVE_SECTION, PENDING_SECTION, HEADS_SECTION):
                    entry = _entries(self.local, name).get(tenant)
                    if entry is not None:
                        self.merged.setdefault(name, {})[tenant] = entry
                continue
            if mine[0] != theirs[0]:
                self.conflicts.append(
                    f"tenant {tenant!r} has another audit key in the file than in the catalog "
                    "keyring: its events on this node and on the fleet are keyed apart, its "
                    "audit chain has forked"
                )
            elif mine[1] and not theirs[1]:  # activated here, still pending there
                self.missing.append(f"tenant {tenant!r}: its audit key's activation")
                self.merged.setdefault(ACTIVE_SECTION, {})[tenant] = _entries(
                    self.local, ACTIVE_SECTION
                )[tenant]
                for name in (PENDING_SECTION, HEADS_SECTION):
                    self.merged.get(name, {}).pop(tenant, None)

    def _audit_key(self, doc: dict[str, Any], tenant: str) -> tuple[bytes, bool] | None:
        """The tenant's audit key in ``doc`` and whether it is active."""
        for name, active in ((ACTIVE_SECTION, True), (PENDING_SECTION, False)):
            wrapped = _entries(doc, name).get(tenant)
            if wrapped is not None:
                context = audit_key_context(tenant, pending=not active)
                return self._open(wrapped, context, f"the audit key of tenant {tenant!r}"), active
        return None

    # -- the checkpoint signing key ------------------------------------------------------------

    def signing_key(self, signed_with: SignedWith) -> None:
        mine, theirs = self.local.get(SIGNING_SECTION), self.catalog.get(SIGNING_SECTION)
        if mine is None or (theirs is not None and theirs["key_id"] == mine["key_id"]):
            return  # the key id is the public key's digest: the same id, the same key
        key_id = str(mine["key_id"])
        signed = sorted(signed_with(key_id))
        if theirs is None:
            self.merged[SIGNING_SECTION] = copy.deepcopy(mine)
            if signed:
                self.missing.append(
                    f"the audit checkpoint signing key {key_id} (it signed checkpoints of "
                    f"tenant(s) {', '.join(map(repr, signed))})"
                )
        elif signed:
            self.conflicts.append(
                f"the audit checkpoint signing key {key_id} of the file signed checkpoints of "
                f"tenant(s) {', '.join(map(repr, signed))}, and the catalog keyring signs "
                f"with {theirs['key_id']}, under which they would not verify"
            )


def _entries(doc: Mapping[str, Any], name: str) -> dict[str, str]:
    section = doc.get(name)
    return dict(section) if isinstance(section, dict) else {}
