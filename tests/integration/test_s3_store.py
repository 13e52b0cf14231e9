"""S3-specific behaviour of ``S3Store`` against a real SeaweedFS: multipart mechanics, batched
and versioned deletion, S3 error codes, and that credentials never leak into errors."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from gateway.errors import http_status
from storage.errors import ObjectNotFound, StorageUnavailable
from storage.s3 import DELETE_CONCURRENCY, MAX_DELETE_BATCH, MIN_PART_SIZE, S3Store, S3Upload
from tests.conftest import S3Server

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.integration, pytest.mark.s3]

MIB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(store: S3Store, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


def open_multipart_uploads(admin: S3Client, bucket: str) -> list[str]:
    return [item["Key"] for item in admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def versions_left(admin: S3Client, bucket: str, key: str) -> list[tuple[str, str]]:
    listing = admin.list_object_versions(Bucket=bucket, Prefix=key)
    entries = [("version", v["VersionId"]) for v in listing.get("Versions", []) if v["Key"] == key]
    entries += [
        ("marker", m["VersionId"]) for m in listing.get("DeleteMarkers", []) if m["Key"] == key
    ]
    return entries


def error_text(error: BaseException) -> str:
    """Everything a log line or traceback of ``error`` could show, causes included."""
    return "".join(traceback.format_exception(error)) + repr(error)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def big_part_store(seaweedfs: S3Server, s3_bucket: str) -> AsyncIterator[S3Store]:
    store = seaweedfs.store(s3_bucket, part_size=8 * MIB)
    try:
        yield store
    finally:
        await store.close()


# --- multipart mechanics ----------------------------------------------------------------------


async def test_small_object_is_one_put_without_multipart(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    upload = await s3_store.open_upload("acme/small")
    assert isinstance(upload, S3Upload)
    await upload.write(payload(4 * MIB))
    await upload.flush()  # under 5 MiB: S3 cannot take it as a part, so nothing goes up
    assert upload.parts_uploaded == 0
    assert open_multipart_uploads(s3_admin, s3_bucket) == []
    await upload.commit()
    assert open_multipart_uploads(s3_admin, s3_bucket) == []
    assert await read_all(s3_store, "acme/small") == payload(4 * MIB)


async def test_parts_go_up_as_the_buffer_fills_and_memory_stays_bounded(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    data = payload(12 * MIB + 5, seed=2)
    upload = await s3_store.open_upload("acme/long-call")
    assert isinstance(upload, S3Upload)
    write = 64 * 1024
    for start in range(0, len(data), write):
        await upload.write(data[start : start + write])
        assert upload.buffered < s3_store.part_size  # never holds more than a part
    assert upload.parts_uploaded == 2
    assert upload.buffered == 2 * MIB + 5
    # Started but not complete: S3 lists the upload, but no object.
    assert open_multipart_uploads(s3_admin, s3_bucket) == ["tenant-a/acme/long-call"]
    assert not await s3_store.exists("acme/long-call")

    assert await upload.commit() == len(data)
    assert upload.parts_uploaded == 3
    assert open_multipart_uploads(s3_admin, s3_bucket) == []
    head = s3_admin.head_object(Bucket=s3_bucket, Key="tenant-a/acme/long-call")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a three-part multipart object
    assert await read_all(s3_store, "acme/long-call") == data


async def test_flush_uploads_a_part_once_five_mib_are_buffered(
    big_part_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    upload = await big_part_store.open_upload("acme/flushed")
    assert isinstance(upload, S3Upload)
    await upload.write(payload(6 * MIB, seed=5))  # less than the 8 MiB part size
    assert upload.parts_uploaded == 0
    await upload.flush()  # but more than S3's minimum part: flush sends it
    assert upload.parts_uploaded == 1
    assert upload.buffered == 0
    await upload.write(b"tail")
    await upload.flush()  # 4 bytes cannot be a part; stays buffered
    assert upload.parts_uploaded == 1
    assert await upload.commit() == 6 * MIB + 4
    assert await read_all(big_part_store, "acme/flushed") == payload(6 * MIB, seed=5) + b"tail"
    assert open_multipart_uploads(s3_admin, s3_bucket) == []


async def test_abort_removes_the_multipart_upload(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    upload = await s3_store.open_upload("acme/dropped")
    await upload.write(payload(MIN_PART_SIZE + 1))
    assert open_multipart_uploads(s3_admin, s3_bucket) == ["tenant-a/acme/dropped"]
    await upload.abort()
    assert open_multipart_uploads(s3_admin, s3_bucket) == []
    await upload.abort()
    assert not await s3_store.exists("acme/dropped")


async def test_abort_of_a_cancelled_write_leaves_no_multipart_upload(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    """Cancelled while S3 creates the multipart upload: the call finishes in its thread
    anyway, and abort() must wait for it and abort what it created."""
    entered, release = threading.Event(), threading.Event()

    def hold(**_: object) -> None:
        entered.set()
        release.wait(10)

    s3_store._client().meta.events.register("after-call.s3.CreateMultipartUpload", hold)
    upload = await s3_store.open_upload("acme/cancelled")
    writing = asyncio.create_task(upload.write(payload(MIN_PART_SIZE)))
    assert await asyncio.to_thread(entered.wait, 10)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing

    aborting = asyncio.create_task(upload.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()
    release.set()
    await aborting
    assert open_multipart_uploads(s3_admin, s3_bucket) == []
    assert not await s3_store.exists("acme/cancelled")


async def test_keys_live_under_the_prefix(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    await s3_store.put("acme/objects/1", b"one")
    s3_admin.put_object(Bucket=s3_bucket, Key="elsewhere/objects/2", Body=b"two")
    s3_admin.put_object(Bucket=s3_bucket, Key="tenant-a/not a valid key", Body=b"?")
    listed = s3_admin.list_objects_v2(Bucket=s3_bucket)
    assert sorted(item["Key"] for item in listed.get("Contents", [])) == [
        "elsewhere/objects/2",
        "tenant-a/acme/objects/1",
        "tenant-a/not a valid key",
    ]
    assert [key async for key in s3_store.list_keys()] == ["acme/objects/1"]
    assert not await s3_store.exists("objects/2")


# --- deletion -----------------------------------------------------------------------------------


async def _put_all(store: S3Store, keys: list[str]) -> None:
    await asyncio.gather(*(store.put(key, key.encode()) for key in keys))


async def test_listing_pages_and_delete_many_sends_at_most_a_thousand_keys_per_request(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    keys = [f"bulk/{index:04d}" for index in range(1500)]
    await _put_all(s3_store, keys)
    events = s3_store._client().meta.events
    pages: list[str] = []
    events.register("provide-client-params.s3.ListObjectsV2", lambda **_: pages.append("page"))
    # Listing pages too: SeaweedFS, like S3, returns at most 1000 keys per page.
    assert [key async for key in s3_store.list_keys("bulk/")] == keys
    assert len(pages) == 2
    batches: list[int] = []

    def count(params: dict[str, Any], **_: object) -> None:
        batches.append(len(params["Delete"]["Objects"]))

    events.register("provide-client-params.s3.DeleteObjects", count)

    await s3_store.delete_many(keys)

    # Split evenly over DELETE_CONCURRENCY requests in flight, none over 1000 keys.
    assert batches == [375] * DELETE_CONCURRENCY
    assert s3_admin.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
    # A longer list: full requests of 1000, still DELETE_CONCURRENCY at a time.
    many = [f"bulk/{index:05d}" for index in range(4500)]
    await _put_all(s3_store, many)
    batches.clear()
    await s3_store.delete_many(many)
    assert batches == [MAX_DELETE_BATCH] * 4 + [500]
    assert s3_admin.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


async def test_delete_in_a_versioned_bucket_removes_every_version_and_marker(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    def left(key: str) -> list[str]:
        return sorted(kind for kind, _ in versions_left(s3_admin, s3_bucket, f"tenant-a/{key}"))

    await s3_store.put("acme/from-before", b"unversioned")  # becomes version "null"
    s3_admin.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    await s3_store.put("acme/from-before", b"versioned")
    for version in range(3):  # written, then overwritten twice
        await s3_store.put("acme/rewritten", b"v%d" % version)
    await s3_store.put("acme/deleted-plainly", b"x")
    # A delete without a version id only stacks a delete marker on top of the audio.
    s3_admin.delete_object(Bucket=s3_bucket, Key="tenant-a/acme/deleted-plainly")
    await s3_store.put("acme/kept", b"k")
    assert left("acme/from-before") == ["version", "version"]
    assert left("acme/rewritten") == ["version", "version", "version"]
    assert left("acme/deleted-plainly") == ["marker", "version"]

    await s3_store.delete_many(
        ["acme/from-before", "acme/rewritten", "acme/deleted-plainly", "acme/absent"]
    )

    assert left("acme/from-before") == []
    assert left("acme/rewritten") == []
    assert left("acme/deleted-plainly") == []
    assert left("acme/kept") == ["version"]
    assert await read_all(s3_store, "acme/kept") == b"k"


async def test_delete_reports_per_key_errors_with_their_s3_code(
    s3_store: S3Store, s3_admin: S3Client, s3_bucket: str
) -> None:
    await s3_store.put("acme/locked", b"x")

    def fail_one(parsed: dict[str, Any], **_: object) -> None:
        # DeleteObjects answers 200 and lists per-key failures; make the server "refuse" one.
        parsed.setdefault("Errors", []).append(
            {"Key": "tenant-a/acme/locked", "Code": "AccessDenied", "Message": "Access Denied"}
        )

    s3_store._client().meta.events.register("after-call.s3.DeleteObjects", fail_one)
    with pytest.raises(StorageUnavailable) as caught:
        await s3_store.delete_many(["acme/locked"])
    assert caught.value.store_code == "AccessDenied"
    assert "tenant-a/acme/locked" in str(caught.value)


# --- errors -------------------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match_and_never_echoed(
    seaweedfs: S3Server, s3_bucket: str
) -> None:
    wrong_secret = "wrong-" + seaweedfs.secret_key[::-1]
    store = S3Store(
        s3_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        access_key=seaweedfs.access_key,
        secret_key=wrong_secret,
        max_attempts=1,
    )
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await store.check()
        assert caught.value.store_code == "SignatureDoesNotMatch"
        with pytest.raises(StorageUnavailable) as on_put:
            await store.put("acme/x", b"x")
        assert on_put.value.store_code == "SignatureDoesNotMatch"
        for error in (caught.value, on_put.value):
            text = error_text(error)
            assert wrong_secret not in text
            assert seaweedfs.secret_key not in text
        assert wrong_secret not in repr(store)
    finally:
        await store.close()


async def test_unknown_access_key_is_invalid_access_key_id(
    seaweedfs: S3Server, s3_bucket: str
) -> None:
    store = S3Store(
        s3_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        access_key="AKIDOESNOTEXIST00000",
        secret_key="also-not-a-secret-anyone-has",
        max_attempts=1,
    )
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await store.check()
        assert caught.value.store_code == "InvalidAccessKeyId"
        assert "also-not-a-secret-anyone-has" not in error_text(caught.value)
    finally:
        await store.close()


async def test_unsigned_requests_are_refused(seaweedfs: S3Server, s3_bucket: str) -> None:
    """The fixture promises signature auth: without a signature, nothing gets in."""
    from botocore import UNSIGNED
    from botocore.exceptions import ClientError

    anonymous = seaweedfs.client(signature_version=UNSIGNED)
    try:
        with pytest.raises(ClientError) as caught:
            anonymous.put_object(Bucket=s3_bucket, Key="anonymous", Body=b"x")
        assert caught.value.response["Error"]["Code"] == "AccessDenied"
        with pytest.raises(ClientError):
            anonymous.list_objects_v2(Bucket=s3_bucket)
    finally:
        anonymous.close()


async def test_missing_bucket_is_no_such_bucket(seaweedfs: S3Server) -> None:
    store = seaweedfs.store("cv-no-such-bucket", max_attempts=1)
    try:
        attempts: list[Callable[[], Awaitable[object]]] = [
            store.check,
            lambda: store.put("acme/x", b"x"),
            lambda: read_all(store, "acme/x"),
            lambda: store.delete_many(["acme/x"]),
        ]
        for attempt in attempts:
            with pytest.raises(StorageUnavailable) as caught:
                await attempt()
            assert caught.value.store_code == "NoSuchBucket"
            assert not isinstance(caught.value, ObjectNotFound)
    finally:
        await store.close()


async def test_unreachable_endpoint_is_storage_unavailable(seaweedfs: S3Server) -> None:
    store = S3Store(
        "cv-anything",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        max_attempts=1,
        connect_timeout=1,
    )
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await store.check()
        assert caught.value.store_code == "EndpointConnectionError"
        assert http_status(caught.value) == 503
        assert seaweedfs.secret_key not in error_text(caught.value)
        assert seaweedfs.access_key not in error_text(caught.value)
    finally:
        await store.close()


# --- set-up helpers -----------------------------------------------------------------------------


async def test_ensure_bucket_creates_once(seaweedfs: S3Server, s3_admin: S3Client) -> None:
    store = seaweedfs.store("cv-ensured-bucket")
    try:
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.put("acme/x", b"x")
        await store.check()
    finally:
        await store.close()
        s3_admin.delete_bucket(Bucket="cv-ensured-bucket")


async def test_from_url_reaches_the_same_objects(
    seaweedfs: S3Server, s3_store: S3Store, s3_bucket: str
) -> None:
    await s3_store.put("acme/x", b"via constructor")
    store = S3Store.from_url(
        f"s3://{s3_bucket}/tenant-a/",
        endpoint_url=seaweedfs.endpoint_url,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
    )
    try:
        assert await read_all(store, "acme/x") == b"via constructor"
    finally:
        await store.close()
