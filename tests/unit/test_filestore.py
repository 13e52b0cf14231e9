"""``FileStore``: atomic publish, durability calls, permissions, errno translation and the
on-disk layout. The behaviour shared with the S3 store is in
``tests/integration/test_store_contract.py``, which always runs the file store too."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.errors import http_status
from storage.errors import ObjectNotFound, StorageError, StorageUnavailable
from storage.filestore import STAGING_DIR, FileStore

KEY = "acme/objects/2f1c9a"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    built = FileStore(tmp_path / "objects")
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The most permissive umask, so modes prove the store sets them itself."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def staged(store: FileStore) -> list[Path]:
    return sorted(store.staging.iterdir()) if store.staging.exists() else []


async def read_all(store: FileStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- atomic publish ---------------------------------------------------------------------------


async def test_nothing_is_under_the_final_name_until_commit(store: FileStore) -> None:
    final = store.root / "acme" / "objects" / "2f1c9a"
    upload = await store.open_upload(KEY)
    await upload.write(b"a" * 1000)
    await upload.flush()
    assert not final.exists()
    assert [path.suffix for path in staged(store)] == [".part"]

    await upload.commit()

    assert final.read_bytes() == b"a" * 1000
    assert staged(store) == []


async def test_flush_puts_the_written_bytes_in_the_staging_file(store: FileStore) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(b"first ")
    await upload.write(b"second")
    await upload.flush()
    [temp] = staged(store)
    assert temp.read_bytes() == b"first second"
    await upload.abort()


async def test_a_crash_before_commit_leaves_no_object(tmp_path: Path) -> None:
    """A process that dies between flush and commit (no abort, no close, no finally)."""
    root = tmp_path / "objects"
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from pathlib import Path
        from storage.filestore import FileStore

        async def main() -> None:
            store = FileStore(Path(sys.argv[1]))
            upload = await store.open_upload("acme/objects/crashed")
            await upload.write(b"acknowledged audio")
            await upload.flush()
            await upload.write(b" never flushed")
            os._exit(0)

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(root))
    assert await asyncio.wait_for(process.wait(), timeout=60) == 0

    store = FileStore(root)
    try:
        assert not (root / "acme" / "objects" / "crashed").exists()
        assert not await store.exists("acme/objects/crashed")
        assert [key async for key in store.list_keys()] == []
        with pytest.raises(ObjectNotFound):
            await read_all(store, "acme/objects/crashed")
        # What was flushed survived in staging, for whoever recovers it.
        [temp] = staged(store)
        assert temp.read_bytes() == b"acknowledged audio"

        written = temp.stat().st_mtime
        assert await store.discard_stale_uploads(older_than=3600, now=written + 60) == 0
        assert staged(store) == [temp]
        assert await store.discard_stale_uploads(older_than=3600, now=written + 3601) == 1
        assert staged(store) == []
    finally:
        await store.close()


async def test_discard_stale_uploads_spares_recent_ones(store: FileStore) -> None:
    old = await store.open_upload("acme/objects/old")
    await old.flush()
    recent = await store.open_upload("acme/objects/recent")
    await recent.write(b"live")
    await recent.flush()
    [old_temp] = [path for path in staged(store) if path != _temp_of(store, recent)]
    now = old_temp.stat().st_mtime
    os.utime(old_temp, (now - 7200, now - 7200))

    assert await store.discard_stale_uploads(older_than=3600, now=now) == 1

    assert staged(store) == [_temp_of(store, recent)]
    assert await recent.commit() == 4
    await old.abort()  # its file is gone already; aborting is still fine


def _temp_of(store: FileStore, upload: object) -> Path:
    temp = upload._temp  # type: ignore[attr-defined]
    assert isinstance(temp, Path)
    return temp


# --- durability -------------------------------------------------------------------------------


async def test_flush_and_commit_fsync_the_file_and_its_directories(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[int, bool]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((info.st_ino, stat.S_ISDIR(info.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    upload = await store.open_upload(KEY)
    [temp] = staged(store)
    file_inode = temp.stat().st_ino
    staging_inode = store.staging.stat().st_ino

    await upload.write(b"audio")
    await upload.flush()
    assert (file_inode, False) in synced
    assert (staging_inode, True) in synced  # the new file's directory entry, once

    synced.clear()
    await upload.write(b" more")
    await upload.flush()
    assert synced == [(file_inode, False)]

    synced.clear()
    await upload.commit()
    final_dir = store.root / "acme" / "objects"
    assert (file_inode, False) in synced
    assert (final_dir.stat().st_ino, True) in synced  # the rename
    assert ((store.root / "acme").stat().st_ino, True) in synced  # a directory made for it
    assert (store.root.stat().st_ino, True) in synced


async def test_writes_are_batched_until_the_buffer_fills(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects", write_buffer=1000)
    try:
        upload = await store.open_upload(KEY)
        [temp] = staged(store)
        await upload.write(b"x" * 600)
        assert temp.stat().st_size == 0  # still in memory: no thread hop per small write
        await upload.write(b"x" * 600)
        assert temp.stat().st_size == 1200
        await upload.commit()
    finally:
        await store.close()


async def test_abort_after_a_cancelled_flush_waits_for_its_thread(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real_fsync(fd)

    upload = await store.open_upload(KEY)
    await upload.write(b"audio")
    monkeypatch.setattr(os, "fsync", slow_fsync)
    flushing = asyncio.create_task(upload.flush())
    assert await asyncio.to_thread(entered.wait, 10)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing

    # The thread still holds the descriptor: abort must not close it from under it.
    aborting = asyncio.create_task(upload.abort())
    await asyncio.sleep(0.05)
    assert not aborting.done()
    release.set()
    await aborting
    assert staged(store) == []
    with pytest.raises(StorageError):
        await upload.write(b"more")


# --- errors -----------------------------------------------------------------------------------


async def test_a_full_disk_is_storage_unavailable_enospc(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(b"audio")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageUnavailable) as caught:
        await upload.flush()
    assert caught.value.store_code == "ENOSPC"
    assert http_status(caught.value) == 503
    monkeypatch.undo()

    # The upload is dead even though the disk has room again.
    with pytest.raises(StorageUnavailable):
        await upload.write(b"more")
    with pytest.raises(StorageUnavailable):
        await upload.commit()
    await upload.abort()
    assert staged(store) == []
    assert not await store.exists(KEY)


async def test_a_failed_fsync_is_never_retried_into_a_commit(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(b"audio")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StorageUnavailable) as caught:
        await upload.flush()
    assert caught.value.store_code == "EIO"
    monkeypatch.undo()
    # A second fsync may report success for pages the kernel already dropped.
    with pytest.raises(StorageUnavailable):
        await upload.flush()
    with pytest.raises(StorageUnavailable):
        await upload.commit()
    await upload.abort()
    assert not await store.exists(KEY)


async def test_a_key_below_an_object_fails_cleanly(store: FileStore) -> None:
    await store.put("acme/a", b"object")
    with pytest.raises(StorageUnavailable) as caught:
        await store.put("acme/a/b", b"cannot: acme/a is a file")
    assert caught.value.store_code == "ENOTDIR"
    assert staged(store) == []
    assert await read_all(store, "acme/a") == b"object"


async def test_check_fails_when_the_root_is_not_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.write_bytes(b"not a directory")
    store = FileStore(root)
    try:
        with pytest.raises(StorageUnavailable) as caught:
            await store.check()
        assert caught.value.store_code == "EEXIST"
    finally:
        await store.close()


async def test_check_creates_a_missing_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "deep" / "objects")
    try:
        await store.check()
        assert store.root.is_dir()
        assert staged(store) == []  # the probe file is gone
    finally:
        await store.close()


async def test_committing_twice_is_refused(store: FileStore) -> None:
    upload = await store.open_upload(KEY)
    await upload.commit()
    with pytest.raises(StorageError, match="committed"):
        await upload.commit()
    assert await read_all(store, KEY) == b""


# --- layout -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_umask")
async def test_files_are_0600_and_directories_0700(store: FileStore) -> None:
    upload = await store.open_upload(KEY)
    await upload.write(b"x")
    await upload.flush()
    [temp] = staged(store)
    assert mode(temp) == 0o600
    await upload.commit()
    await store.put("acme/objects/other", b"y")

    assert mode(store.root / "acme" / "objects" / "2f1c9a") == 0o600
    assert mode(store.root / "acme" / "objects" / "other") == 0o600
    for directory in (
        store.root,
        store.staging,
        store.root / "acme",
        store.root / "acme" / "objects",
    ):
        assert mode(directory) == 0o700, directory


async def test_delete_prunes_emptied_directories_but_not_the_root(store: FileStore) -> None:
    for key in ("acme/objects/a", "acme/objects/b", "acme/other/c"):
        await store.put(key, b"x")
    await store.check()  # makes the staging directory

    await store.delete_many(["acme/objects/a"])
    assert (store.root / "acme" / "objects").is_dir()
    await store.delete_many(["acme/objects/b"])
    assert not (store.root / "acme" / "objects").exists()
    assert (store.root / "acme").is_dir()
    await store.delete_many(["acme/other/c", "gone/deep/key"])
    assert sorted(path.name for path in store.root.iterdir()) == [STAGING_DIR]

    await store.put("acme/objects/a", b"again")  # directories come back on demand
    assert await read_all(store, "acme/objects/a") == b"again"


async def test_list_keys_skips_staging_and_stray_files(store: FileStore) -> None:
    await store.put("acme/objects/a", b"x")
    upload = await store.open_upload("acme/objects/pending")
    await upload.flush()
    (store.root / "stray file").write_bytes(b"?")
    (store.root / "acme" / ".editor-swap").write_bytes(b"?")
    (store.root / "acme" / "objects" / "sub").mkdir()

    assert [key async for key in store.list_keys()] == ["acme/objects/a"]
    assert [key async for key in store.list_keys(".st")] == []
    await upload.abort()


async def test_directories_are_not_objects(store: FileStore) -> None:
    await store.put("acme/objects/a", b"x")
    assert not await store.exists("acme/objects")
    with pytest.raises(ObjectNotFound):
        await read_all(store, "acme/objects")
    await store.delete_many(["acme/objects"])  # not an object: nothing to delete
    assert await store.exists("acme/objects/a")


async def test_list_keys_walks_in_batches(store: FileStore) -> None:
    keys = sorted(f"t{tenant}/objects/{index:04d}" for tenant in range(3) for index in range(400))
    await asyncio.gather(*(store.put(key, b"") for key in keys))
    assert [key async for key in store.list_keys()] == keys  # 1200 keys: two batches
    assert [key async for key in store.list_keys("t1/")] == keys[400:800]


def test_repr_names_the_root(tmp_path: Path) -> None:
    assert repr(FileStore(tmp_path)) == f"FileStore(root={str(tmp_path)!r})"
