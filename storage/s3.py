"""The S3 object store (AWS S3 or an S3-compatible server: SeaweedFS, MinIO, Ceph).

Why it looks the way it does:

* **boto3 stays off the event loop.** Every boto3 call, including creating the client (which
  loads the service model from disk) and reading response bodies, runs in a bounded thread
  pool of the store's own, sized like botocore's connection pool.
* **Streaming multipart upload with a bounded buffer.** Written bytes are buffered; whenever
  ``part_size`` bytes are buffered they go up as one part (the multipart upload is created
  lazily with the first part). An object that never fills a part is stored with a single
  ``PutObject`` on ``commit()``. At most about ``part_size`` plus one write is held in memory.
* **``flush()`` cannot make small writes durable.** S3 parts other than the last must be at
  least 5 MiB, so ``flush()`` uploads a part only when 5 MiB or more are buffered and does
  nothing otherwise. This is why the gateway keeps its own local spool of acknowledged audio
  when the store is S3: nothing written here is durable before ``commit()``.
* **Integrity.** Each ``PutObject``/``UploadPart`` carries a ``Content-MD5`` that the server
  verifies. botocore's newer default CRC trailers (aws-chunked bodies) are turned off: not
  every S3-compatible server accepts them, and MD5 is verified everywhere.
* **Deletion removes every version.** In a versioned bucket a plain delete only adds a
  delete marker and keeps the audio, which defeats retention. So ``delete_many`` asks the
  bucket whether versioning is (or was) on, lists each key's versions and delete markers,
  and deletes them all, 1000 per ``DeleteObjects`` call, checking the per-key errors.
* **Errors are translated where they enter.** botocore's ``ClientError`` becomes
  ``StorageUnavailable`` carrying the S3 error code (``NoSuchBucket``, ``SlowDown``,
  ``SignatureDoesNotMatch``...), a missing key on read becomes ``ObjectNotFound``, and
  transport errors become ``StorageUnavailable`` named after botocore's error class
  (``EndpointConnectionError``, ``ReadTimeoutError``...). Credentials never appear in
  messages or ``repr``; messages are scrubbed of them in case a server echoes one back.

An upload that is neither committed nor aborted (the process died) leaves an incomplete
multipart upload behind, which S3 keeps and bills; give the bucket a lifecycle rule
``AbortIncompleteMultipartUpload``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from crypto.errors import CallvaultError
from storage.errors import ObjectNotFound, StorageError, StorageUnavailable
from storage.store import check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        ListObjectsV2OutputTypeDef,
        ListObjectsV2RequestTypeDef,
        ListObjectVersionsOutputTypeDef,
        ListObjectVersionsRequestTypeDef,
        ObjectIdentifierTypeDef,
    )

__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "S3Store", "S3Upload"]

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's minimum size of every multipart part but the last."""

DEFAULT_PART_SIZE = 8 * 1024 * 1024
MAX_DELETE_BATCH = 1000
DELETE_CONCURRENCY = 4
"""``DeleteObjects`` requests in flight at once (the client's pool has ``max_workers``)."""
MIN_DELETE_SPLIT = 100
"""Keys below which a deletion is not split into concurrent requests."""
"""S3's limit on keys per ``DeleteObjects`` request."""

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_AWS_HOST_RE = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$")

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class _Credentials:
    """Static credentials, or ``None`` for boto3's credential chain; never in ``repr``."""

    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)

    def redact(self, text: str) -> str:
        for secret in (self.secret_key, self.access_key):
            if secret:
                text = text.replace(secret, "***")
        return text


def _bind(fn: Callable[[S3Client, _R], _T], request: _R) -> Callable[[S3Client], _T]:
    """``fn`` with its request fixed now (a lambda in a loop would see the last one)."""
    return lambda s3: fn(s3, request)


def _list_objects(s3: S3Client, request: ListObjectsV2RequestTypeDef) -> ListObjectsV2OutputTypeDef:
    return s3.list_objects_v2(**request)


def _list_versions(
    s3: S3Client, request: ListObjectVersionsRequestTypeDef
) -> ListObjectVersionsOutputTypeDef:
    return s3.list_object_versions(**request)


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a call's outcome as seen; its awaiter may have been cancelled away."""
    if not future.cancelled():
        future.exception()


def _content_md5(data: bytes | bytearray) -> str:
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _body(data: bytearray) -> bytes:
    """A part's bytes as a request body, without copying: botocore takes ``bytearray``
    bodies (its validator lists them), the stubs only say ``bytes``."""
    return cast("bytes", data)


def _is_aws_endpoint(endpoint_url: str | None) -> bool:
    if endpoint_url is None:
        return True
    host = urlsplit(endpoint_url).hostname or ""
    return bool(_AWS_HOST_RE.search(host))


class S3Store:
    """An ``ObjectStore`` that keeps objects in an S3 bucket under ``prefix``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        part_size: int = DEFAULT_PART_SIZE,
        max_workers: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        versioned: bool | None = None,
    ) -> None:
        """``access_key``/``secret_key`` left ``None`` use boto3's credential chain (instance
        role, ...). ``versioned=None`` asks the bucket on every ``delete_many`` whether it
        keeps versions; pass ``True``/``False`` where the credentials may not call
        ``GetBucketVersioning``. ``max_attempts`` counts every try of a request, the first
        included (botocore's standard retry mode: throttling and 5xx, with backoff)."""
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
            prefix += "/"
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if max_workers < 1 or max_attempts < 1:
            raise ValueError("max_workers and max_attempts must be at least 1")
        if endpoint_url is not None:
            parsed = urlsplit(endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"invalid S3 endpoint URL {endpoint_url!r}")
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.part_size = part_size
        self.versioned = versioned
        self._credentials = _Credentials(access_key, secret_key)
        self._config = Config(
            signature_version="s3v4",
            region_name=region,
            s3={"addressing_style": "auto" if _is_aws_endpoint(endpoint_url) else "path"},
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_workers,
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="s3")
        self._client_lock = threading.Lock()
        self._s3: S3Client | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        part_size: int = DEFAULT_PART_SIZE,
        **options: Any,
    ) -> S3Store:
        """Build a store from ``s3://bucket[/prefix]``; other arguments as the constructor."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            part_size=part_size,
            **options,
        )

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}{endpoint})"

    # --- plumbing -------------------------------------------------------------------------

    def _client(self) -> S3Client:
        """The boto3 client, created on first use in a worker thread (botocore clients are
        thread-safe once built; building one is not)."""
        with self._client_lock:
            if self._s3 is None:
                session = boto3.session.Session(
                    aws_access_key_id=self._credentials.access_key,
                    aws_secret_access_key=self._credentials.secret_key,
                    region_name=self.region,
                )
                self._s3 = session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
            return self._s3

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key or ''}"

    async def _call(
        self,
        action: str,
        fn: Callable[[S3Client], _T],
        *,
        key: str | None = None,
        missing_key: bool = False,
    ) -> _T:
        """Run ``fn(client)`` in the pool, translating botocore's errors.

        ``missing_key``: a 404 / ``NoSuchKey`` means the object is absent and becomes
        ``ObjectNotFound``.
        """
        if self._closed:
            raise StorageError("S3 store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(self._client()))
        except ClientError as exc:
            # ``from None``: the botocore error carries the server's raw text; ours carries
            # its code and message, scrubbed of credentials.
            raise self._translate(exc, action, key, missing_key=missing_key) from None
        except BotoCoreError as exc:
            message = self._credentials.redact(str(exc))
            raise StorageUnavailable(
                f"S3 {action} {self._where(key)} failed: {message}",
                store_code=type(exc).__name__,
            ) from None

    def _translate(
        self, exc: ClientError, action: str, key: str | None, *, missing_key: bool
    ) -> CallvaultError:
        error = exc.response.get("Error", {})
        code = str(
            error.get("Code")
            or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "Unknown")
        )
        if missing_key and code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"no object under {key!r}")
        message = self._credentials.redact(str(error.get("Message") or "no message"))
        return StorageUnavailable(
            f"S3 {action} {self._where(key)} failed: {message}", store_code=code
        )

    # --- ObjectStore ------------------------------------------------------------------------

    async def open_upload(self, key: str) -> S3Upload:
        return S3Upload(self, key, self._full_key(key))

    async def put(self, key: str, data: bytes) -> None:
        upload = await self.open_upload(key)
        try:
            await upload.write(data)
            await upload.commit()
        except BaseException:
            with contextlib.suppress(StorageError):
                await upload.abort()
            raise

    async def read(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        full_key = self._full_key(key)
        response = await self._call(
            "reading",
            lambda s3: s3.get_object(Bucket=self.bucket, Key=full_key),
            key=key,
            missing_key=True,
        )
        body = response["Body"]
        try:
            while True:
                chunk = await self._call("reading", lambda _: body.read(chunk_size), key=key)
                if not chunk:
                    return
                yield chunk
        finally:
            # Releases the connection (or drops it if unread); no network round trip.
            body.close()

    async def exists(self, key: str) -> bool:
        """``HEAD`` answers a bare 404 for a missing bucket too, so this says ``False``
        there; ``check()`` is what tells a missing bucket (``NoSuchBucket``)."""
        full_key = self._full_key(key)
        try:
            await self._call(
                "checking",
                lambda s3: s3.head_object(Bucket=self.bucket, Key=full_key),
                key=key,
                missing_key=True,
            )
        except ObjectNotFound:
            return False
        return True

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        request: ListObjectsV2RequestTypeDef = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
        }
        while True:
            page = await self._call("listing", _bind(_list_objects, request.copy()))
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                try:
                    yield check_key(key)
                except ValueError:
                    continue  # written by something else; no upload of ours makes such keys
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete in ``DeleteObjects`` batches of 1000. In a bucket that keeps versions, each
        key's versions and delete markers are listed first (one ``ListObjectVersions`` per
        key, run concurrently) and deleted by version id. A version written while this runs
        can survive it."""
        full_keys = list(dict.fromkeys(self._full_key(key) for key in keys))
        if not full_keys:
            return
        versioned = self.versioned
        if versioned is None:
            versioned = await self._bucket_keeps_versions()
        targets: list[ObjectIdentifierTypeDef]
        if versioned:
            listed = await asyncio.gather(*(self._versions_of(k) for k in full_keys))
            targets = [target for versions in listed for target in versions]
        else:
            targets = [{"Key": k} for k in full_keys]
        # Requests of at most 1000 keys, a few at once: S3 servers work through one
        # request's keys one by one (SeaweedFS deletes about 1.8x faster with four requests
        # of 250 than with one of 1000), and AWS does not charge for DELETE requests.
        size = min(MAX_DELETE_BATCH, max(MIN_DELETE_SPLIT, -(-len(targets) // DELETE_CONCURRENCY)))
        batches = [targets[start : start + size] for start in range(0, len(targets), size)]
        for start in range(0, len(batches), DELETE_CONCURRENCY):
            await asyncio.gather(
                *(
                    self._delete_batch(batch)
                    for batch in batches[start : start + DELETE_CONCURRENCY]
                )
            )

    async def _bucket_keeps_versions(self) -> bool:
        """Whether versioning is on or was ever on (``Suspended`` buckets keep old versions)."""
        response = await self._call(
            "reading the versioning state of",
            lambda s3: s3.get_bucket_versioning(Bucket=self.bucket),
        )
        return response.get("Status") in ("Enabled", "Suspended")

    async def _versions_of(self, full_key: str) -> list[ObjectIdentifierTypeDef]:
        """Every version and delete marker of exactly ``full_key``."""
        found: list[ObjectIdentifierTypeDef] = []
        request: ListObjectVersionsRequestTypeDef = {"Bucket": self.bucket, "Prefix": full_key}
        while True:
            page = await self._call(
                "listing versions of",
                _bind(_list_versions, request.copy()),
                key=full_key[len(self.prefix) :],
            )
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry.get("Key") == full_key:
                    found.append({"Key": full_key, "VersionId": entry.get("VersionId", "null")})
            key_marker = page.get("NextKeyMarker")
            if not page.get("IsTruncated") or key_marker is None or key_marker > full_key:
                # Done, or the rest of the listing is other keys that share the prefix.
                return found
            request["KeyMarker"] = key_marker
            version_marker = page.get("NextVersionIdMarker")
            if version_marker is not None:
                request["VersionIdMarker"] = version_marker

    async def _delete_batch(self, targets: list[ObjectIdentifierTypeDef]) -> None:
        response = await self._call(
            "deleting objects in",
            lambda s3: s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": targets, "Quiet": True}
            ),
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            message = self._credentials.redact(first.get("Message", "no message"))
            raise StorageUnavailable(
                f"S3 deleting objects in {self._where(None)} failed for {len(errors)} of "
                f"{len(targets)} objects; first {first.get('Key')!r}: {message}",
                store_code=first.get("Code", "Unknown"),
            )

    async def check(self) -> None:
        await self._call(
            "listing",
            lambda s3: s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1),
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        if self._s3 is not None:
            self._s3.close()
            self._s3 = None

    # --- development and tests ----------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (for tests and local development)."""
        try:
            await self._call("checking", lambda s3: s3.head_bucket(Bucket=self.bucket))
            return
        except StorageUnavailable as exc:
            if exc.store_code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = self.region

        def create(s3: S3Client) -> object:
            if region == "us-east-1":  # the one region S3 refuses as a location constraint
                return s3.create_bucket(Bucket=self.bucket)
            return s3.create_bucket(
                Bucket=self.bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )

        try:
            await self._call("creating", create)
        except StorageUnavailable as exc:
            if exc.store_code != "BucketAlreadyOwnedByYou":
                raise


class S3Upload:
    """A streaming multipart upload; see the module docstring for what ``flush`` can do."""

    def __init__(self, store: S3Store, key: str, full_key: str) -> None:
        self.key = key
        self._store = store
        self._full_key = full_key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._size = 0
        self._state = "open"  # open | failed | committed | aborted
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        return (
            f"S3Upload(key={self.key!r}, state={self._state!r}, parts={len(self._parts)}, "
            f"buffered={len(self._buffer)})"
        )

    @property
    def parts_uploaded(self) -> int:
        """How many multipart parts have gone up so far."""
        return len(self._parts)

    @property
    def buffered(self) -> int:
        """Bytes written but not uploaded yet (held in memory; not durable)."""
        return len(self._buffer)

    def _require_open(self) -> None:
        if self._state == "failed":
            raise StorageUnavailable(
                f"S3 upload of {self.key!r} failed earlier; abort it", store_code="UploadFailed"
            )
        if self._state != "open":
            raise StorageError(f"upload of {self.key!r} is {self._state}")

    async def _guarded(self, action: str, fn: Callable[[S3Client], _T]) -> _T:
        """Call S3 for this upload; any failure, cancellation included, kills the upload.

        A cancelled caller does not stop the boto3 call already running in its thread, so
        ``abort()`` waits for it before aborting the multipart upload.
        """
        task = asyncio.ensure_future(self._store._call(action, fn, key=self.key))
        task.add_done_callback(_consume_outcome)
        self._inflight = task
        try:
            return await asyncio.shield(task)
        except BaseException:
            self._state = "failed"
            raise

    def _detach(self, size: int) -> bytearray:
        """Take the first ``size`` buffered bytes without copying them (the rest is copied,
        and is smaller than one write)."""
        part = self._buffer
        self._buffer = part[size:]
        del part[size:]
        return part

    async def _upload_part(self, data: bytearray) -> None:
        store = self._store
        bucket, full_key = store.bucket, self._full_key
        if self._upload_id is None:

            def create(s3: S3Client) -> str:
                upload_id = s3.create_multipart_upload(Bucket=bucket, Key=full_key)["UploadId"]
                self._upload_id = upload_id  # set here so abort() sees it even if we are cancelled
                return upload_id

            upload_id = await self._guarded("starting a multipart upload of", create)
        else:
            upload_id = self._upload_id
        number = len(self._parts) + 1
        response = await self._guarded(
            f"uploading part {number} of",
            lambda s3: s3.upload_part(
                Bucket=bucket,
                Key=full_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=_body(data),
                ContentMD5=_content_md5(data),
            ),
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._size += len(data)

    async def write(self, data: bytes | bytearray) -> None:
        async with self._lock:
            self._require_open()
            self._buffer += data
            while len(self._buffer) >= self._store.part_size:
                await self._upload_part(self._detach(self._store.part_size))

    async def flush(self) -> None:
        """Upload the buffer as a part if it is at least 5 MiB; S3 cannot take less."""
        async with self._lock:
            self._require_open()
            if len(self._buffer) >= MIN_PART_SIZE:
                await self._upload_part(self._detach(len(self._buffer)))

    async def commit(self) -> int:
        async with self._lock:
            self._require_open()
            store = self._store
            bucket, full_key = store.bucket, self._full_key
            if self._upload_id is None:
                data = self._detach(len(self._buffer))
                await self._guarded(
                    "storing",
                    lambda s3: s3.put_object(
                        Bucket=bucket, Key=full_key, Body=_body(data), ContentMD5=_content_md5(data)
                    ),
                )
                self._size += len(data)
            else:
                if self._buffer:
                    await self._upload_part(self._detach(len(self._buffer)))
                upload_id, parts = self._upload_id, list(self._parts)
                await self._guarded(
                    "completing the multipart upload of",
                    lambda s3: s3.complete_multipart_upload(
                        Bucket=bucket,
                        Key=full_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    ),
                )
            self._state = "committed"
            return self._size

    async def abort(self) -> None:
        async with self._lock:
            if self._state in ("committed", "aborted"):
                return
            self._state = "failed"  # until S3 confirms: refuse writes, allow another abort
            self._buffer = bytearray()
            if self._inflight is not None and not self._inflight.done():
                await asyncio.wait([self._inflight])
            if self._upload_id is not None:
                store = self._store
                bucket, full_key, upload_id = store.bucket, self._full_key, self._upload_id
                try:
                    await store._call(
                        "aborting the multipart upload of",
                        lambda s3: s3.abort_multipart_upload(
                            Bucket=bucket, Key=full_key, UploadId=upload_id
                        ),
                        key=self.key,
                    )
                except StorageUnavailable as exc:
                    if exc.store_code not in ("NoSuchUpload", "404"):
                        raise  # still abortable: the caller may try again
            self._state = "aborted"
