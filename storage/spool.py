"""The spool: local durability for objects that are still being written (live call tracks).

Promise 7 says acknowledged audio survives a crash, a storage outage or a dropped
connection, losing at most one flush interval. An object store cannot promise that on its
own: S3 keeps nothing of a multipart upload below 5 MiB, and no store lets a new process
continue an upload that a dead one started. So a live track's *sealed* bytes go to a file
here (``<data dir>/spool/<object key>.sealed``, mode 0600) and every ``flush`` fsyncs it;
the whole object is published to the store when it is committed, and the file removed.

After a crash, or when the store was down at commit time, the file is still here: the vault
opens what verifies (``ObjectReader.salvage``), closes it (``ObjectWriter.resume``) and
publishes it (``MediaVault.recover_spooled``); a file that does not verify is moved to
``<spool>/.quarantine`` (``Spool.quarantine``) for an operator, and no longer counted. Only
ciphertext is ever written here.

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
leaves the closed file for the publisher, which retries on its own schedule. Only the store's
``StorageUnavailable`` counts: an error about one object, or reading the spool file, does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from storage.errors import StorageUnavailable
from storage.store import ObjectStore, check_key

SUFFIX = ".sealed"
CHUNK = 1 << 20
QUARANTINE = ".quarantine"
"""The folder in the spool where files that do not verify are moved (no tenant id, so no
object key, starts with a dot)."""

log = logging.getLogger(__name__)

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
        node_id: str | None = None,
    ) -> None:
        """``max_bytes``: the bound at which ``full`` turns true (``None``: never).
        ``node_id``: the node whose spool this is (the registry's id; the catalog notes it
        on each object spooled here, so that the fleet knows where its bytes wait)."""
        self.root = root
        self.node_id = node_id
        self._store = store
        self.max_bytes = max_bytes
        self._open: set[str] = set()
        # What each spool file holds, counted as it is written: the files a crash left are
        # measured once, here, before the process serves. The totals and the pending keys
        # are kept in step with it (``_track``/``_untrack``), so that the publisher's
        # polls, /readyz and /metrics never walk every entry.
        self._sizes: dict[str, int] = dict(_measure(root))
        self._pending: set[str] = set(self._sizes)
        self._held = sum(self._sizes.values())
        self._pending_bytes = self._held
        self.quarantined = sum(1 for _ in _files(root / QUARANTINE))
        """Spool files that did not verify, moved to ``<spool>/.quarantine`` for an operator."""
        self.store_down = False
        """A publication failed in the store, and none (nor a store check) succeeded since."""
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="spool")

    @property
    def held_bytes(self) -> int:
        """The bytes every spool file holds, live or waiting for the store."""
        return self._held

    @property
    def pending_bytes(self) -> int:
        """The bytes of spool files no live upload writes: closed objects that wait to be
        published (the store was down at their commit) or that a crash left."""
        return self._pending_bytes

    def pending(self) -> list[str]:
        """The keys of those files (``pending_bytes``): what the publisher has to do."""
        return sorted(self._pending)

    @property
    def has_pending(self) -> bool:
        """Whether any file waits to be published (``pending`` is not empty), in O(1)."""
        return bool(self._pending)

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
        # Open before the file exists: a recovery pass that lists the new, still empty
        # file meanwhile must not take it for a crash's left-over and discard it.
        self._untrack(key)  # (a left-over of the key is not the new file)
        self._open.add(key)
        self._sizes[key] = 0
        try:
            handle = await self.run(_create, path)
        except BaseException:
            self._untrack(key)
            raise
        return SpooledUpload(self, key, handle)

    def is_open(self, key: str) -> bool:
        """Whether a live upload of this process is writing the key (not left over)."""
        return key in self._open

    def keys(self) -> list[str]:
        """The keys of every spooled object on disk, live or left over (blocking)."""
        return sorted(key for key, _ in _measure(self.root))

    async def scan(self) -> list[str]:
        """``keys``, walked in the spool's pool; and the count of bytes held is set right
        with what the walk found: a file gone from the disk (an operator removed it) is
        no longer counted, so it neither holds the bound nor keeps the publisher busy."""
        before = set(self._pending)
        keys = await self.run(self.keys)
        for key in before - set(keys):
            if key in self._pending:
                log.warning("spool file of %s is gone from the disk; no longer counted", key)
                self._untrack(key)
        return keys

    async def quarantine(self, key: str) -> None:
        """Move a spool file that does not verify out of the way, to
        ``<spool>/.quarantine/<key>.sealed``: it is no longer counted or retried, and
        stays for an operator to look at."""
        await self.run(_move, self.path(key), self.root / QUARANTINE / (key + SUFFIX))
        self._untrack(key)
        self.quarantined += 1

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
            upload = await self._from_store(self._store.open_upload(key))
            try:
                remaining = length
                while remaining is None or remaining > 0:
                    size = CHUNK if remaining is None else min(CHUNK, remaining)
                    chunk = await self.run(source.read, size)  # a local error: not the store's
                    if not chunk:
                        break
                    await self._from_store(upload.write(chunk))
                    if remaining is not None:
                        remaining -= len(chunk)
                if tail:
                    await self._from_store(upload.write(tail))
                stored = await self._from_store(upload.commit())
            except BaseException:
                await upload.abort()
                raise
        finally:
            await self.run(source.close)
        self.store_down = False
        return stored

    async def _from_store(self, step: Awaitable[_T]) -> _T:
        """Await a call to the store: its ``StorageUnavailable`` (it could not be reached
        or failed as a whole) marks it ``store_down``; an error about one object (or a
        local read error, outside this) does not hold up every other commit."""
        try:
            return await step
        except StorageUnavailable:
            self.store_down = True
            raise

    async def discard(self, key: str) -> None:
        """Remove a spool file (idempotent)."""
        try:
            await self.run(_unlink, self.path(key))
        except BaseException:
            self._closed(key)  # the file stays: recovery tries again
            raise
        self._untrack(key)

    def _closed(self, key: str) -> None:
        """No live upload writes ``key`` any more: its file (if counted) now waits."""
        if key in self._open:
            self._open.discard(key)
            if key in self._sizes:
                self._pending.add(key)
                self._pending_bytes += self._sizes[key]

    def _untrack(self, key: str) -> None:
        """``key``'s file is gone (or not counted): forget it and its bytes."""
        self._open.discard(key)
        size = self._sizes.pop(key, None)
        if size is not None:
            self._held -= size
            if key in self._pending:
                self._pending.discard(key)
                self._pending_bytes -= size

    def _wrote(self, key: str, size: int) -> None:
        if key in self._sizes:  # not a file discarded meanwhile (no phantom bytes)
            self._sizes[key] += size
            self._held += size
            if key in self._pending:
                self._pending_bytes += size


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


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    source.replace(target)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _measure(root: Path) -> Iterator[tuple[str, int]]:
    """(key, size) of every spool file under ``root`` (not the quarantined ones). A file
    removed while it is walked (another process publishes it) is skipped."""
    for path in _files(root, skip=QUARANTINE):
        if path.name.endswith(SUFFIX):
            key = path.relative_to(root).as_posix()[: -len(SUFFIX)]
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            yield key, size


def _files(root: Path, *, skip: str | None = None) -> Iterator[Path]:
    """The regular files under ``root`` (none if it does not exist), not those under its
    top-level folder ``skip``."""
    for folder, dirs, files in os.walk(root):
        if skip is not None and folder == str(root) and skip in dirs:
            dirs.remove(skip)
        for name in files:
            path = Path(folder, name)
            if path.is_file():
                yield path
