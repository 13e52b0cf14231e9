"""The object-store interface shared by the file store and the S3 store.

Objects are opaque byte strings (always sealed by ``crypto.objectformat`` before they get
here) under keys such as ``acme/objects/2f1c...``. An upload is streamed: bytes are appended
as audio arrives and the object becomes visible under its key only on ``commit()``, so a
reader never sees a half-written object.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*(/[A-Za-z0-9][A-Za-z0-9._=-]*)*$")
MAX_KEY_LENGTH = 512


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise ``ValueError``.

    Safe keys are relative, slash-separated, made of ``[A-Za-z0-9._=-]``, with no empty,
    ``.`` or ``..`` component, so that they map to paths inside the file store's root and to
    S3 keys unchanged.
    """
    if len(key) > MAX_KEY_LENGTH or not _KEY_RE.match(key):
        raise ValueError(f"invalid object key {key!r}")
    if any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectUpload(Protocol):
    """A streaming upload of one object; invisible under its key until ``commit()``."""

    async def write(self, data: bytes | bytearray) -> None:
        """Append bytes to the object (the caller will not modify ``data`` afterwards)."""

    async def flush(self) -> None:
        """Push what was written towards durable storage as far as the store allows."""

    async def commit(self) -> int:
        """Publish the object under its key atomically; return its size in bytes."""

    async def abort(self) -> None:
        """Drop the upload; nothing becomes visible. Safe to call more than once."""


class ObjectStore(Protocol):
    """Where sealed objects live: files in the data dir or an S3 bucket."""

    async def open_upload(self, key: str) -> ObjectUpload:
        """Start a streaming upload of a new object under ``key``."""

    async def put(self, key: str, data: bytes) -> None:
        """Store a small object in one call (atomic, like an upload)."""

    def read(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Yield the object's bytes in chunks; raise ``ObjectNotFound`` if absent."""

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete objects (every version, where the store keeps versions); absent keys are
        not an error, so deletion is idempotent."""

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield the keys of committed objects that start with ``prefix``."""

    async def check(self) -> None:
        """Raise ``StorageUnavailable`` unless the store can be reached (for /readyz)."""

    async def close(self) -> None:
        """Release clients and threads."""
