"""The default object store: one file per object under a root directory.

Why it looks the way it does:

* **Atomic publish.** An upload writes to a private temporary file in ``<root>/.staging/``
  (same filesystem as the objects, so ``os.replace`` is an atomic rename) and is renamed to
  its final path only on ``commit()``. A crash at any moment leaves either no file under the
  key or the whole object, never a prefix of it. ``.staging`` can never collide with a key,
  because key components must start with a letter or digit.
* **Durability on demand.** ``flush()`` is how the gateway makes acknowledged audio durable:
  it writes what is buffered and ``fsync``s the temporary file (and, the first time, the
  staging directory, so the file's directory entry survives a power loss too). ``commit()``
  fsyncs the file, renames it and fsyncs the directory it landed in.
* **After an I/O error the upload is dead.** Once ``write``/``fsync`` has failed, Linux may
  have dropped the dirty pages, and a later ``fsync`` can report success for data that is
  gone. So a failed upload refuses everything but ``abort()``.
* **Off the event loop, cheaply.** All blocking file I/O runs in a small bounded thread pool
  of the store's own, so a slow disk cannot starve the loop's default executor. Small writes
  are gathered in memory and reach the file in one hop on ``flush()``/``commit()`` or once
  ``write_buffer`` bytes have piled up: the gateway appends every couple of seconds per track
  on many calls at once, and one thread hop per flush is the cost it pays.
* **Private files.** Objects are sealed already, but the store still creates files ``0600``
  and directories ``0700``, whatever the umask.

A key whose parent path is already an object (``a`` and ``a/b``) cannot be stored: a path
cannot be both a file and a directory. Callers use fixed-depth layouts
(``<tenant>/objects/<id>``), which never meet that.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from storage.errors import ObjectNotFound, StorageError, StorageUnavailable
from storage.store import check_key

__all__ = ["FileStore", "FileUpload", "STAGING_DIR"]

STAGING_DIR = ".staging"
"""Name of the directory under the root that holds uploads not yet committed."""

_STAGING_SUFFIX = ".part"
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_LIST_BATCH = 1000

_T = TypeVar("_T")


def _store_code(exc: OSError) -> str:
    """The errno name of an ``OSError`` (``ENOSPC``), or its class name if it has none."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def _unavailable(action: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(
        f"file store: {action} failed: {exc.strerror or exc}", store_code=_store_code(exc)
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FileStore:
    """An ``ObjectStore`` that keeps each object as a file ``<root>/<key>``."""

    def __init__(
        self,
        root: Path,
        *,
        max_workers: int = 8,
        write_buffer: int = 256 * 1024,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if write_buffer < 0:
            raise ValueError("write_buffer must not be negative")
        self.root = Path(root)
        self.staging = self.root / STAGING_DIR
        self.write_buffer = write_buffer
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="filestore")
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"FileStore(root={str(self.root)!r})"

    # --- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run blocking ``fn(*args)`` in the store's pool; ``OSError`` escapes as is."""
        if self._closed:
            raise StorageError("file store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _prepare(self) -> None:
        """Create the root and the staging directory once (worker thread)."""
        with self._prepare_lock:
            if self._prepared:
                return
            if not self.root.is_dir():
                self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
                os.chmod(self.root, _DIR_MODE)
            try:
                self.staging.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                pass
            else:
                os.chmod(self.staging, _DIR_MODE)
                _fsync_dir(self.root)
            self._prepared = True

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _make_parents(self, key: str) -> Path:
        """Create the directories above ``key``'s file, each ``0700``; return its parent.

        ``os.makedirs`` gives ``mode`` to the leaf only, hence the walk. Every new directory's
        entry is made durable by fsyncing the directory it was created in.
        """
        directory = self.root
        for part in key.split("/")[:-1]:
            child = directory / part
            try:
                os.mkdir(child, _DIR_MODE)
            except FileExistsError:
                pass
            else:
                os.chmod(child, _DIR_MODE)
                _fsync_dir(directory)
            directory = child
        return directory

    def _open_staging(self) -> tuple[int, Path]:
        """Create a fresh ``0600`` temporary file in the staging directory (worker thread)."""
        self._prepare()
        while True:
            path = self.staging / f"{secrets.token_hex(16)}{_STAGING_SUFFIX}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue
            os.fchmod(fd, _FILE_MODE)
            return fd, path

    def _publish(self, temp: Path, key: str) -> None:
        """Rename a complete, fsynced temporary file to ``key``'s path (worker thread).

        A concurrent ``delete_many`` may prune a directory between our ``mkdir`` and the
        rename; then we get ``ENOENT`` and make the directories again.
        """
        final = self._path(key)
        for attempt in range(3):
            try:
                parent = self._make_parents(key)
                os.replace(temp, final)
            except FileNotFoundError:
                if attempt == 2 or not temp.exists():
                    raise
                continue
            _fsync_dir(parent)
            return

    # --- ObjectStore ------------------------------------------------------------------------

    async def open_upload(self, key: str) -> FileUpload:
        check_key(key)
        try:
            fd, temp = await self._run(self._open_staging)
        except OSError as exc:
            raise _unavailable(f"creating an upload for {key!r}", exc) from exc
        return FileUpload(self, key, fd, temp)

    async def put(self, key: str, data: bytes) -> None:
        check_key(key)
        try:
            await self._run(self._put_blocking, key, bytes(data))
        except OSError as exc:
            raise _unavailable(f"storing {key!r}", exc) from exc

    def _put_blocking(self, key: str, data: bytes) -> None:
        fd, temp = self._open_staging()
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(temp, key)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    async def read(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        try:
            fd = await self._run(_open_object, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"no object under {key!r}") from None
        except OSError as exc:
            raise _unavailable(f"opening {key!r}", exc) from exc
        try:
            while True:
                try:
                    chunk = await self._run(os.read, fd, chunk_size)
                except OSError as exc:
                    raise _unavailable(f"reading {key!r}", exc) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            # Closing a descriptor opened for reading does no disk I/O.
            os.close(fd)

    async def delete_many(self, keys: Sequence[str]) -> None:
        paths = [self._path(key) for key in keys]
        if not paths:
            return
        try:
            await self._run(self._delete_blocking, paths)
        except OSError as exc:
            raise _unavailable("deleting objects", exc) from exc

    def _delete_blocking(self, paths: list[Path]) -> None:
        touched: set[Path] = set()
        for path in paths:
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            touched.add(path.parent)
        # Prune emptied directories bottom-up, never the root itself, and fsync the deepest
        # surviving directory of each chain so the removals are durable.
        survivors: set[Path] = set()
        for directory in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            while directory != self.root:
                try:
                    os.rmdir(directory)
                except FileNotFoundError:
                    pass  # pruned already by an earlier chain
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    break
                directory = directory.parent
            survivors.add(directory)
        for directory in survivors:
            try:
                _fsync_dir(directory)
            except FileNotFoundError:
                continue

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return await self._run(_is_file, path)
        except OSError as exc:
            raise _unavailable(f"checking {key!r}", exc) from exc

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        directory, _, name_prefix = prefix.rpartition("/")
        if directory:
            try:
                check_key(directory)
            except ValueError:
                return  # no stored key can start with it
        walker = _TreeWalker(self.root, directory, name_prefix)
        while True:
            try:
                batch = await self._run(walker.next_batch, _LIST_BATCH)
            except OSError as exc:
                raise _unavailable("listing objects", exc) from exc
            if not batch:
                return
            for key in batch:
                yield key

    async def check(self) -> None:
        try:
            await self._run(self._check_blocking)
        except OSError as exc:
            raise _unavailable(f"checking {self.root}", exc) from exc

    def _check_blocking(self) -> None:
        self._prepare()
        fd, temp = self._open_staging()
        try:
            _write_all(fd, b"\0")
        finally:
            os.close(fd)
            temp.unlink(missing_ok=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # --- maintenance ------------------------------------------------------------------------

    async def discard_stale_uploads(self, older_than: float, now: float) -> int:
        """Remove staging files last written more than ``older_than`` seconds before ``now``.

        ``now`` is wall-clock time (``time.time()``), compared with the files' mtimes. These are
        uploads a crashed process never committed nor aborted; call this at start-up with a
        bound well above the longest expected call. Returns how many files were removed.
        """
        try:
            return await self._run(self._discard_blocking, now - older_than)
        except OSError as exc:
            raise _unavailable("discarding stale uploads", exc) from exc

    def _discard_blocking(self, cutoff: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.staging))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.name.endswith(_STAGING_SUFFIX):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            _fsync_dir(self.staging)
        return removed


def _open_object(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    return fd


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


class _TreeWalker:
    """Walks ``<root>/<directory>`` depth-first in batches, so listing a huge store neither
    holds every key in memory nor blocks a thread for the whole walk."""

    def __init__(self, root: Path, directory: str, name_prefix: str) -> None:
        self._root = root
        start = root.joinpath(*directory.split("/")) if directory else root
        self._base = f"{directory}/" if directory else ""
        # (path, key prefix of its entries, filter on entry names or "")
        self._stack: list[tuple[Path, str, str]] = [(start, self._base, name_prefix)]

    def next_batch(self, limit: int) -> list[str]:
        keys: list[str] = []
        while self._stack and len(keys) < limit:
            path, key_prefix, name_filter = self._stack.pop()
            keys.extend(self._scan(path, key_prefix, name_filter))
        return keys

    def _scan(self, path: Path, key_prefix: str, name_filter: str) -> list[str]:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        files: list[str] = []
        subdirs: list[tuple[Path, str, str]] = []
        for entry in entries:
            name = entry.name
            if not name.startswith(name_filter):
                continue
            if path == self._root and name == STAGING_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((Path(entry.path), f"{key_prefix}{name}/", ""))
            elif entry.is_file(follow_symlinks=False):
                key = f"{key_prefix}{name}"
                try:
                    files.append(check_key(key))
                except ValueError:
                    continue  # a stray file that no upload could have written
        self._stack.extend(reversed(subdirs))  # popped in name order
        return files


class FileUpload:
    """A streaming upload into a staging file; see the module docstring for the guarantees."""

    def __init__(self, store: FileStore, key: str, fd: int, temp: Path) -> None:
        self.key = key
        self._store = store
        self._fd: int | None = fd
        self._temp = temp
        self._buffer = bytearray()
        self._size = 0
        self._entry_durable = False
        self._state = "open"  # open | failed | committed | aborted
        self._lock = asyncio.Lock()
        self._inflight: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        size = self._size + len(self._buffer)
        return f"FileUpload(key={self.key!r}, state={self._state!r}, size={size})"

    def _descriptor(self) -> int:
        """The staging file's descriptor, or the error that says why the upload can't go on."""
        if self._state == "failed":
            raise StorageUnavailable(
                f"file store: upload of {self.key!r} failed earlier; abort it", store_code="EIO"
            )
        if self._state != "open" or self._fd is None:
            raise StorageError(f"upload of {self.key!r} is {self._state}")
        return self._fd

    async def _io(self, action: str, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` in the pool. If the caller is cancelled, the thread still runs to its
        end with our descriptor; the upload is then dead and ``abort()`` waits for it before
        closing the descriptor, which could otherwise be reused under the thread's feet."""
        task = asyncio.ensure_future(self._store._run(fn, *args))
        task.add_done_callback(_consume_outcome)
        self._inflight = task
        try:
            return await asyncio.shield(task)
        except OSError as exc:
            self._state = "failed"
            raise _unavailable(f"{action} {self.key!r}", exc) from exc
        except BaseException:
            self._state = "failed"
            raise

    def _take_buffer(self) -> bytearray:
        data, self._buffer = self._buffer, bytearray()
        self._size += len(data)
        return data

    async def write(self, data: bytes | bytearray) -> None:
        async with self._lock:
            fd = self._descriptor()
            self._buffer += data
            if len(self._buffer) >= self._store.write_buffer:
                await self._io("writing", _write_all, fd, self._take_buffer())

    async def flush(self) -> None:
        async with self._lock:
            fd = self._descriptor()
            sync_entry = not self._entry_durable
            await self._io("flushing", self._flush_blocking, fd, self._take_buffer(), sync_entry)
            self._entry_durable = True

    def _flush_blocking(self, fd: int, data: bytearray, sync_entry: bool) -> None:
        _write_all(fd, data)
        os.fsync(fd)
        if sync_entry:
            _fsync_dir(self._temp.parent)

    async def commit(self) -> int:
        async with self._lock:
            fd = self._descriptor()
            self._fd = None  # _commit_blocking closes it, whatever happens
            await self._io("committing", self._commit_blocking, fd, self._take_buffer())
            self._state = "committed"
            return self._size

    def _commit_blocking(self, fd: int, data: bytearray) -> None:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._store._publish(self._temp, self.key)

    async def abort(self) -> None:
        async with self._lock:
            if self._state in ("committed", "aborted"):
                return
            self._state = "aborted"
            self._buffer = bytearray()
            if self._inflight is not None and not self._inflight.done():
                await asyncio.wait([self._inflight])
            fd, self._fd = self._fd, None
            try:
                await self._store._run(_discard, fd, self._temp)
            except OSError as exc:
                raise _unavailable(f"aborting {self.key!r}", exc) from exc


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    """Mark a pool task's outcome as seen; its awaiter may have been cancelled away."""
    if not future.cancelled():
        future.exception()


def _discard(fd: int | None, temp: Path) -> None:
    if fd is not None:
        os.close(fd)
    temp.unlink(missing_ok=True)
