"""Opening the configured object store from its URL.

The store is named by one URL setting (``file:///srv/callvault/objects`` or
``s3://bucket/prefix``), so choosing between the two implementations happens here, once, and
the rest of the code only sees the ``ObjectStore`` protocol.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from storage.filestore import FileStore
from storage.s3 import DEFAULT_PART_SIZE, S3Store
from storage.store import ObjectStore

__all__ = ["open_store"]


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str = "us-east-1",
    part_size: int = DEFAULT_PART_SIZE,
) -> ObjectStore:
    """Build the store a URL names; the S3 options are ignored for ``file:`` URLs.

    ``file:`` URLs take everything after ``file://`` (or ``file:``) as the path, percent-
    decoded as ``Path.as_uri()`` encodes it; a relative data dir survives
    (``file://./var/objects`` is ``./var/objects``), and ``file://localhost/x`` is ``/x``.
    Raises ``ValueError`` for any other scheme.
    """
    if url.startswith("file:"):
        path = url.removeprefix("file:")
        if path.startswith("//"):
            path = path[2:]
            if path.startswith("localhost/"):
                path = path.removeprefix("localhost")
        if not path or "?" in path or "#" in path:
            raise ValueError(f"not a file:///path URL: {url!r}")
        return FileStore(Path(unquote(path, errors="strict")))
    if url.startswith("s3://"):
        return S3Store.from_url(
            url,
            endpoint_url=endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            part_size=part_size,
        )
    raise ValueError(f"unsupported object store URL {url!r}: use file:// or s3://")
