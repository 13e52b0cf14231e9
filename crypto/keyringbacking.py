"""Where the keyring's document is kept, apart from what the keyring does with it.

``crypto.keys.LocalKeyring`` reads and changes one JSON document (every value in it wrapped
by the master key). Where that document lives is a small interface, ``KeyringBacking``: a
lock held across one read-modify-write, a read, a write, and a cheap identity that changes
whenever the document is written, so that a keyring sees at its next operation that another
process (or another node) changed it and reloads, and a destroyed KEK stops working at once.

Two backings implement it: ``FileBacking`` here (``keyring.json`` in the data dir, shared by
the processes of one host through a file lock and atomic replaces), and the catalog's
``storage.keyring.CatalogBacking`` (one row of the catalog database, shared by every node of
a fleet), which lives in the storage layer because it talks to the database.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from crypto import keyfile

Identity = Hashable
"""What a backing says changes whenever its document is written (compared with ``!=``)."""


@dataclass(frozen=True)
class Loaded:
    """A document as read, and the identity it had when it was read (the same instant)."""

    document: bytes
    identity: Identity


class KeyringBacking(Protocol):
    """Keeps the keyring's one document; ``LocalKeyring`` holds the logic."""

    name: str
    """How errors and logs name the document (``keyring /var/keyring.json``); no secret."""
    cheap_identity: bool
    """Whether ``identity`` is cheap and never blocks for long (a ``stat``), so that it may
    run on the event loop; otherwise the keyring asks for it in a thread."""

    def locked(self) -> AbstractContextManager[object]:
        """Hold the exclusive lock of the document for one read-modify-write, across
        processes (and nodes, for a shared backing). Not re-entrant. ``write`` is only
        allowed inside it; a failure inside it leaves the document as it was."""

    def read(self) -> Loaded | None:
        """The document and its identity, or ``None`` when there is none yet."""

    def write(self, document: bytes) -> Identity:
        """Replace the document (inside ``locked``); return its new identity."""

    def identity(self) -> Identity | None:
        """The document's identity now (``None`` when there is none)."""

    def close(self) -> None:
        """Release what the backing holds open (connections); it is not used afterwards."""


class FileBacking:
    """The document as a file, changed by atomic replaces under an exclusive file lock
    (``<file>.lock``). Its identity is the file's inode, mtime and size: a replace changes
    the inode, so even a write within the mtime's granularity is seen."""

    cheap_identity = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"keyring {path}"
        self._lock_path = path.with_name(path.name + ".lock")

    def locked(self) -> FileLock:
        return FileLock(self._lock_path)

    def read(self) -> Loaded | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            # The identity of the very file read: a replace racing the read changes the
            # path's inode, not this one's, and is seen at the next check.
            identity = _stat_identity(os.fstat(f.fileno()))
            return Loaded(f.read(), identity)

    def write(self, document: bytes) -> Identity:
        keyfile.write_file(self.path, document)
        identity = self.identity()
        if identity is None:
            raise FileNotFoundError(self.path)
        return identity

    def identity(self) -> Identity | None:
        try:
            return _stat_identity(os.stat(self.path))
        except FileNotFoundError:
            return None

    def close(self) -> None:
        pass


def _stat_identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class FileLock:
    """An exclusive advisory lock across processes on one host (fcntl.flock)."""

    def __init__(self, path: Path, *, wait: bool = True) -> None:
        self._path = path
        self._wait = wait
        self._fd = -1
        self._held = False

    def __enter__(self) -> bool:
        """Whether the lock is held (always, when waiting for it)."""
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if self._wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        self._held = True
        return True

    def __exit__(self, *exc: object) -> None:
        if self._held:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False
        os.close(self._fd)
