"""The keyring of catalog tests: a real ``LocalKeyring`` in a temporary directory, whose audit
keys (``AuditKeyring``) key the catalog's audit log as ``open_services`` does in production."""

from __future__ import annotations

from pathlib import Path

from crypto.auditkeys import AuditKeyring
from crypto.keys import LocalKeyring

MASTER = bytes(range(32))


def audit_keyring(directory: Path, master: bytes = MASTER) -> AuditKeyring:
    """The audit keys of the keyring in ``directory`` (made there if absent)."""
    return AuditKeyring(LocalKeyring.open(directory, master))
