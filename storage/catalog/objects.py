"""Stored objects and THE key table: each object's wrapped DEK, one row per object.

The key table is what makes deletion real: deleting an object's key row (``Keys.delete``,
"shredding") leaves its bytes unreadable everywhere, backups included, so nothing cascades
into it and the rows are never copied elsewhere. An object is registered (``writing``)
together with its key row before its first byte reaches the store, and committed after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

import sqlalchemy as sa

from crypto.errors import KeyUnavailable
from storage.catalog.core import CatalogCore, at, lock_tenant, record, row_values
from storage.catalog.recordings import require_recording
from storage.catalog.records import DATA_CLASSES, DataClass, ObjectKeyRow, ObjectState, StoredObject
from storage.catalog.schema import object_keys, objects
from storage.errors import Conflict, Gone, NotFound

Rewrap = Callable[[ObjectKeyRow], Awaitable[tuple[str, int, bytes]]]
"""Re-wraps one DEK: given the row, returns ``(kek_id, kek_version, wrapped_dek)``."""


class Objects:
    """``catalog.objects``: the metadata of every object in the store."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def add(
        self,
        *,
        object_id: str,
        tenant_id: str,
        kind: str,
        data_class: DataClass,
        store_key: str,
        now: datetime,
        recording_id: str | None = None,
        track: str | None = None,
        key: ObjectKeyRow | None = None,
        node_id: str | None = None,
    ) -> StoredObject:
        """Register an object whose upload is starting (state ``writing``), together with
        its key row when ``key`` is given, in one transaction: the store never holds bytes
        that the catalog does not know, nor an object without its key. ``node_id``: the
        node whose spool holds its bytes until it is published."""
        if data_class not in DATA_CLASSES:
            raise ValueError(f"unknown data class {data_class!r}")
        if key is not None and (key.object_id, key.tenant_id) != (object_id, tenant_id):
            raise ValueError("the key row must belong to the object and its tenant")
        async with self._core.transaction(write=True, subject=f"Object {object_id!r}") as conn:
            # Nothing new for a deleted tenant or recording: an AI worker that was busy
            # while either was erased must not leave results behind.
            await lock_tenant(conn, tenant_id, live=True)
            if recording_id is not None:
                recording = await require_recording(conn, tenant_id, recording_id)
                if recording.status == "deleted":
                    raise Gone(f"Recording {recording_id!r} was deleted.", code="recording_deleted")
            row = (
                await conn.execute(
                    sa.insert(objects)
                    .values(
                        id=object_id,
                        tenant_id=tenant_id,
                        recording_id=recording_id,
                        kind=kind,
                        track=track,
                        data_class=data_class,
                        store_key=store_key,
                        size=None,
                        state="writing",
                        created_at=now,
                        committed_at=None,
                        deleted_at=None,
                        node_id=node_id,
                    )
                    .returning(*objects.c)
                )
            ).one()
            if key is not None:
                await conn.execute(sa.insert(object_keys).values(**row_values(key)))
        return record(StoredObject, row)

    async def mark_committed(self, object_id: str, size: int, now: datetime) -> StoredObject:
        """Record that the upload was committed; repeating it with the same size is a no-op,
        committing a deleted object is a ``Conflict``."""
        async with self._core.transaction(write=True) as conn:
            row = (
                await conn.execute(
                    sa.update(objects)
                    .where(objects.c.id == object_id, objects.c.state == "writing")
                    .values(state="committed", size=size, committed_at=now)
                    .returning(*objects.c)
                )
            ).one_or_none()
            if row is None:
                row = (
                    await conn.execute(sa.select(objects).where(objects.c.id == object_id))
                ).one_or_none()
                if row is None:
                    raise NotFound(f"Object {object_id!r} not found.")
                if row.state != "committed" or row.size != size:
                    raise Conflict(f"Object {object_id!r} is {row.state}; it cannot be committed.")
        return record(StoredObject, row)

    async def relabel(
        self, object_id: str, *, tenant_id: str, kind: str, from_kind: str
    ) -> StoredObject:
        """Change a committed object's kind from ``from_kind`` to ``kind`` (a redacted
        audio track becomes the recording's audio once the original is shredded);
        repeating it is a no-op. ``NotFound`` if unknown or another tenant's."""
        async with self._core.transaction(write=True) as conn:
            await conn.execute(
                sa.update(objects)
                .where(
                    objects.c.id == object_id,
                    objects.c.tenant_id == tenant_id,
                    objects.c.kind == from_kind,
                    objects.c.state == "committed",
                )
                .values(kind=kind)
            )
            row = (
                await conn.execute(
                    sa.select(objects).where(
                        objects.c.id == object_id, objects.c.tenant_id == tenant_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"Object {object_id!r} not found.")
        return record(StoredObject, row)

    async def mark_deleted(self, object_id: str, now: datetime) -> StoredObject:
        """Record that the object was deleted from the store; repeating it keeps the first
        time."""
        return await self._core.one(
            sa.update(objects)
            .where(objects.c.id == object_id)
            .values(state="deleted", deleted_at=sa.func.coalesce(objects.c.deleted_at, at(now)))
            .returning(*objects.c),
            StoredObject,
            f"Object {object_id!r} not found.",
            write=True,
        )

    async def get(self, object_id: str, tenant_id: str) -> StoredObject:
        """The tenant's object; ``NotFound`` if unknown or another tenant's."""
        return await self._core.one(
            sa.select(objects).where(objects.c.id == object_id, objects.c.tenant_id == tenant_id),
            StoredObject,
            f"Object {object_id!r} not found.",
        )

    async def tracks(
        self, tenant_id: str, recording_ids: Sequence[str], *, kind: str
    ) -> dict[str, list[str]]:
        """The track names of each recording's objects of ``kind`` (not deleted), sorted;
        one query for a whole page of recordings."""
        if not recording_ids:
            return {}
        stmt = (
            sa.select(objects.c.recording_id, objects.c.track)
            .where(
                objects.c.tenant_id == tenant_id,
                objects.c.recording_id.in_(list(recording_ids)),
                objects.c.kind == kind,
                objects.c.state != "deleted",
                objects.c.track.is_not(None),
            )
            .distinct()
        )
        async with self._core.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        tracks: dict[str, list[str]] = {recording_id: [] for recording_id in recording_ids}
        for recording_id, track in rows:
            tracks[recording_id].append(track)
        return {recording_id: sorted(names) for recording_id, names in tracks.items()}

    async def of_recordings(
        self, tenant_id: str, recording_ids: Sequence[str]
    ) -> dict[str, list[StoredObject]]:
        """The objects of each recording (every state), oldest first; one query for a whole
        page of recordings."""
        found: dict[str, list[StoredObject]] = {recording_id: [] for recording_id in recording_ids}
        if not recording_ids:
            return found
        stmt = sa.select(objects).where(
            objects.c.tenant_id == tenant_id, objects.c.recording_id.in_(list(recording_ids))
        )
        for stored in await self._core.all(
            stmt.order_by(objects.c.created_at, objects.c.id), StoredObject
        ):
            assert stored.recording_id is not None  # noqa: S101 - selected by it
            found[stored.recording_id].append(stored)
        return found

    async def list(
        self,
        tenant_id: str,
        *,
        recording_id: str | None = None,
        state: ObjectState | None = None,
    ) -> list[StoredObject]:
        """The tenant's objects (of one recording, in one state), oldest first."""
        stmt = sa.select(objects).where(objects.c.tenant_id == tenant_id)
        if recording_id is not None:
            stmt = stmt.where(objects.c.recording_id == recording_id)
        if state is not None:
            stmt = stmt.where(objects.c.state == state)
        return await self._core.all(stmt.order_by(objects.c.created_at, objects.c.id), StoredObject)


class Keys:
    """``catalog.keys``: the key table (wrapped DEKs, one row per object)."""

    def __init__(self, core: CatalogCore) -> None:
        self._core = core

    async def put(self, row: ObjectKeyRow) -> None:
        """Store the wrapped DEK of a new object; ``Conflict`` if the object has one."""
        subject = f"The key of {row.object_id!r}"
        async with self._core.transaction(write=True, subject=subject) as conn:
            await conn.execute(sa.insert(object_keys).values(**row_values(row)))

    async def get(self, object_id: str, tenant_id: str) -> ObjectKeyRow:
        """The key row of the tenant's object; ``KeyUnavailable`` if there is none (shredded,
        never stored, or another tenant's object: the three are not told apart)."""
        return await self._core.one(
            sa.select(object_keys).where(
                object_keys.c.object_id == object_id, object_keys.c.tenant_id == tenant_id
            ),
            ObjectKeyRow,
            f"The data key of object {object_id!r} was shredded or never existed.",
            error=KeyUnavailable,
        )

    async def delete(self, object_id: str) -> bool:
        """Shred: delete the object's key row (one row, nothing cascades). ``False`` if there
        was none, so shredding twice is harmless."""
        async with self._core.transaction(write=True) as conn:
            result = await conn.execute(
                sa.delete(object_keys).where(object_keys.c.object_id == object_id)
            )
        await self._core.forget_deleted_rows()
        return result.rowcount == 1

    async def delete_all(self, tenant_id: str) -> int:
        """Shred every object of the tenant; returns how many keys were deleted."""
        async with self._core.transaction(write=True) as conn:
            result = await conn.execute(
                sa.delete(object_keys).where(object_keys.c.tenant_id == tenant_id)
            )
        await self._core.forget_deleted_rows()
        return result.rowcount

    async def rewrap(
        self,
        tenant_id: str,
        rewrap: Rewrap,
        now: datetime,
        *,
        target_version: int,
        batch_size: int = 100,
    ) -> int:
        """Re-wrap every DEK of the tenant whose KEK version is older than ``target_version``.

        Rows go in batches: a batch is read, ``rewrap`` is awaited for each row with no
        transaction open (it may call a KMS), then the batch is written in one transaction.
        A row is written only if it still has the KEK version it was read with, so a
        concurrent rewrap or shred is never overwritten, and a crash leaves finished batches
        done and the rest untouched: running this again completes the job. Returns how many
        rows this call re-wrapped.
        """
        done = 0
        after: str | None = None
        while True:
            stmt = sa.select(object_keys).where(
                object_keys.c.tenant_id == tenant_id, object_keys.c.kek_version < target_version
            )
            rows = await self._core.page(
                stmt, object_keys.c.object_id, ObjectKeyRow, after=after, limit=batch_size
            )
            if not rows:
                return done
            rewrapped = []
            for row in rows:
                kek_id, kek_version, wrapped_dek = await rewrap(row)
                if kek_version != target_version:
                    raise ValueError(
                        f"rewrap gave KEK version {kek_version} for {row.object_id!r}, "
                        f"expected {target_version}"
                    )
                rewrapped.append((row, kek_id, wrapped_dek))
            async with self._core.transaction(write=True) as conn:
                for row, kek_id, wrapped_dek in rewrapped:
                    result = await conn.execute(
                        _replace_wrap(row, kek_id, target_version, wrapped_dek, now)
                    )
                    done += result.rowcount
            after = rows[-1].object_id

    async def replace_wrap(
        self, row: ObjectKeyRow, kek_id: str, kek_version: int, wrapped_dek: bytes, now: datetime
    ) -> bool:
        """Store a new wrap of ``row``'s DEK, only if the row still has the KEK version it
        was read with (a concurrent rewrap or shred is never overwritten); ``False`` if
        it had not."""
        async with self._core.transaction(write=True) as conn:
            result = await conn.execute(_replace_wrap(row, kek_id, kek_version, wrapped_dek, now))
        return result.rowcount == 1

    async def versions_in_use(self, tenant_id: str) -> dict[tuple[str, int], int]:
        """How many key rows of the tenant each ``(kek_id, kek_version)`` wraps, counted in
        one statement (what ``keys retire`` must keep). Rows of objects still being
        written count: their DEK is wrapped already."""
        stmt = (
            sa.select(object_keys.c.kek_id, object_keys.c.kek_version, sa.func.count())
            .where(object_keys.c.tenant_id == tenant_id)
            .group_by(object_keys.c.kek_id, object_keys.c.kek_version)
        )
        async with self._core.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return {(kek_id, int(version)): int(count) for kek_id, version, count in rows}

    async def list(self, tenant_id: str, *, page_size: int = 500) -> AsyncIterator[ObjectKeyRow]:
        """Every key row of the tenant by object id, read a page per transaction (no
        connection is held while the caller works on a page)."""
        after: str | None = None
        while True:
            stmt = sa.select(object_keys).where(object_keys.c.tenant_id == tenant_id)
            page = await self._core.page(
                stmt, object_keys.c.object_id, ObjectKeyRow, after=after, limit=page_size
            )
            for row in page:
                yield row
            if len(page) < page_size:
                return
            after = page[-1].object_id


def _replace_wrap(
    row: ObjectKeyRow, kek_id: str, kek_version: int, wrapped_dek: bytes, now: datetime
) -> sa.Update:
    """The UPDATE that re-wraps ``row`` if it is still at the KEK it was read with."""
    return (
        sa.update(object_keys)
        .where(
            object_keys.c.object_id == row.object_id,
            object_keys.c.tenant_id == row.tenant_id,
            object_keys.c.kek_id == row.kek_id,
            object_keys.c.kek_version == row.kek_version,
        )
        .values(
            kek_id=kek_id,
            kek_version=kek_version,
            wrapped_dek=wrapped_dek,
            rewrapped_at=now,
        )
    )
