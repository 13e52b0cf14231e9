"""The ``ObjectStore`` contract, run against both stores.

The file store always runs; the S3 store runs against the session's SeaweedFS. Both are
built with the smallest S3 part size (5 MiB), so the sizes below sit on the multipart
boundaries: nothing, one byte, exactly one part, one part and a byte, and three parts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import pytest

from storage.errors import ObjectNotFound, StorageError
from storage.filestore import FileStore
from storage.s3 import MIN_PART_SIZE
from storage.store import ObjectStore, ObjectUpload
from tests.conftest import S3Server

MIB = 1024 * 1024
KEY = "acme/objects/2f1c9a"


@pytest.fixture(
    params=[
        "file",
        pytest.param("s3", marks=[pytest.mark.integration, pytest.mark.s3]),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "file":
        built: ObjectStore = FileStore(tmp_path / "objects")
    else:
        server: S3Server = request.getfixturevalue("seaweedfs")
        bucket: str = request.getfixturevalue("s3_bucket")
        built = server.store(bucket, "tenant-a", part_size=MIN_PART_SIZE)
    try:
        yield built
    finally:
        await built.close()


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def read_all(store: ObjectStore, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, chunk_size=chunk_size)])


async def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list_keys(prefix)])


async def assert_invisible(store: ObjectStore, key: str) -> None:
    assert not await store.exists(key)
    assert key not in await keys_of(store)
    with pytest.raises(ObjectNotFound):
        await read_all(store, key)


async def write_in_chunks(upload: ObjectUpload, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        await upload.write(data[start : start + chunk])


@pytest.mark.parametrize(
    "size",
    [0, 1, MIN_PART_SIZE, MIN_PART_SIZE + 1, 12 * MIB],
    ids=["empty", "1B", "5MiB", "5MiB+1", "12MiB"],
)
@pytest.mark.parametrize("chunk", [256 * 1024, None], ids=["streamed", "one-write"])
async def test_streamed_upload_round_trips(
    store: ObjectStore, size: int, chunk: int | None
) -> None:
    data = payload(size, seed=size)
    upload = await store.open_upload(KEY)
    await write_in_chunks(upload, data, chunk or max(size, 1))
    await upload.flush()
    await assert_invisible(store, KEY)

    assert await upload.commit() == size

    assert await store.exists(KEY)
    assert await keys_of(store) == [KEY]
    assert await read_all(store, KEY) == data


async def test_flushing_between_writes_keeps_every_byte(store: ObjectStore) -> None:
    data = payload(6 * MIB + 123, seed=7)
    upload = await store.open_upload(KEY)
    for start in range(0, len(data), MIB):
        await upload.write(data[start : start + MIB])
        await upload.flush()  # the gateway flushes every couple of seconds
    assert await upload.commit() == len(data)
    assert await read_all(store, KEY) == data


async def test_read_yields_chunks_no_larger_than_asked(store: ObjectStore) -> None:
    data = payload(10_000, seed=3)
    await store.put(KEY, data)
    chunks = [chunk async for chunk in store.read(KEY, chunk_size=1000)]
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= 1000 for chunk in chunks)
    assert len(chunks) >= 10


async def test_reading_only_a_prefix_of_an_object_releases_it(store: ObjectStore) -> None:
    await store.put(KEY, payload(3 * MIB, seed=4))
    reader = store.read(KEY, chunk_size=64 * 1024)
    assert isinstance(reader, AsyncGenerator)  # so callers can aclose() it
    first = await anext(reader)
    assert len(first) == 64 * 1024
    await reader.aclose()  # filterwarnings=error turns a leaked file/socket into a failure
    assert await read_all(store, KEY) == payload(3 * MIB, seed=4)


async def test_aborted_upload_leaves_nothing(store: ObjectStore) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(payload(MIN_PART_SIZE + 10, seed=1))  # past a part boundary
    await upload.flush()
    await upload.abort()
    await upload.abort()  # safe twice

    await assert_invisible(store, KEY)
    with pytest.raises(StorageError):
        await upload.write(b"more")
    with pytest.raises(StorageError):
        await upload.commit()


async def test_abort_after_commit_keeps_the_object(store: ObjectStore) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(b"kept")
    await upload.commit()
    await upload.abort()
    assert await read_all(store, KEY) == b"kept"
    with pytest.raises(StorageError):
        await upload.write(b"late")


async def test_upload_replaces_an_existing_object_only_on_commit(store: ObjectStore) -> None:
    await store.put(KEY, b"old version")
    upload = await store.open_upload(KEY)
    await upload.write(b"new version")
    await upload.flush()
    assert await read_all(store, KEY) == b"old version"
    await upload.commit()
    assert await read_all(store, KEY) == b"new version"


async def test_missing_object_is_not_found(store: ObjectStore) -> None:
    assert not await store.exists("acme/objects/missing")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "acme/objects/missing")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "trailing/",
        "a//b",
        "../escape",
        "a/../b",
        "./a",
        ".hidden",
        "a b",
        "ä",
        "k" * 513,
    ],
)
async def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await store.open_upload(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        await store.exists(key)
    with pytest.raises(ValueError, match="invalid object key"):
        await read_all(store, key)
    with pytest.raises(ValueError, match="invalid object key"):
        await store.delete_many(["acme/objects/fine", key])


async def test_list_keys_filters_by_prefix(store: ObjectStore) -> None:
    keys = ["acme/objects/a1", "acme/objects/a2", "acme/objects/b1", "acme/other", "beta/x"]
    for key in keys:
        await store.put(key, key.encode())
    assert await keys_of(store) == keys
    assert await keys_of(store, "acme/") == keys[:4]
    assert await keys_of(store, "acme/objects/a") == keys[:2]
    assert await keys_of(store, "acme/objects/") == keys[:3]
    assert await keys_of(store, "acme/ob") == keys[:3]
    assert await keys_of(store, "be") == ["beta/x"]
    assert await keys_of(store, "gamma/") == []
    assert await keys_of(store, "../") == []


async def test_delete_many_removes_only_the_named_keys(store: ObjectStore) -> None:
    for key in ("t/a", "t/b", "t/c"):
        await store.put(key, b"x")
    await store.delete_many(["t/a", "t/c", "t/never-existed", "t/a"])
    assert await keys_of(store) == ["t/b"]
    assert not await store.exists("t/a")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "t/c")


async def test_delete_many_is_idempotent(store: ObjectStore) -> None:
    await store.delete_many([])
    await store.delete_many(["t/absent", "u/v/w/absent"])
    await store.put("t/a", b"x")
    await store.delete_many(["t/a"])
    await store.delete_many(["t/a"])
    assert await keys_of(store) == []


async def test_delete_many_takes_more_than_a_thousand_keys(store: ObjectStore) -> None:
    keys = [f"bulk/{index:05d}" for index in range(1001)]
    await asyncio.gather(*(store.put(key, b"%d" % index) for index, key in enumerate(keys)))
    await store.put("keep/me", b"!")
    assert len(await keys_of(store, "bulk/")) == 1001

    await store.delete_many(keys)

    assert await keys_of(store) == ["keep/me"]


async def test_concurrent_uploads_do_not_mix(store: ObjectStore) -> None:
    async def record(index: int) -> None:
        upload = await store.open_upload(f"calls/{index:03d}")
        for part in range(5):
            await upload.write(b"%03d:%d;" % (index, part))
            await asyncio.sleep(0)
            await upload.flush()
        await upload.commit()

    await asyncio.gather(*(record(index) for index in range(40)))
    for index in range(40):
        expected = b"".join(b"%03d:%d;" % (index, part) for part in range(5))
        assert await read_all(store, f"calls/{index:03d}") == expected


async def test_check_passes_on_a_working_store(store: ObjectStore) -> None:
    await store.check()


async def test_closed_store_refuses_work(store: ObjectStore) -> None:
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.put(KEY, b"x")
