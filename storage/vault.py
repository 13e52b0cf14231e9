"""The media vault: the one way audio, transcripts and analysis reach storage and return.

It joins the object format (``crypto.objectformat``), the tenant's keys (a
``KeyProvider``), the catalog's key table and an ``ObjectStore``, in the order that keeps
the promises:

* **Sealing**: a fresh DEK per object, wrapped under the tenant's current KEK; the catalog
  rows (object and key) are written *before* the first byte reaches the store, so the store
  never holds an object that the catalog (and so the retention sweeper) does not know.
* **Opening**: the wrapped DEK comes from the key table, never from the object; a segment's
  plaintext is handed out only after its tag verified.
* **Shredding**: the DEK row is destroyed *first*, then the object's bytes, then the catalog
  row is marked deleted. A crash between steps leaves an object nobody can open, and
  running ``shred_object`` again finishes the job.
* **Rotation**: a new KEK version, then every DEK row of the tenant re-wrapped in place;
  objects are never rewritten. **Retirement** then removes the KEK versions that no DEK row
  references any more (``retire_unused_keks``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram

from crypto.errors import CallvaultError, DecryptionFailed, KeyUnavailable
from crypto.keys import KeyProvider, RetiredVersions, RetiresKekVersions, WrappedKey
from crypto.objectformat import ObjectReader, ObjectWriter, generate_dek
from storage.catalog import Catalog
from storage.catalog.records import DataClass, ObjectKeyRow, StoredObject
from storage.errors import NotFound, StorageUnavailable
from storage.keyrows import key_row, unwrap_stored, wrap_opens
from storage.spool import QUARANTINE, Spool
from storage.store import ObjectStore, ObjectUpload, check_key

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
_REGISTER_TRIES = 3


class VaultMetrics:
    """What the vault exports at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry or CollectorRegistry()
        self.bytes_sealed = Counter(
            "callvault_bytes_sealed", "Plaintext bytes sealed into objects.", registry=registry
        )
        self.objects_committed = Counter(
            "callvault_objects_committed",
            "Sealed objects committed to the object store.",
            registry=registry,
        )
        self.objects_shredded = Counter(
            "callvault_objects_shredded",
            "Objects whose DEK was destroyed and whose bytes were deleted.",
            registry=registry,
        )
        self.flush_latency = Histogram(
            "callvault_flush_latency_seconds",
            "Time to seal buffered plaintext and make it durable (spool fsync or store).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.decryption_failures = Counter(
            "callvault_decryption_failures",
            "Objects that failed to verify when opened.",
            registry=registry,
        )


@dataclass(frozen=True)
class RotationReport:
    tenant: str
    kek_id: str
    kek_version: int
    rewrapped: int


class SealingUpload:
    """One object being sealed and streamed into the store.

    ``write`` seals full segments as they fill, ``flush`` seals what is buffered and pushes
    it towards durable storage (the gateway calls it every couple of seconds), ``commit``
    seals the last segment and publishes the object, ``abort`` drops it and shreds its key.
    """

    def __init__(
        self,
        vault: MediaVault,
        record: StoredObject,
        writer: ObjectWriter,
        upload: ObjectUpload,
    ) -> None:
        self._vault = vault
        self.record = record
        self._writer = writer
        self._upload = upload
        self.broken = False

    @property
    def object_id(self) -> str:
        return self.record.id

    @property
    def plaintext_bytes(self) -> int:
        return self._writer.plaintext_bytes

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        before = self._writer.plaintext_bytes
        sealed = self._writer.write(data)
        self._vault.metrics.bytes_sealed.inc(self._writer.plaintext_bytes - before)
        if sealed:
            await self._upload_write(sealed)

    async def flush(self) -> None:
        started = time.perf_counter()
        sealed = self._writer.flush()
        if sealed:
            await self._upload_write(sealed)
        await self._upload.flush()
        self._vault.metrics.flush_latency.observe(time.perf_counter() - started)

    async def _upload_write(self, sealed: bytearray) -> None:
        # The writer has numbered the segments in ``sealed``: if they do not all reach the
        # upload, nothing may follow them (a reader refuses the hole). The upload is broken;
        # the caller abandons it and continues in a new object.
        try:
            await self._upload.write(sealed)
        except BaseException:
            self.broken = True
            raise

    async def abandon(self, *, now: datetime) -> None:
        """Give up a broken upload without losing what was already made durable: a spooled
        one is left for recovery (which publishes its verified part); any other is aborted
        and its object shredded (a store keeps nothing of an unfinished upload)."""
        self.broken = True
        leave_for_recovery = getattr(self._upload, "abandon", None)
        if leave_for_recovery is not None:
            await leave_for_recovery()
        else:
            await self.abort(now=now)

    async def commit(self, *, now: datetime) -> StoredObject:
        if self.broken:
            raise StorageUnavailable(f"the upload of object {self.record.id} failed earlier")
        await self._upload_write(self._writer.close())
        size = await self._upload.commit()
        self.record = await self._vault.catalog.objects.mark_committed(
            self.record.id, size=size, now=now
        )
        done = getattr(self._upload, "done", None)
        if done is not None:  # a spooled upload's file goes only now (``Spool.publish``)
            await done()
        self._vault.metrics.objects_committed.inc()
        return self.record

    async def abort(self, *, now: datetime) -> None:
        await self._upload.abort()
        await self._vault.shred_object(self.record.tenant_id, self.record.id, now=now)


class MediaVault:
    """Seals, stores, opens, shreds and re-keys the objects of every tenant."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ObjectStore,
        keys: KeyProvider,
        segment_size: int = 64 * 1024,
        registry: CollectorRegistry | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.keys = keys
        self.segment_size = segment_size
        self.metrics = VaultMetrics(registry)
        self.spool = spool

    @staticmethod
    def store_key(tenant: str, object_id: str) -> str:
        """Where an object's bytes live; raises ``ValueError`` for an unsafe tenant id."""
        if "/" in tenant or "/" in object_id:
            raise ValueError(f"invalid object key for tenant {tenant!r}, object {object_id!r}")
        return check_key(f"{tenant}/objects/{object_id}")

    async def create_object(
        self,
        *,
        tenant: str,
        kind: str,
        data_class: DataClass,
        now: datetime,
        recording_id: str | None = None,
        track: str | None = None,
        spooled: bool = False,
    ) -> SealingUpload:
        """Start sealing a new object: its catalog and key rows exist before any byte.

        ``spooled``: the sealed bytes go to the local spool, durable at every ``flush``, and
        reach the store at ``commit`` (live audio; see ``storage.spool``)."""
        spool = self.spool if spooled else None
        for _ in range(_REGISTER_TRIES):
            object_id = secrets.token_hex(16)
            dek = generate_dek()
            store_key = self.store_key(tenant, object_id)
            wrapped = await self.keys.wrap(tenant, object_id, dek)
            record = await self.catalog.objects.add(
                object_id=object_id,
                tenant_id=tenant,
                recording_id=recording_id,
                kind=kind,
                track=track,
                data_class=data_class,
                store_key=store_key,
                key=key_row(object_id, tenant, wrapped, now),
                now=now,
                node_id=spool.node_id if spool is not None else None,
            )
            if await self._wrap_still_opens(tenant, object_id, wrapped, now=now):
                break
        else:
            raise KeyUnavailable(
                f"the KEK of tenant {tenant!r} kept changing while an object was created"
            )
        writer = ObjectWriter(
            dek=dek,
            tenant=tenant,
            object_id=object_id,
            kek_id=wrapped.kek_id,
            kek_version=wrapped.kek_version,
            segment_size=self.segment_size,
        )
        if spool is not None:
            upload: ObjectUpload = await spool.open_upload(store_key)
        else:
            upload = await self.store.open_upload(store_key)
        return SealingUpload(self, record, writer, upload)

    async def put_object(
        self,
        plaintext: bytes,
        *,
        tenant: str,
        kind: str,
        data_class: DataClass,
        now: datetime,
        recording_id: str | None = None,
        track: str | None = None,
    ) -> StoredObject:
        """Seal and store a small object (a transcript, an analysis) in one call."""
        upload = await self.create_object(
            tenant=tenant,
            kind=kind,
            data_class=data_class,
            now=now,
            recording_id=recording_id,
            track=track,
        )
        try:
            await upload.write(plaintext)
            return await upload.commit(now=now)
        except Exception:
            await upload.abort(now=now)
            raise

    async def open_object(
        self, tenant: str, object_id: str, *, verify_all: bool = False
    ) -> AsyncIterator[bytes]:
        """An object's plaintext as a stream, each piece released only after its segment
        verified; with ``verify_all`` nothing is released until the whole object verified
        (exports).

        The lookups happen here, before the stream starts, so that an HTTP handler learns of
        ``NotFound`` (unknown, or another tenant's) and ``KeyUnavailable`` (shredded) before
        it sends a status line.
        """
        record = await self.catalog.objects.get(object_id, tenant_id=tenant)
        return await self.open_stored(record, verify_all=verify_all)

    async def open_stored(
        self, record: StoredObject, *, verify_all: bool = False
    ) -> AsyncIterator[bytes]:
        """``open_object`` for an object whose catalog row the caller has just read (an
        export reads a page of them at once), without reading the row again."""
        tenant, object_id = record.tenant_id, record.id
        if record.state != "committed":
            raise NotFound(f"object {object_id} is {record.state}, not readable")
        dek = await unwrap_stored(self.catalog, self.keys, tenant, object_id)
        reader = ObjectReader(dek=dek, tenant=tenant, object_id=object_id, verify_all=verify_all)
        return self._stream(record.store_key, reader)

    async def _stream(self, store_key: str, reader: ObjectReader) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.store.read(store_key, chunk_size=READ_CHUNK):
                for plaintext in reader.feed(chunk):
                    yield plaintext
            for plaintext in reader.finish():
                yield plaintext
        except DecryptionFailed:
            self.metrics.decryption_failures.inc()
            raise

    async def read_object(self, tenant: str, object_id: str) -> bytes:
        """The whole plaintext of a (small) object, verified end to end."""
        stream = await self.open_object(tenant, object_id, verify_all=True)
        return b"".join([chunk async for chunk in stream])

    async def shred_object(self, tenant: str, object_id: str, *, now: datetime) -> None:
        """Destroy the DEK, then the bytes, then mark the row deleted. Idempotent."""
        record = await self.catalog.objects.get(object_id, tenant_id=tenant)
        await self.catalog.keys.delete(object_id)
        await self.store.delete_many([record.store_key])
        if record.state != "deleted":
            await self.catalog.objects.mark_deleted(object_id, now=now)
            self.metrics.objects_shredded.inc()

    async def rotate_tenant_keys(self, tenant: str, *, actor: str, now: datetime) -> RotationReport:
        """Add a KEK version and re-wrap every DEK of the tenant under it.

        Resumable: a row already at the new version is skipped, so running it again after a
        crash finishes the work without re-wrapping anything twice.
        """
        await self.catalog.tenants.get(tenant)  # NotFound for an unknown or deleted tenant
        target = await self.keys.rotate(tenant)

        async def rewrap(row: ObjectKeyRow) -> tuple[str, int, bytes]:
            old = WrappedKey(row.kek_id, row.kek_version, row.wrapped_dek)
            dek = await self.keys.unwrap(tenant, row.object_id, old)
            new = await self.keys.wrap(tenant, row.object_id, dek)
            if new.kek_version != target.kek_version:
                raise KeyUnavailable(
                    f"tenant {tenant!r} was rotated again while re-wrapping; run it again"
                )
            return new.kek_id, new.kek_version, new.blob

        # Another process (serve) may have wrapped a DEK under the old version just before
        # it saw the rotation; its row can land behind a pass's cursor. Passes repeat until
        # one finds nothing left to re-wrap.
        rewrapped = 0
        while passed := await self.catalog.keys.rewrap(
            tenant, rewrap, target_version=target.kek_version, now=now
        ):
            rewrapped += passed
        await self.catalog.audit.append(
            tenant,
            actor=actor,
            action="keys.rotated",
            object=target.kek_id,
            detail={"kek_version": target.kek_version, "rewrapped": rewrapped},
            now=now,
        )
        return RotationReport(tenant, target.kek_id, target.kek_version, rewrapped)

    async def retire_unused_keks(
        self, tenant: str, *, actor: str, now: datetime
    ) -> RetiredVersions | None:
        """Remove the tenant's KEK versions that are not current and that no DEK row
        references (after ``rotate_tenant_keys``, the versions it re-wrapped away from), and
        audit what went (``keys.retired``). ``None`` when the tenant has no keys yet.

        A retired version is gone from the keyring: a copy of the catalog or of a backup
        holding a DEK wrapped under it no longer opens with the current keyring."""
        await self.catalog.tenants.get(tenant)  # NotFound for an unknown or deleted tenant
        keys = self.keys
        if not isinstance(keys, RetiresKekVersions):
            raise KeyUnavailable("this key provider cannot retire KEK versions")

        async def in_use() -> set[tuple[str, int]]:
            return set(await self.catalog.keys.versions_in_use(tenant))

        retired = await keys.retire_unused(tenant, in_use)
        if retired is not None and retired.retired:
            await self.catalog.audit.append(
                tenant,
                actor=actor,
                action="keys.retired",
                object=retired.kek_id,
                detail={"kek_versions": list(retired.retired)},
                now=now,
            )
        return retired

    async def recover_spooled(self, *, now: datetime) -> list[StoredObject]:
        """Publish what crashed or failed uploads left in the spool (not the live ones).

        For each left-over spool file of an object still ``writing``: open what verifies
        (a torn last write is dropped), close the object with a final segment if its writer
        never did, publish it to the store and mark it committed. Returns the recovered
        objects, so that the gateway can take up the calls they belong to. A file whose
        object is unknown, shredded or already committed is removed; one whose publication
        fails (the store is down) stays for the next try.
        """
        spool = self.spool
        if spool is None:
            return []
        recovered: list[StoredObject] = []
        for key in await spool.scan():
            if spool.is_open(key):
                continue
            try:
                result = await self._recover(spool, key, now)
            except CallvaultError as e:  # one file never stops the others
                log.warning("spooled object %s not recovered yet: %s", key, e.code)
                continue
            if result is not None:
                recovered.append(result)
        return recovered

    async def _recover(self, spool: Spool, key: str, now: datetime) -> StoredObject | None:
        tenant, _, object_id = key.partition("/objects/")
        try:
            record = await self.catalog.objects.get(object_id, tenant_id=tenant)
            dek = (
                await unwrap_stored(self.catalog, self.keys, tenant, object_id)
                if record.state == "writing"
                else None
            )
        except (NotFound, KeyUnavailable):
            dek = None
        # A live upload of this process may have opened the key meanwhile: every await
        # below re-checks, and never discards, shreds or publishes what it writes.
        if spool.is_open(key):
            return None
        if dek is None:  # unknown, committed, deleted or shredded: nothing to publish
            await spool.discard(key)
            return None
        reader = ObjectReader(dek=dek, tenant=tenant, object_id=object_id)
        try:
            # Only the verified length matters here; the plaintext is dropped as it comes
            # (a spool file can be long), and callers read the published object instead.
            async for chunk in spool.chunks(key):
                reader.feed(chunk)
            reader.salvage()
        except DecryptionFailed:
            if spool.is_open(key):
                return None
            self.metrics.decryption_failures.inc()
            await spool.quarantine(key)
            log.error(
                "spooled object %s does not verify; moved to %s", key, spool.root / QUARANTINE
            )
            return None
        if spool.is_open(key):
            return None
        if reader.header is None:  # the process died before the header reached the disk
            await spool.discard(key)
            await self.shred_object(tenant, object_id, now=now)
            return None
        tail = b""
        if not reader.complete:
            writer = ObjectWriter.resume(
                dek=dek, header=reader.header, segments=reader.segments_opened
            )
            tail = bytes(writer.close())
        size = await spool.publish(key, length=reader.verified_bytes, tail=tail)
        record = await self.catalog.objects.mark_committed(object_id, size=size, now=now)
        await spool.discard(key)  # only now: a catalog that failed leaves it for the next pass
        self.metrics.objects_committed.inc()
        log.info("recovered spooled object %s (%d bytes)", key, size)
        return record

    async def _wrap_still_opens(
        self, tenant: str, object_id: str, wrapped: WrappedKey, *, now: datetime
    ) -> bool:
        """Whether a wrap whose key row was just stored still opens (``keys retire`` may
        have removed its version: ``storage.keyrows``); if not, the object is shredded and
        the caller makes another."""
        if await wrap_opens(self.keys, tenant, object_id, wrapped):
            return True
        log.warning(
            "object %s of tenant %s: its KEK version was retired; re-made", object_id, tenant
        )
        await self.shred_object(tenant, object_id, now=now)
        return False
