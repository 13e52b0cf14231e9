"""The spool: local durability for objects that are still being written (live call tracks).

Promise 7 says acknowledged audio survives a crash, a storage outage or a dropped
connection, losing at most one flush interval. An object store cannot promise that on its
own: S3 keeps nothing of a multipart upload below 5 MiB, and no store lets a new process
continue an upload that a dead one started. So a live track's *sealed* bytes go to a file
here (``<data dir>/spool/<object key>.sealed``, mode 0600) and every ``flush`` fsyncs it;
the whole object is published to the store when it is committed, and the file removed.

After a crash, or when the store was down at commit time, the file is still here: the vault
opens what verifies (``ObjectReader.salvage``), closes it (``ObjectWriter.resume``) and
publishes it (``MediaVault.recover_spooled``). Only ciphertext is ever written here.

File I/O runs in the spool's own small thread pool (an fsync can take milliseconds, and a
slow disk must not starve the loop's default executor, which others share).

**The bound.** During a store outage the spool grows with every call. It counts the bytes it
holds (kept in step with each write and removal, not by walking the directory) and is
``full`` once they reach ``max_bytes``: the gateway then refuses *new* calls (503
``spool_full``), while the calls already recording write on without a limit, so that no
acknowledged audio is lost to the bound (what stops them is only the disk itself; the bound's
default leaves half the free space for them). **The store's state.** A publication that the
store refused marks it ``store_down``: until a publication or a store check succeeds again,
committing a live object does not try the store (each try can take seconds of retries) but
leaves the closed file for the publisher, which retries on its own schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from crypto.errors import CallvaultError
from storage.errors import StorageUnavailable
from storage.store import ObjectStore, check_key

SUFFIX = ".sealed"
CHUNK = 1 << 20

_T = TypeVar("_T")


class Spool:
    """Spooled uploads of one node, and what is left of them after a crash."""

    def __init__(
        self,
        root: Path,
        store: ObjectStore,
        *,
        max_bytes: int | None = None,
        max_workers: int = 4,
    ) -> None:
        """``max_bytes``: the bound at which ``full`` turns true (``None``: never)."""
        self.root = root
        self._store = store
        self.max_bytes = max_bytes
        self._open: set[str] = set()
        # What each spool file holds, counted as it is written: the files a crash left are
        # measured once, here, before the process serves.
        self._sizes: dict[str, int] = dict(_measure(root))
        self.store_down = False
        """A publication failed in the store, and none (nor a store check) succeeded since."""
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="spool")

    @property
    def held_bytes(self) -> int:
        """The bytes every spool file holds, live or waiting for the store."""
        return sum(self._sizes.values())

    @property
    def pending_bytes(self) -> int:
        """The bytes of spool files no live upload writes: closed objects that wait to be
        published (the store was down at their commit) or that a crash left."""
        return sum(size for key, size in self._sizes.items() if key not in self._open)

    def pending(self) -> list[str]:
        """The keys of those files (``pending_bytes``): what the publisher has to do."""
        return sorted(key for key in self._sizes if key not in self._open)

    @property
    def full(self) -> bool:
        """Whether the spool holds ``max_bytes`` or more: new calls are refused."""
        return self.max_bytes is not None and self.held_bytes >= self.max_bytes

    async def check_store(self) -> None:
        """Ask the store whether it answers (``StorageUnavailable`` if not); if it does,
        commits try it again."""
        await self._store.check()
        self.store_down = False

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run blocking file I/O ``fn(*args)`` in the spool's pool; an ``OSError`` (a full
        or failing disk) comes back as ``StorageUnavailable``."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except OSError as e:
            raise StorageUnavailable(
                f"the spool failed: {e.strerror or e}", store_code=type(e).__name__
            ) from e

    async def close(self) -> None:
        """Wait for pending file I/O and stop the pool."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def path(self, key: str) -> Path:
        return self.root / (check_key(key) + SUFFIX)

    async def open_upload(self, key: str) -> SpooledUpload:
        """Start spooling a new object (its file must not exist yet)."""
        path = self.path(key)
        handle = await self.run(_create, path)
        self._open.add(key)
        self._sizes[key] = 0
        return SpooledUpload(self, key, handle)

    def is_open(self, key: str) -> bool:
        """Whether a live upload of this process is writing the key (not left over)."""
        return key in self._open

    def keys(self) -> list[str]:
        """The keys of every spooled object on disk, live or left over."""
        if not self.root.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()[: -len(SUFFIX)]
            for path in _files(self.root)
            if path.name.endswith(SUFFIX)
        )

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        """The spooled bytes of ``key`` in chunks (a spool file can be large)."""
        source = await self.run(_open_for_reading, self.path(key))
        try:
            while chunk := await self.run(source.read, CHUNK):
                yield chunk
        finally:
            await self.run(source.close)

    async def publish(self, key: str, *, length: int | None = None, tail: bytes = b"") -> int:
        """Upload the spooled object (its first ``length`` bytes, then ``tail``) to the
        store under ``key``; return the stored size. The file stays: the caller discards
        it once the catalog has marked the object committed, so that a catalog that fails
        in between leaves the object to recovery (which publishes it again) rather than
        stored but never committed, with nothing left to recover it from."""
        source = await self.run(_open_for_reading, self.path(key))
        try:
            try:
                upload = await self._store.open_upload(key)
            except CallvaultError:
                self.store_down = True
                raise
            try:
                remaining = length
                while remaining is None or remaining > 0:
                    size = CHUNK if remaining is None else min(CHUNK, remaining)
                    chunk = await self.run(source.read, size)
                    if not chunk:
                        break
                    await upload.write(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
                if tail:
                    await upload.write(tail)
                stored = await upload.commit()
            except BaseException as e:
                if isinstance(e, CallvaultError):
                    self.store_down = True
                await upload.abort()
                raise
        finally:
            await self.run(source.close)
        self.store_down = False
        return stored

    async def discard(self, key: str) -> None:
        """Remove a spool file (idempotent)."""
        self._open.discard(key)
        await self.run(_unlink, self.path(key))
        self._sizes.pop(key, None)

    def _closed(self, key: str) -> None:
        self._open.discard(key)

    def _wrote(self, key: str, size: int) -> None:
        self._sizes[key] = self._sizes.get(key, 0) + size


class SpooledUpload:
    """An ``ObjectUpload`` whose bytes are durable on local disk at every ``flush`` and
    reach the store at ``commit``."""

    def __init__(self, spool: Spool, key: str, handle: BinaryIO) -> None:
        self._spool = spool
        self._key = key
        self._handle: BinaryIO | None = handle

    async def write(self, data: bytes | bytearray) -> None:
        await self._spool.run(self._file().write, data)
        self._spool._wrote(self._key, len(data))

    async def flush(self) -> None:
        await self._spool.run(_sync, self._file())

    async def commit(self) -> int:
        """Close the spool file and publish it. The key stays "open" until ``done`` (or
        ``abandon``), so a recovery pass never publishes it at the same time; if the store
        fails, or is known to be down (``Spool.store_down``: then it is not tried), the
        complete file is left for recovery."""
        handle = self._file()
        self._handle = None
        try:
            await self._spool.run(_sync_and_close, handle)
            if self._spool.store_down:
                raise StorageUnavailable(
                    f"the object store is down; {self._key} waits in the spool to be published"
                )
            return await self._spool.publish(self._key)
        except BaseException:
            self._spool._closed(self._key)
            raise

    async def done(self) -> None:
        """The catalog has marked the object committed: the spool file goes. Should that
        fail, the file is left over, and recovery discards it (its object is committed)."""
        try:
            await self._spool.discard(self._key)
        except StorageUnavailable:
            self._spool._closed(self._key)

    async def abandon(self) -> None:
        """Stop writing after a failed write: close the file and leave it for recovery,
        which publishes the part that verifies (nothing may be appended after a failed
        write, or the object would have a hole its reader refuses)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            with contextlib.suppress(StorageUnavailable):
                await self._spool.run(handle.close)
        self._spool._closed(self._key)

    async def abort(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            await self._spool.run(handle.close)
        await self._spool.discard(self._key)

    def _file(self) -> BinaryIO:
        if self._handle is None:
            raise StorageUnavailable(f"the spooled upload of {self._key} is closed")
        return self._handle


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise StorageUnavailable(
            f"cannot create the spool file for {path.name}: {e.strerror or e}",
            store_code=type(e).__name__,
        ) from e
    _sync_directory(path.parent)  # the file's existence survives a crash too
    return os.fdopen(fd, "wb")


def _open_for_reading(path: Path) -> BinaryIO:
    return path.open("rb")


def _sync(handle: BinaryIO) -> None:
    try:
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as e:
        raise StorageUnavailable(
            f"the spool could not be synced: {e.strerror or e}", store_code=type(e).__name__
        ) from e


def _sync_and_close(handle: BinaryIO) -> None:
    try:
        _sync(handle)
    finally:
        handle.close()


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _measure(root: Path) -> Iterator[tuple[str, int]]:
    """(key, size) of every spool file under ``root``."""
    if root.is_dir():
        for path in _files(root):
            if path.name.endswith(SUFFIX):
                key = path.relative_to(root).as_posix()[: -len(SUFFIX)]
                yield key, path.stat().st_size


def _files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file():
            yield path
