"""The media vault keeps the at-rest promises end to end, on real parts: SQLite with the file
store (always) and PostgreSQL with SeaweedFS S3 (the deployment at scale).

No plaintext at rest, wrapped DEKs only in the key table, one shredded row makes one object
unreadable, destroyed KEKs make a tenant's objects unreadable, rotation re-wraps without
rewriting objects, and another tenant's object is never found.
"""

from __future__ import annotations

import array
import base64
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from crypto.auditkeys import AuditKeyring
from crypto.errors import DecryptionFailed, KeyUnavailable
from crypto.keys import KekRef, LocalKeyring, WrappedKey, dek_context
from crypto.objectformat import unwrap_key, wrap_key
from storage.catalog import Catalog, ObjectKeyRow
from storage.errors import NotFound
from storage.filestore import FileStore
from storage.s3 import S3Store
from storage.store import ObjectStore
from storage.vault import MediaVault
from tests.conftest import S3Server
from tests.keyring import audit_keyring

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
MASTER = bytes(range(32))
# Recognisable "audio": if any 64-byte run of it shows up at rest, plaintext leaked.
AUDIO = b"".join(b"caller says: my card is 4111-1111-1111-%04d. " % i for i in range(6000))


@dataclass
class Parts:
    vault: MediaVault
    catalog: Catalog
    store: ObjectStore
    keyring: LocalKeyring
    data_dir: Path
    database_url: str


@pytest.fixture(
    params=[
        "file+sqlite",
        pytest.param(
            "s3+postgresql",
            marks=[pytest.mark.integration, pytest.mark.s3, pytest.mark.postgres],
        ),
    ]
)
async def parts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Parts]:
    store: ObjectStore
    if request.param == "file+sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}"
        store = FileStore(tmp_path / "objects")
    else:
        database_url = request.getfixturevalue("database_url_postgresql")
        server: S3Server = request.getfixturevalue("seaweedfs")
        store = S3Store(
            bucket=request.getfixturevalue("s3_bucket"),
            endpoint_url=server.endpoint_url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
        )
    keyring = LocalKeyring.open(tmp_path / "keys", MASTER)
    catalog = await Catalog.open(database_url, audit_keys=AuditKeyring(keyring))
    await catalog.migrate()
    for tenant in ("acme", "globex"):
        await catalog.tenants.create(tenant, tenant.title(), "eu", T0)
    vault = MediaVault(catalog=catalog, store=store, keys=keyring, segment_size=4096)
    try:
        yield Parts(vault, catalog, store, keyring, tmp_path, database_url)
    finally:
        await store.close()
        await catalog.close()


async def seal_audio(vault: MediaVault, tenant: str = "acme", audio: bytes = AUDIO) -> str:
    """Stream audio in like the gateway does: small writes, a flush every ~2 s of audio."""
    upload = await vault.create_object(
        tenant=tenant, kind="audio", data_class="recordings", track="inbound", now=T0
    )
    for i in range(0, len(audio), 1000):
        await upload.write(audio[i : i + 1000])
        if i % 16000 == 0:
            await upload.flush()
    record = await upload.commit(now=T0)
    assert record.state == "committed"
    assert record.size is not None and record.size > len(audio)
    return upload.object_id


async def everything_at_rest(parts: Parts) -> bytes:
    """Every byte callvault keeps: object store, catalog database (files or a dump of every
    table) and keyring."""
    blobs: list[bytes] = []
    async for key in parts.store.list_keys(""):
        blobs += [chunk async for chunk in parts.store.read(key)]
    for path in parts.data_dir.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
    if parts.catalog.backend == "postgresql":
        engine = create_async_engine(parts.database_url)
        try:
            async with engine.connect() as conn:
                for table in ("objects", "object_keys", "audit_events", "tenants"):
                    for row in await conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608
                        blobs.append(repr(tuple(row)).encode())
        finally:
            await engine.dispose()
    return b"\n".join(blobs)


async def test_streamed_audio_round_trips_and_no_plaintext_is_at_rest(parts: Parts) -> None:
    object_id = await seal_audio(parts.vault)
    stream = await parts.vault.open_object("acme", object_id)
    assert b"".join([chunk async for chunk in stream]) == AUDIO
    assert await parts.vault.read_object("acme", object_id) == AUDIO

    at_rest = await everything_at_rest(parts)
    assert len(at_rest) > len(AUDIO)
    for i in range(0, len(AUDIO) - 64, 997):
        assert AUDIO[i : i + 64] not in at_rest, f"plaintext at offset {i} found at rest"


async def test_wrapped_dek_lives_only_in_the_key_table(parts: Parts) -> None:
    object_id = await seal_audio(parts.vault)
    row = await parts.catalog.keys.get(object_id, tenant_id="acme")
    record = await parts.catalog.objects.get(object_id, tenant_id="acme")
    sealed = b"".join([chunk async for chunk in parts.store.read(record.store_key)])
    assert row.wrapped_dek not in sealed
    assert base64.b64encode(row.wrapped_dek) not in sealed
    assert row.kek_id.encode() in sealed  # the header records which KEK sealed it first


async def test_shredding_one_row_makes_exactly_that_object_unreadable(parts: Parts) -> None:
    doomed = await seal_audio(parts.vault)
    kept = await seal_audio(parts.vault)
    record = await parts.catalog.objects.get(doomed, tenant_id="acme")
    wrapped = (await parts.catalog.keys.get(doomed, tenant_id="acme")).wrapped_dek

    await parts.vault.shred_object("acme", doomed, now=T0)

    with pytest.raises(KeyUnavailable, match="shredded"):
        await parts.catalog.keys.get(doomed, tenant_id="acme")
    assert not await parts.store.exists(record.store_key)
    assert (await parts.catalog.objects.get(doomed, tenant_id="acme")).state == "deleted"
    with pytest.raises(NotFound):
        await parts.vault.open_object("acme", doomed)
    assert await parts.vault.read_object("acme", kept) == AUDIO
    # A backup copy of the sealed bytes is useless: the wrapped DEK is gone from everything
    # callvault keeps (on SQLite: the database file and its write-ahead log included).
    assert wrapped not in await everything_at_rest(parts)
    if parts.catalog.backend == "sqlite":
        assert list(parts.data_dir.glob("catalog.sqlite3*"))


async def test_shredding_is_idempotent_and_finishes_after_a_crash(parts: Parts) -> None:
    object_id = await seal_audio(parts.vault)
    record = await parts.catalog.objects.get(object_id, tenant_id="acme")
    # Crash after step 1 (DEK destroyed) and before the bytes were deleted.
    await parts.catalog.keys.delete(object_id)
    assert await parts.store.exists(record.store_key)
    await parts.vault.shred_object("acme", object_id, now=T0)
    assert not await parts.store.exists(record.store_key)
    assert (await parts.catalog.objects.get(object_id, tenant_id="acme")).state == "deleted"
    await parts.vault.shred_object("acme", object_id, now=T0)  # again: harmless


async def test_another_tenants_object_is_not_found(parts: Parts) -> None:
    object_id = await seal_audio(parts.vault, tenant="acme")
    with pytest.raises(NotFound):
        await parts.vault.open_object("globex", object_id)
    with pytest.raises(NotFound):
        await parts.vault.shred_object("globex", object_id, now=T0)
    assert await parts.vault.read_object("acme", object_id) == AUDIO


async def test_object_copied_under_another_tenants_key_does_not_open(parts: Parts) -> None:
    """Even with the bytes moved to globex's object and globex's DEK row, the header's
    tenant and object id, bound into the keys, refuse to open."""
    acme_id = await seal_audio(parts.vault, tenant="acme")
    globex_id = await seal_audio(parts.vault, tenant="globex", audio=b"globex" * 1000)
    acme = await parts.catalog.objects.get(acme_id, tenant_id="acme")
    globex = await parts.catalog.objects.get(globex_id, tenant_id="globex")
    stolen = b"".join([chunk async for chunk in parts.store.read(acme.store_key)])
    await parts.store.put(globex.store_key, stolen)
    with pytest.raises(DecryptionFailed, match="another tenant"):
        await parts.vault.read_object("globex", globex_id)


async def test_rotation_rewraps_every_dek_without_rewriting_objects(parts: Parts) -> None:
    before = await seal_audio(parts.vault)
    record = await parts.catalog.objects.get(before, tenant_id="acme")
    sealed_before = b"".join([chunk async for chunk in parts.store.read(record.store_key)])
    other_tenant = await seal_audio(parts.vault, tenant="globex")

    report = await parts.vault.rotate_tenant_keys("acme", actor="test", now=T0)
    assert (report.kek_version, report.rewrapped) == (2, 1)
    after = await seal_audio(parts.vault)

    for object_id in (before, after):
        row = await parts.catalog.keys.get(object_id, tenant_id="acme")
        assert row.kek_version == 2
        assert await parts.vault.read_object("acme", object_id) == AUDIO
    assert b"".join([c async for c in parts.store.read(record.store_key)]) == sealed_before
    globex_row = await parts.catalog.keys.get(other_tenant, tenant_id="globex")
    assert globex_row.kek_version == 1
    events = await parts.catalog.audit.list("acme")
    assert [(e.action, e.detail) for e in events] == [
        ("keys.rotated", {"kek_version": 2, "rewrapped": 1})
    ]
    again = await parts.vault.rotate_tenant_keys("acme", actor="test", now=T0)
    assert (again.kek_version, again.rewrapped) == (3, 2)


async def test_destroying_a_tenants_keks_makes_all_its_objects_unreadable(parts: Parts) -> None:
    acme_ids = [await seal_audio(parts.vault) for _ in range(2)]
    globex_id = await seal_audio(parts.vault, tenant="globex")
    await parts.keyring.destroy_tenant("acme")
    for object_id in acme_ids:
        with pytest.raises(KeyUnavailable, match="acme"):
            await parts.vault.read_object("acme", object_id)
    assert await parts.vault.read_object("globex", globex_id) == AUDIO


async def test_aborted_upload_leaves_nothing_readable(parts: Parts) -> None:
    upload = await parts.vault.create_object(
        tenant="acme", kind="audio", data_class="recordings", now=T0
    )
    await upload.write(AUDIO[:10000])
    await upload.flush()
    await upload.abort(now=T0)
    assert [key async for key in parts.store.list_keys("acme/")] == []
    assert (await parts.catalog.objects.get(upload.object_id, tenant_id="acme")).state == "deleted"
    with pytest.raises(KeyUnavailable):
        await parts.catalog.keys.get(upload.object_id, tenant_id="acme")


async def test_corrupted_object_fails_naming_the_segment_and_is_counted(parts: Parts) -> None:
    object_id = await seal_audio(parts.vault)
    record = await parts.catalog.objects.get(object_id, tenant_id="acme")
    sealed = bytearray(b"".join([c async for c in parts.store.read(record.store_key)]))
    sealed[len(sealed) // 2] ^= 0x01
    await parts.store.put(record.store_key, bytes(sealed))
    released = bytearray()
    with pytest.raises(DecryptionFailed) as failed:
        async for chunk in await parts.vault.open_object("acme", object_id):
            released += chunk
    assert failed.value.segment is not None and failed.value.segment > 0
    assert AUDIO.startswith(bytes(released))
    # Whatever came out before the failure is verified audio from segments before it.
    assert len(released) <= failed.value.segment * 4096
    with pytest.raises(DecryptionFailed):
        await parts.vault.read_object("acme", object_id)
    assert parts.vault.metrics.decryption_failures._value.get() == 2


async def test_samples_are_sealed_as_bytes_and_counted_in_bytes(parts: Parts) -> None:
    samples = array.array("h", range(-4000, 4000))  # int16 L16 audio, as ingest may pass it
    upload = await parts.vault.create_object(
        tenant="acme", kind="audio", data_class="recordings", now=T0
    )
    await upload.write(memoryview(samples))
    await upload.commit(now=T0)
    assert await parts.vault.read_object("acme", upload.object_id) == samples.tobytes()
    assert parts.vault.metrics.bytes_sealed._value.get() == 16000


async def test_small_objects_round_trip_with_put_object(parts: Parts) -> None:
    transcript = b'{"segments": [{"track": "inbound", "text": "I want to cancel"}]}'
    record = await parts.vault.put_object(
        transcript, tenant="acme", kind="transcript", data_class="transcripts", now=T0
    )
    assert record.data_class == "transcripts"
    assert await parts.vault.read_object("acme", record.id) == transcript


def test_store_keys_refuse_unsafe_tenant_ids() -> None:
    assert MediaVault.store_key("acme", "ab12") == "acme/objects/ab12"
    for tenant in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="invalid object key"):
            MediaVault.store_key(tenant, "ab12")


def test_master_key_never_in_keyring_file(tmp_path: Path) -> None:
    LocalKeyring.open(tmp_path, MASTER)
    assert MASTER not in (tmp_path / "keyring.json").read_bytes()
    assert base64.b64encode(MASTER) not in (tmp_path / "keyring.json").read_bytes()
    assert os.stat(tmp_path / "keyring.json").st_mode & 0o077 == 0


class KmsLikeProvider:
    """A second ``KeyProvider``, shaped like a KMS or Vault transit engine: KEK material
    never leaves it, callers get opaque ciphertext blobs. Proves the vault needs nothing
    but the protocol."""

    def __init__(self) -> None:
        self.keks: dict[str, dict[int, bytes]] = {}
        self.calls: list[str] = []

    async def wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        self.calls.append("wrap")
        versions = self.keks.setdefault(tenant, {1: os.urandom(32)})
        version = max(versions)
        context = dek_context(tenant, object_id, f"kms-{tenant}", version)
        return WrappedKey(
            f"kms-{tenant}", version, wrap_key(versions[version], dek, context=context)
        )

    async def unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        self.calls.append("unwrap")
        kek = self.keks.get(tenant, {}).get(wrapped.kek_version)
        if kek is None:
            raise KeyUnavailable(f"KMS has no key version {wrapped.kek_version} for {tenant}")
        context = dek_context(tenant, object_id, wrapped.kek_id, wrapped.kek_version)
        return unwrap_key(kek, wrapped.blob, context=context)

    async def rotate(self, tenant: str) -> KekRef:
        self.calls.append("rotate")
        versions = self.keks[tenant]
        versions[max(versions) + 1] = os.urandom(32)
        return KekRef(f"kms-{tenant}", max(versions))

    async def destroy_tenant(self, tenant: str) -> None:
        self.keks.pop(tenant, None)


@pytest.fixture
async def kms_vault(tmp_path: Path) -> AsyncIterator[tuple[MediaVault, KmsLikeProvider]]:
    """A vault on SQLite and the file store whose keys come from ``KmsLikeProvider``."""
    catalog = await Catalog.open(
        f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}",
        audit_keys=audit_keyring(tmp_path / "audit-keys"),
    )
    await catalog.migrate()
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    store = FileStore(tmp_path / "objects")
    kms = KmsLikeProvider()
    try:
        yield MediaVault(catalog=catalog, store=store, keys=kms, segment_size=4096), kms
    finally:
        await store.close()
        await catalog.close()


async def test_the_vault_works_with_any_key_provider(
    kms_vault: tuple[MediaVault, KmsLikeProvider],
) -> None:
    vault, kms = kms_vault
    object_id = await seal_audio(vault)
    report = await vault.rotate_tenant_keys("acme", actor="test", now=T0)
    assert (report.kek_id, report.kek_version, report.rewrapped) == ("kms-acme", 2, 1)
    assert await vault.read_object("acme", object_id) == AUDIO
    await kms.destroy_tenant("acme")
    with pytest.raises(KeyUnavailable, match="KMS"):
        await vault.read_object("acme", object_id)
    # seal; rotate; re-wrap (unwrap + wrap); read; the refused read after destruction
    assert kms.calls == ["wrap", "rotate", "unwrap", "wrap", "unwrap", "unwrap"]


async def test_rotation_catches_a_dek_wrapped_under_the_old_version_during_the_pass(
    kms_vault: tuple[MediaVault, KmsLikeProvider],
) -> None:
    """``keys rotate`` runs beside ``serve``: a DEK that serve wrapped under the old version
    just before it saw the rotation may commit its row while the re-wrap pass runs, behind
    the pass's cursor. It must still end up under the new version."""
    vault, kms = kms_vault
    catalog = vault.catalog
    late_id = "0" * 32  # sorts before every random object id: behind the cursor
    unwrap = kms.unwrap
    serve_committed = False

    async def unwrap_while_serve_commits(tenant: str, object_id: str, w: WrappedKey) -> bytes:
        nonlocal serve_committed
        if not serve_committed:  # serve's late row lands during the first pass
            serve_committed = True
            context = dek_context("acme", late_id, "kms-acme", 1)
            blob = wrap_key(kms.keks["acme"][1], bytes(32), context=context)
            await catalog.objects.add(
                object_id=late_id, tenant_id="acme", kind="audio", data_class="recordings",
                store_key=MediaVault.store_key("acme", late_id), now=T0,
                key=ObjectKeyRow(late_id, "acme", "kms-acme", 1, blob, T0),
            )  # fmt: skip
        return await unwrap(tenant, object_id, w)

    for _ in range(3):
        await seal_audio(vault, audio=b"short call" * 100)
    kms.unwrap = unwrap_while_serve_commits  # type: ignore[method-assign]
    report = await vault.rotate_tenant_keys("acme", actor="test", now=T0)
    assert report.rewrapped == 4
    late = await catalog.keys.get(late_id, tenant_id="acme")
    assert late.kek_version == 2
    assert await kms.unwrap("acme", late_id, WrappedKey(late.kek_id, 2, late.wrapped_dek))
