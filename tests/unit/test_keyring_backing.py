"""The keyring's logic over the ``KeyringBacking`` interface, apart from any real storage.

``MemoryBacking`` is a test double of the interface that behaves like the catalog's row (a
write is only kept when the lock is released, and can be made to fail then, as a commit
can); the real backings are tested on real parts (``tests/unit/test_keys.py`` and the
functional tier for the file, ``tests/functional/test_keyring_catalog.py`` for the
catalog on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError, KeyUnavailable
from crypto.keyringbacking import FileBacking, Identity, Loaded
from crypto.keys import KekRef, LocalKeyring, WrappedKey
from crypto.objectformat import generate_dek

MASTER = bytes(range(32))


class CommitFailed(OSError):
    pass


class Shared:
    """What every ``MemoryBacking`` on it sees: one document and its version."""

    def __init__(self) -> None:
        self.document: bytes | None = None
        self.version = 0
        self.lock = threading.Lock()
        self.fail_next_commit = False


class MemoryBacking:
    name = "keyring in memory"
    cheap_identity = True

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._pending: bytes | None = None
        self._held = False

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._shared.lock:
            self._held, self._pending = True, None
            try:
                yield
                if self._pending is not None:
                    if self._shared.fail_next_commit:
                        self._shared.fail_next_commit = False
                        raise CommitFailed("the commit failed")
                    self._shared.document = self._pending
                    self._shared.version += 1
            finally:
                self._held, self._pending = False, None

    def read(self) -> Loaded | None:
        if self._held and self._pending is not None:
            return Loaded(self._pending, self._shared.version + 1)
        if self._shared.document is None:
            return None
        return Loaded(self._shared.document, self._shared.version)

    def write(self, document: bytes) -> Identity:
        assert self._held
        self._pending = document
        return self._shared.version + 1

    def identity(self) -> Identity | None:
        return None if self._shared.document is None else self._shared.version

    def close(self) -> None:
        pass


async def test_a_write_that_failed_to_commit_leaves_no_key_behind_in_the_view() -> None:
    shared = Shared()
    a = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    b = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    shared.fail_next_commit = True
    with pytest.raises(CommitFailed):
        await a.wrap("acme", "obj-1", generate_dek())  # acme's KEK was made, not stored
    # Another node writes meanwhile: the version a's failed write would have had is now
    # that of a document without acme's KEK.
    await b.wrap("globex", "obj-2", generate_dek())

    dek = generate_dek()
    wrapped = await a.wrap("acme", "obj-3", dek)

    # The KEK a wrapped under is the stored one: any other node opens the DEK.
    c = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    assert await c.unwrap("acme", "obj-3", wrapped) == dek


async def test_a_keyring_reloads_at_its_next_use_after_another_writes() -> None:
    shared = Shared()
    a = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    b = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    dek = generate_dek()
    wrapped = await a.wrap("acme", "obj-1", dek)
    assert await b.unwrap("acme", "obj-1", wrapped) == dek
    assert (await a.rotate("acme")).kek_version == 2
    assert (await b.wrap("acme", "obj-2", dek)).kek_version == 2


def test_a_backing_with_no_document_is_not_made_when_create_is_off() -> None:
    with pytest.raises(ConfigError, match="keyring in memory: has disappeared"):
        LocalKeyring.open_backing(MemoryBacking(Shared()), MASTER, create=False)


def test_the_file_backings_identity_is_the_file_it_read(tmp_path: Path) -> None:
    backing = FileBacking(tmp_path / "keyring.json")
    assert backing.read() is None and backing.identity() is None
    with backing.locked():
        first = backing.write(b"{}")
    loaded = backing.read()
    assert loaded is not None and loaded.document == b"{}" and loaded.identity == first
    with backing.locked():
        second = backing.write(b"{}")  # the same bytes, replaced: another identity
    assert second != first and backing.identity() == second


# --- a write in flight: what the other users of the same keyring see meanwhile --------------


class HeldWrite(MemoryBacking):
    """A ``MemoryBacking`` whose next write waits until ``release`` (a write's round trip to
    the database, during which the other coroutines and threads of the node go on)."""

    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.holding = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, document: bytes) -> Identity:
        if self.holding:
            self.holding = False
            self.entered.set()
            assert self.release.wait(5)
        return super().write(document)


async def in_flight(backing: HeldWrite, change: Callable[[], object]) -> asyncio.Future[object]:
    """``change`` started in a thread, returned once its write is held."""
    backing.holding = True
    started = asyncio.ensure_future(asyncio.to_thread(change))
    assert await asyncio.to_thread(backing.entered.wait, 5)
    return started


async def test_a_rotation_in_flight_is_not_used_before_it_committed() -> None:
    shared = Shared()
    backing = HeldWrite(shared)
    a = LocalKeyring.open_backing(backing, MASTER)
    await a.wrap("acme", "obj-0", generate_dek())
    shared.fail_next_commit = True
    rotation = await in_flight(backing, lambda: a._rotate("acme"))
    dek = generate_dek()
    try:
        # Another coroutine of the node seals meanwhile: under the stored version.
        wrapped = await a.wrap("acme", "obj-1", dek)
        assert wrapped.kek_version == 1
        assert a.current("acme") == KekRef(wrapped.kek_id, 1)
    finally:
        backing.release.set()
    with pytest.raises(CommitFailed):
        await rotation
    other = LocalKeyring.open_backing(MemoryBacking(shared), MASTER)
    assert await other.unwrap("acme", "obj-1", wrapped) == dek


async def test_a_new_tenants_kek_in_flight_is_not_used_before_it_committed() -> None:
    shared = Shared()
    backing = HeldWrite(shared)
    a = LocalKeyring.open_backing(backing, MASTER)
    shared.fail_next_commit = True
    making = await in_flight(backing, lambda: a._ensure_tenant("acme"))
    try:
        assert a.current("acme") is None
        with pytest.raises(KeyUnavailable, match="no keys exist"):
            await a.unwrap("acme", "obj-1", WrappedKey("kek-x", 1, b"x"))
    finally:
        backing.release.set()
    with pytest.raises(CommitFailed):
        await making
    assert a.current("acme") is None


async def test_a_retirement_in_flight_removes_nothing_before_it_committed() -> None:
    shared = Shared()
    backing = HeldWrite(shared)
    a = LocalKeyring.open_backing(backing, MASTER)
    dek = generate_dek()
    old = await a.wrap("acme", "obj-1", dek)
    await a.rotate("acme")
    shared.fail_next_commit = True
    retiring = await in_flight(backing, lambda: a._remove_versions("acme", set()))
    try:  # version 1 is still stored: it opens (a reader would take it for retired)
        assert await a.unwrap("acme", "obj-1", old) == dek
    finally:
        backing.release.set()
    with pytest.raises(CommitFailed):
        await retiring
    assert await a.unwrap("acme", "obj-1", old) == dek


async def test_a_section_change_in_flight_is_not_read_before_it_committed() -> None:
    shared = Shared()
    backing = HeldWrite(shared)
    a = LocalKeyring.open_backing(backing, MASTER)
    audit_a = AuditKeyring(a)
    shared.fail_next_commit = True
    making = await in_flight(
        backing, lambda: asyncio.run(audit_a.create_audit_key("acme", pending=False))
    )
    try:
        assert a.section("audit_keys") is None
        # Nor does the audit keyring cache the key that is being made.
        assert await audit_a.audit_key("acme") is None
    finally:
        backing.release.set()
    with pytest.raises(CommitFailed):
        await making
    # Another node makes the tenant's key: the one this node uses from now on.
    b = AuditKeyring(LocalKeyring.open_backing(MemoryBacking(shared), MASTER))
    made = await b.create_audit_key("acme", pending=False)
    found = await audit_a.audit_key("acme")
    assert found is not None and found.key == made.key
