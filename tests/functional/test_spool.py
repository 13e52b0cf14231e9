"""The spool (promise 7): a live object's flushed audio survives a crash of the process and
an outage of the object store, and is published once the process or the store is back."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import storage.spool as spool_module
from gateway.trackwriter import TrackWriter
from storage.errors import CatalogUnavailable, StorageError, StorageUnavailable
from storage.media.tracks import RecordParser
from storage.spool import Spool
from storage.vault import MediaVault, SealingUpload
from tests.functional.test_vault import AUDIO, T0, Parts, everything_at_rest, parts
from tests.gateway import DownStore

__all__ = ["parts"]  # the fixture, shared with the vault's tests

create = spool_module._create

FLUSHED = AUDIO[:50_000]
UNFLUSHED = AUDIO[50_000:51_000]


def spooled_vault(parts: Parts, store: Any = None) -> MediaVault:
    """A vault as ``serve`` builds it: live objects go through a spool in the data dir. A
    new one over the same directory is what a restarted process sees."""
    store = store or parts.store
    return MediaVault(
        catalog=parts.catalog,
        store=store,
        keys=parts.keyring,
        segment_size=4096,
        spool=Spool(parts.data_dir / "spool", store),
    )


async def live_upload(vault: MediaVault) -> SealingUpload:
    upload = await vault.create_object(
        tenant="acme", kind="audio", data_class="recordings", track="inbound", now=T0, spooled=True
    )
    for start in range(0, len(FLUSHED), 1000):
        await upload.write(FLUSHED[start : start + 1000])
        if start % 16_000 == 0:
            await upload.flush()
    await upload.flush()
    await upload.write(UNFLUSHED)  # acknowledged but not yet flushed: may be lost
    return upload


async def crash(vault: MediaVault) -> SealingUpload:
    """A live upload whose process dies: its spool file is left as the last flush left it
    (the file handle is closed, as the kernel does for a dead process)."""
    upload = await live_upload(vault)
    upload._upload._handle.close()  # type: ignore[attr-defined]
    return upload


async def test_a_spooled_object_reaches_the_store_at_commit(parts: Parts) -> None:
    vault = spooled_vault(parts)
    upload = await live_upload(vault)
    key = upload.record.store_key
    assert vault.spool is not None
    assert vault.spool.path(key).stat().st_size > len(FLUSHED)  # sealed, fsynced
    assert vault.spool.path(key).stat().st_mode & 0o777 == 0o600
    assert not await parts.store.exists(key)
    await upload.commit(now=T0)
    assert await parts.store.exists(key)
    assert not vault.spool.path(key).exists()
    assert await vault.read_object("acme", upload.object_id) == FLUSHED + UNFLUSHED


async def test_after_a_crash_the_flushed_audio_is_recovered(parts: Parts) -> None:
    crashed = await crash(spooled_vault(parts))  # the process dies here: no commit
    restarted = spooled_vault(parts)
    [recovered] = await restarted.recover_spooled(now=T0)
    assert recovered.id == crashed.object_id
    assert recovered.state == "committed"
    assert await restarted.read_object("acme", crashed.object_id) == FLUSHED
    assert restarted.spool is not None and restarted.spool.keys() == []
    assert await restarted.recover_spooled(now=T0) == []  # done once


async def test_the_spool_counts_what_it_holds_without_walking_it(parts: Parts) -> None:
    vault = spooled_vault(parts)
    spool = vault.spool
    assert spool is not None and spool.held_bytes == 0
    upload = await live_upload(vault)
    key = upload.record.store_key
    on_disk = spool.path(key).stat().st_size
    assert spool.held_bytes == on_disk  # counted as written (the unflushed tail is not sealed)
    assert spool.pending() == [] and spool.pending_bytes == 0  # live: not waiting
    upload._upload._handle.close()  # type: ignore[attr-defined] # the process dies
    restarted = spooled_vault(parts)  # measures what the crash left, once
    assert restarted.spool is not None
    assert restarted.spool.held_bytes == restarted.spool.pending_bytes == on_disk
    assert restarted.spool.pending() == [key]
    bounded = Spool(parts.data_dir / "spool", parts.store, max_bytes=on_disk)
    assert bounded.full
    await bounded.close()
    await restarted.recover_spooled(now=T0)
    assert restarted.spool.held_bytes == 0 and restarted.spool.pending() == []


async def test_an_outage_at_commit_keeps_the_whole_object_for_later(parts: Parts) -> None:
    vault = spooled_vault(parts, DownStore(parts.store))
    upload = await live_upload(vault)
    with pytest.raises(StorageUnavailable):
        await upload.commit(now=T0)
    assert (await parts.catalog.objects.get(upload.object_id, "acme")).state == "writing"
    assert await vault.recover_spooled(now=T0) == []  # still down: kept, not lost
    back = spooled_vault(parts)
    [recovered] = await back.recover_spooled(now=T0)
    assert recovered.id == upload.object_id
    # Closed before the outage: all of it, the unflushed tail included.
    assert await back.read_object("acme", upload.object_id) == FLUSHED + UNFLUSHED


async def test_live_uploads_are_never_taken_for_left_overs(parts: Parts) -> None:
    vault = spooled_vault(parts)
    upload = await live_upload(vault)
    assert await vault.recover_spooled(now=T0) == []
    await upload.commit(now=T0)
    assert await vault.read_object("acme", upload.object_id) == FLUSHED + UNFLUSHED


async def test_left_overs_of_shredded_objects_are_discarded(parts: Parts) -> None:
    crashed = await crash(spooled_vault(parts))
    restarted = spooled_vault(parts)
    await restarted.shred_object("acme", crashed.object_id, now=T0)
    assert await restarted.recover_spooled(now=T0) == []
    assert restarted.spool is not None and restarted.spool.keys() == []


async def test_the_spool_holds_no_plaintext(parts: Parts) -> None:
    await crash(spooled_vault(parts))  # its spool file stays
    at_rest = await everything_at_rest(parts)
    assert (parts.data_dir / "spool").is_dir()
    for start in range(0, len(FLUSHED) - 64, 64):
        assert FLUSHED[start : start + 64] not in at_rest


async def test_a_track_being_opened_is_not_taken_for_a_left_over(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publisher's recovery pass may list a live track's file in the moment between its
    creation and ``open_upload`` returning (the file is empty then, like a crash's that died
    before its header): it must leave it alone, and the track record and commit."""
    created = threading.Event()
    go_on = threading.Event()

    def slow_create(path: Path) -> BinaryIO:
        handle = create(path)
        created.set()
        go_on.wait(10)
        return handle

    monkeypatch.setattr(spool_module, "_create", slow_create)
    vault = spooled_vault(parts)
    opening = asyncio.ensure_future(live_upload(vault))
    await asyncio.to_thread(created.wait, 10)
    assert await vault.recover_spooled(now=T0) == []  # the empty file is there now
    go_on.set()
    upload = await opening
    await upload.commit(now=T0)
    assert await vault.read_object("acme", upload.object_id) == FLUSHED + UNFLUSHED
    assert vault.spool is not None and vault.spool.held_bytes == 0


async def test_a_spool_file_removed_from_the_disk_is_no_longer_counted(parts: Parts) -> None:
    vault = spooled_vault(parts, DownStore(parts.store))
    upload = await live_upload(vault)
    with pytest.raises(StorageUnavailable):
        await upload.commit(now=T0)  # waits in the spool
    spool = vault.spool
    assert spool is not None and spool.pending() == [upload.record.store_key]
    spool.path(upload.record.store_key).unlink()  # an operator removes it
    assert await vault.recover_spooled(now=T0) == []
    assert spool.pending() == [] and spool.held_bytes == 0 and not spool.full


async def test_a_spool_file_that_does_not_verify_is_quarantined(parts: Parts) -> None:
    crashed = await crash(spooled_vault(parts))
    key = crashed.record.store_key
    restarted = spooled_vault(parts)
    spool = restarted.spool
    assert spool is not None
    damaged = bytearray(spool.path(key).read_bytes())
    damaged[200] ^= 0xFF  # inside the first segment: nothing after the header verifies
    spool.path(key).write_bytes(bytes(damaged))
    assert await restarted.recover_spooled(now=T0) == []
    assert spool.pending() == [] and spool.held_bytes == 0 and spool.quarantined == 1
    assert spool.keys() == []
    assert (spool.root / ".quarantine" / f"{key}.sealed").read_bytes() == damaged
    assert await restarted.recover_spooled(now=T0) == []  # not retried
    again = Spool(spool.root, parts.store)  # a restart counts it, and holds nothing
    assert again.quarantined == 1 and again.held_bytes == 0 and again.pending() == []
    await again.close()


class PoisonStore(DownStore):
    """A store that answers but refuses one object (e.g. a policy on its key)."""

    async def open_upload(self, key: str) -> Any:
        raise StorageError(f"the store refuses {key}")


async def test_only_the_store_being_unreachable_marks_it_down(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One poison object, or a local read error, must not make every live commit skip the
    store; the store not answering does."""
    vault = spooled_vault(parts, PoisonStore(parts.store))
    spool = vault.spool
    assert spool is not None
    with pytest.raises(StorageError):
        await (await live_upload(vault)).commit(now=T0)
    assert not spool.store_down

    class Unreadable:
        def read(self, size: int) -> bytes:
            raise OSError(5, "Input/output error")

        def close(self) -> None:
            pass

    spool._store = parts.store
    upload = await live_upload(vault)
    with monkeypatch.context() as patched:
        patched.setattr(spool_module, "_open_for_reading", lambda path: Unreadable())
        with pytest.raises(StorageUnavailable):
            await upload.commit(now=T0)
    assert not spool.store_down

    spool._store = DownStore(parts.store)
    with pytest.raises(StorageUnavailable):
        await (await live_upload(vault)).commit(now=T0)
    assert spool.store_down


def test_measuring_skips_a_file_removed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (serve's publisher) may remove a spool file while it is measured."""
    kept = tmp_path / "acme" / "objects" / "kept.sealed"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"x" * 10)
    gone = tmp_path / "acme" / "objects" / "gone.sealed"
    monkeypatch.setattr(spool_module, "_files", lambda root, skip=None: iter([gone, kept]))
    assert list(spool_module._measure(tmp_path)) == [("acme/objects/kept", 10)]


async def test_a_catalog_outage_at_commit_leaves_the_object_to_recovery(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store took the object but the catalog could not mark it committed: the spool
    file stays (were it removed, the object would stay 'writing' with nothing left to
    recover it from, and its recording's export would answer 503 for good)."""
    vault = spooled_vault(parts)
    upload = await live_upload(vault)
    key = upload.record.store_key
    assert vault.spool is not None
    mark_committed = parts.catalog.objects.mark_committed

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise CatalogUnavailable("the catalog is down")

    monkeypatch.setattr(parts.catalog.objects, "mark_committed", down)
    with pytest.raises(CatalogUnavailable):
        await upload.commit(now=T0)
    await upload.abandon(now=T0)  # what a call's track does with a failed commit
    assert vault.spool.path(key).exists()
    assert vault.spool.keys() == [key]
    monkeypatch.setattr(parts.catalog.objects, "mark_committed", mark_committed)
    [recovered] = await vault.recover_spooled(now=T0)
    assert (recovered.id, recovered.state) == (upload.object_id, "committed")
    assert await vault.read_object("acme", upload.object_id) == FLUSHED + UNFLUSHED
    assert vault.spool.keys() == []


@pytest.mark.parametrize("where", ["mark_committed", "write"])
async def test_a_commit_cancelled_midway_leaves_the_object_to_recovery(
    parts: Parts, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A track's commit cancelled (its handler's task, under load) while it waited for the
    catalog or wrote its last audio: the track hands the upload to recovery, which publishes
    what was flushed. Before the fix the spool key stayed 'open' until a restart, so the
    object stayed 'writing' (export 503) and its bytes counted against the spool (a review
    finding, at both places)."""
    vault = spooled_vault(parts)
    spool = vault.spool
    assert spool is not None
    upload = await vault.create_object(
        tenant="acme", kind="audio", data_class="recordings", track="inbound", now=T0, spooled=True
    )
    track = TrackWriter(packets=False, position=0)
    track.upload = upload
    track.append(0, FLUSHED, len(FLUSHED))
    await track.flush(T0)
    track.append(len(FLUSHED), UNFLUSHED, len(UNFLUSHED))

    async def cancelled(*args: Any, **kwargs: Any) -> Any:
        raise asyncio.CancelledError

    if where == "mark_committed":
        monkeypatch.setattr(parts.catalog.objects, "mark_committed", cancelled)
    else:
        monkeypatch.setattr(upload._upload, "write", cancelled)
    with pytest.raises(asyncio.CancelledError):
        await track.commit(T0)
    assert track.upload is None
    monkeypatch.undo()
    for _ in range(100):  # the hand-over runs in a task of its own
        if not spool.is_open(upload.record.store_key):
            break
        await asyncio.sleep(0.01)
    [recovered] = await vault.recover_spooled(now=T0)
    assert (recovered.id, recovered.state) == (upload.object_id, "committed")
    parser = RecordParser()
    [kept, *_] = parser.feed(await vault.read_object("acme", upload.object_id))
    assert (kept.offset, kept.payload) == (0, FLUSHED)  # what was flushed is kept
    assert spool.keys() == []
