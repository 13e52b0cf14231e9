"""Key administration on real parts: KEK versions retired once no DEK row uses them (the
catalog on SQLite and PostgreSQL), races with writers and readers that hold a stale view of
the keyring, the master key rotated under a running gateway and from the command line (key
file and ``CALLVAULT_MASTER_KEY``), and the warning about a key file beside a gateway that
faces a network."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from crypto import keyfile
from crypto.auditkeys import AuditKeyring
from crypto.errors import ConfigError, DecryptionFailed
from crypto.keyfile import in_rotation
from crypto.keys import (
    KEYRING_FILE,
    MASTER_KEY_FILE,
    PLAIN_SECTIONS,
    WRAPPED_SECTIONS,
    LocalKeyring,
    WrappedKey,
)
from crypto.masterkey import (
    OLD_KEY_FILE,
    KeyFileRotation,
    load_master_key,
    master_key_source,
    read_key_file,
)
from crypto.objectformat import unwrap_key
from gateway.keyadmin import warn_about_master_key
from gateway.services import open_services
from gateway.settings import Settings
from storage.catalog import AuditCheck, Catalog, async_database_url
from storage.catalog.schema import instructions
from storage.filestore import FileStore
from storage.instructions import SealedSecret, parse_instructions, parse_stored_instructions
from storage.vault import MediaVault
from storage.webhooksecret import open_secret, seal_clear_secrets, store_instructions
from tests.gateway import ULAW, Gateway, bearer, read_wav, record_call

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLVAULT_")}
    return {**env, **extra}


def callvault(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env=env or clean_env(),
        check=False,
    )


WILDCARD = "0.0.0.0"  # noqa: S104 - the address whose exposure is warned about
RECORDING_ON = {"recording": {"enabled": True}, "consent": {"required": False}}


@dataclass
class Parts:
    catalog: Catalog
    keyring: LocalKeyring
    vault: MediaVault
    keys_dir: Path


@pytest.fixture
async def parts(database_url: str, tmp_path: Path) -> AsyncIterator[Parts]:
    keyring = LocalKeyring.open(tmp_path / "keys", bytes(range(32)))
    # The audit log keyed from the same keyring, as ``open_services`` does.
    catalog = await Catalog.open(database_url, audit_keys=AuditKeyring(keyring))
    await catalog.migrate()
    await catalog.tenants.create("acme", "Acme", "eu", T0)
    store = FileStore(tmp_path / "objects")
    vault = MediaVault(catalog=catalog, store=store, keys=keyring, segment_size=4096)
    try:
        yield Parts(catalog, keyring, vault, tmp_path / "keys")
    finally:
        await store.close()
        await catalog.close()


def operator(parts: Parts) -> MediaVault:
    """``callvault keys ...`` in another process: its own keyring on the same file."""
    keyring = LocalKeyring.open(parts.keys_dir, bytes(range(32)))
    return MediaVault(catalog=parts.catalog, store=parts.vault.store, keys=keyring)


async def put(vault: MediaVault, text: bytes) -> str:
    record = await vault.put_object(
        text, tenant="acme", kind="transcript", data_class="transcripts", now=T0
    )
    return record.id


async def kek_version(parts: Parts, object_id: str) -> int:
    return (await parts.catalog.keys.get(object_id, tenant_id="acme")).kek_version


# --- keys retire ---------------------------------------------------------------------------


async def test_retire_removes_only_versions_that_are_not_current_and_unreferenced(
    parts: Parts,
) -> None:
    first = await put(parts.vault, b"sealed under version 1")
    await parts.keyring.rotate("acme")  # version 2: nothing is wrapped under it
    await parts.keyring.rotate("acme")  # version 3: current, nothing wrapped under it yet
    retired = await parts.vault.retire_unused_keks("acme", actor="test", now=T0)
    assert retired is not None
    assert (retired.retired, retired.kept) == ((2,), (1, 3))  # 1 is referenced, 3 current
    assert await parts.vault.read_object("acme", first) == b"sealed under version 1"

    await parts.vault.rotate_tenant_keys("acme", actor="test", now=T0)  # version 4
    assert await kek_version(parts, first) == 4
    retired = await parts.vault.retire_unused_keks("acme", actor="test", now=T0)
    assert retired is not None
    assert (retired.retired, retired.kept) == ((1, 3), (4,))
    assert await parts.vault.read_object("acme", first) == b"sealed under version 1"
    again = await parts.vault.retire_unused_keks("acme", actor="test", now=T0)
    assert again is not None and again.retired == ()

    events = [(e.action, e.detail) for e in await parts.catalog.audit.list("acme")]
    assert events == [
        ("keys.retired", {"kek_versions": [2]}),
        ("keys.rotated", {"kek_version": 4, "rewrapped": 1}),
        ("keys.retired", {"kek_versions": [1, 3]}),
    ]
    assert (await parts.catalog.audit.verify("acme")).ok
    doc = orjson.loads((parts.keys_dir / KEYRING_FILE).read_bytes())
    assert list(doc["tenants"]["acme"]["versions"]) == ["4"]


async def test_a_retired_version_no_longer_opens_a_copy_of_its_old_row(parts: Parts) -> None:
    """What retirement is for: a DEK row copied before ``keys rotate`` (a catalog backup)
    opened with the old KEK; once the version is retired, it opens with nothing."""
    object_id = await put(parts.vault, b"old secret")
    row = await parts.catalog.keys.get(object_id, tenant_id="acme")
    copied = WrappedKey(row.kek_id, row.kek_version, row.wrapped_dek)
    await parts.vault.rotate_tenant_keys("acme", actor="test", now=T0)
    assert await parts.keyring.unwrap("acme", object_id, copied)  # still opens: not retired
    await parts.vault.retire_unused_keks("acme", actor="test", now=T0)
    for keyring in (parts.keyring, LocalKeyring.open(parts.keys_dir, bytes(range(32)))):
        with pytest.raises(Exception, match="unknown, retired or destroyed"):
            await keyring.unwrap("acme", object_id, copied)


class StaleWriter(LocalKeyring):
    """``serve`` wrapping a DEK under the version it believed current, while an operator
    rotates and retires that version before the key row reaches the catalog."""

    operator: MediaVault | None = None

    async def wrap(self, tenant: str, object_id: str, dek: bytes) -> WrappedKey:
        wrapped = await super().wrap(tenant, object_id, dek)
        if self.operator is not None:
            busy, self.operator = self.operator, None
            await busy.rotate_tenant_keys(tenant, actor="operator", now=T0)
            retired = await busy.retire_unused_keks(tenant, actor="operator", now=T0)
            assert retired is not None and wrapped.kek_version in retired.retired
        return wrapped


async def test_a_wrap_under_a_version_retired_before_its_row_landed_is_made_again(
    parts: Parts,
) -> None:
    serve = StaleWriter.open(parts.keys_dir, bytes(range(32)))
    vault = MediaVault(catalog=parts.catalog, store=parts.vault.store, keys=serve)
    await put(vault, b"before")  # version 1 exists
    serve.operator = operator(parts)
    object_id = await put(vault, b"sealed while version 1 was retired")
    assert await kek_version(parts, object_id) == 2
    reopened = MediaVault(catalog=parts.catalog, store=parts.vault.store, keys=operator(parts).keys)
    assert await reopened.read_object("acme", object_id) == b"sealed while version 1 was retired"
    states = [o.state for o in await parts.catalog.objects.list("acme")]
    assert sorted(states) == ["committed", "committed", "deleted"]  # the first try, shredded


async def test_retire_puts_back_a_version_that_gained_a_row_between_its_counts(
    parts: Parts,
) -> None:
    """The row of a stale wrap lands after retire's first count: the second count sees it
    and the version is put back, so the object opens."""
    await put(parts.vault, b"under version 1")
    kek = parts.keyring.current("acme")
    assert kek is not None
    await parts.keyring.rotate("acme")
    counts = 0

    async def in_use() -> set[tuple[str, int]]:
        nonlocal counts
        counts += 1
        return {(kek.kek_id, 2)} if counts == 1 else {(kek.kek_id, 1), (kek.kek_id, 2)}

    await parts.vault.rotate_tenant_keys("acme", actor="test", now=T0)  # v1 now unused
    retired = await parts.keyring.retire_unused("acme", in_use)
    assert retired is not None and retired.retired == () and 1 in retired.kept
    doc = orjson.loads((parts.keys_dir / KEYRING_FILE).read_bytes())
    assert "1" in doc["tenants"]["acme"]["versions"]


async def test_a_referenced_version_is_never_removed_even_for_a_moment(parts: Parts) -> None:
    await put(parts.vault, b"under version 1")
    await parts.keyring.rotate("acme")  # 1 referenced, 2 current
    await parts.keyring.rotate("acme")  # 2 unreferenced, 3 current
    in_file: list[set[str]] = []

    async def in_use() -> set[tuple[str, int]]:
        doc = orjson.loads((parts.keys_dir / KEYRING_FILE).read_bytes())
        in_file.append(set(doc["tenants"]["acme"]["versions"]))
        return set(await parts.catalog.keys.versions_in_use("acme"))

    retired = await parts.keyring.retire_unused("acme", in_use)
    assert retired is not None and retired.retired == (2,)
    assert in_file == [{"1", "2", "3"}, {"1", "3"}]  # read before and after the removal


class RacedReader(LocalKeyring):
    """A reader that read the key row under version 1; before it unwraps, ``keys rotate``
    re-wraps the row and ``keys retire`` removes version 1."""

    operator: MediaVault | None = None

    async def unwrap(self, tenant: str, object_id: str, wrapped: WrappedKey) -> bytes:
        if self.operator is not None:
            busy, self.operator = self.operator, None
            await busy.rotate_tenant_keys(tenant, actor="operator", now=T0)
            await busy.retire_unused_keks(tenant, actor="operator", now=T0)
        return await super().unwrap(tenant, object_id, wrapped)


async def test_a_read_racing_rotation_and_retirement_reads_the_key_row_again(
    parts: Parts,
) -> None:
    object_id = await put(parts.vault, b"read during maintenance")
    reader = RacedReader.open(parts.keys_dir, bytes(range(32)))
    vault = MediaVault(catalog=parts.catalog, store=parts.vault.store, keys=reader)
    reader.operator = operator(parts)
    assert await vault.read_object("acme", object_id) == b"read during maintenance"
    assert await kek_version(parts, object_id) == 2


# --- the same races for a webhook secret (its DEK is a row of the key table too) -----------

SECRET = "whsec-" + "s" * 32


async def test_a_secret_sealed_while_its_version_is_retired_still_opens(parts: Parts) -> None:
    """The PUT wraps the secret's DEK under version 1; ``keys rotate`` and ``keys retire``
    remove version 1 before the version's row lands: the writer re-wraps what it stored."""
    serve = StaleWriter.open(parts.keys_dir, bytes(range(32)))
    await put(parts.vault, b"before")  # version 1 exists
    serve.operator = operator(parts)
    doc = parse_instructions({"webhook": {"url": "https://example.com/h", "secret": SECRET}})
    row = await store_instructions(parts.catalog, serve, "acme", doc, created_by="t", now=T0)
    sealed = parse_stored_instructions(row.document).webhook.secret
    assert isinstance(sealed, SealedSecret)
    assert (await parts.catalog.keys.get(sealed.key_id, tenant_id="acme")).kek_version == 2
    assert await open_secret(parts.catalog, operator(parts).keys, "acme", sealed) == SECRET


async def test_opening_a_secret_racing_rotation_and_retirement(parts: Parts) -> None:
    doc = parse_instructions({"webhook": {"url": "https://example.com/h", "secret": SECRET}})
    row = await store_instructions(
        parts.catalog, parts.keyring, "acme", doc, created_by="t", now=T0
    )
    sealed = parse_stored_instructions(row.document).webhook.secret
    assert isinstance(sealed, SealedSecret)
    reader = RacedReader.open(parts.keys_dir, bytes(range(32)))
    reader.operator = operator(parts)
    assert await open_secret(parts.catalog, reader, "acme", sealed) == SECRET
    assert (await parts.catalog.keys.get(sealed.key_id, tenant_id="acme")).kek_version == 2


async def test_a_clear_secret_sealed_at_start_while_its_version_is_retired_still_opens(
    parts: Parts, database_url: str
) -> None:
    """The same race for a secret an older callvault wrote in clear, sealed at start."""
    await put(parts.vault, b"before")  # version 1 exists
    engine = create_async_engine(async_database_url(database_url, Path(".")))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(instructions).values(
                    tenant_id="acme",
                    version=1,
                    document={"webhook": {"url": "https://example.com/h", "secret": SECRET}},
                    created_at=T0,
                    created_by="tok_old",
                )
            )
    finally:
        await engine.dispose()
    serve = StaleWriter.open(parts.keys_dir, bytes(range(32)))
    serve.operator = operator(parts)
    assert await seal_clear_secrets(parts.catalog, serve, now=T0) == 1
    latest = await parts.catalog.instructions.latest("acme")
    assert latest is not None
    sealed = parse_stored_instructions(latest.document).webhook.secret
    assert isinstance(sealed, SealedSecret)
    assert (await parts.catalog.keys.get(sealed.key_id, tenant_id="acme")).kek_version == 2
    assert await open_secret(parts.catalog, operator(parts).keys, "acme", sealed) == SECRET


async def test_retiring_during_a_master_key_rotation_is_refused(parts: Parts) -> None:
    await put(parts.vault, b"x")
    await parts.keyring.rotate("acme")
    parts.keyring.begin_master_rotation(bytes(range(1, 33)))
    with pytest.raises(ConfigError, match="rotate-master"):
        await parts.vault.retire_unused_keks("acme", actor="test", now=T0)


# --- the master key under a running gateway --------------------------------------------------


async def read_audio(gateway: Gateway, tenant_token: str, recording_id: str) -> bytes:
    response = await gateway.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(tenant_token)
    )
    assert response.status == 200, await response.text()
    return await response.read()


async def test_rotate_master_under_a_running_gateway(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    """``keys rotate-master`` runs in its own process beside a live gateway whose key is
    the data dir's file: calls recorded before read back, new ones record (a new tenant's
    KEK is wrapped under the new key), and the old key opens nothing."""
    data_dir = gateway_settings.data_dir
    old = read_key_file(data_dir / MASTER_KEY_FILE)
    acme = await gateway.tenant("acme", RECORDING_ON)
    before = await record_call(gateway, acme, seed=1)

    result = callvault("--data-dir", str(data_dir), "keys", "rotate-master")
    assert result.returncode == 0, result.stderr
    assert "master key rotated" in result.stdout
    new = read_key_file(data_dir / MASTER_KEY_FILE)
    assert new != old
    for key in (old, new):
        assert base64.b64encode(key).decode() not in result.stdout + result.stderr

    _, _, pcm = read_wav(await read_audio(gateway, acme.admin, before.recording_id))
    assert (pcm[:, 0] == ULAW.decode(before.inbound)).all()
    globex = await gateway.tenant("globex", RECORDING_ON)
    after = await record_call(gateway, globex, seed=2)
    _, _, pcm = read_wav(await read_audio(gateway, globex.admin, after.recording_id))
    assert (pcm[:, 0] == ULAW.decode(after.inbound)).all()

    with pytest.raises(ConfigError, match="not the master key") as refused:
        LocalKeyring.open(data_dir, old, source=master_key_source(data_dir / MASTER_KEY_FILE))
    assert refused.value.setting == f"master key file {data_dir / MASTER_KEY_FILE}"
    fresh = LocalKeyring.open(data_dir, new)
    assert fresh.current("globex") is not None
    # The running gateway made globex's audit key after the rotation: under the new key.
    assert await AuditKeyring(fresh).audit_key("globex") is not None


async def test_a_restart_finishes_a_file_rotation_that_stopped_after_the_key_moved(
    tmp_path: Path,
) -> None:
    """Killed after the new key reached ``master.key``: processes with the old key go on
    (and may add a tenant's KEK under it); the next process to start finishes the rotation,
    re-wrapping that KEK from ``master.key.old``, and reads everything."""
    settings = Settings(data_dir=tmp_path)
    async with open_services(settings) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", T0)
        await services.catalog.tenants.create("globex", "Globex", "eu", T0)
        first = await put(services.vault, b"sealed before the rotation")
        rotation = KeyFileRotation(tmp_path)
        keyring = rotation.open_keyring()
        new = rotation.write_next()
        rotation.add_new_side(keyring, new)
        rotation.keep_old_copy(read_key_file(tmp_path / MASTER_KEY_FILE))
        rotation.install_next()
        # -- killed here; this process, still holding the old key, goes on --
        record = await services.vault.put_object(
            b"globex, after the crash", tenant="globex", kind="transcript",
            data_class="transcripts", now=T0,
        )  # fmt: skip
    async with open_services(settings) as services:  # a restart
        assert await services.vault.read_object("acme", first) == b"sealed before the rotation"
        assert await services.vault.read_object("globex", record.id) == b"globex, after the crash"
    assert not in_rotation(orjson.loads((tmp_path / KEYRING_FILE).read_bytes()))
    assert not (tmp_path / OLD_KEY_FILE).exists()
    assert read_key_file(tmp_path / MASTER_KEY_FILE) == new


# --- the master key from CALLVAULT_MASTER_KEY, on the command line --------------------------


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def key_file(path: Path, key: bytes) -> Path:
    path.write_text(b64(key) + "\n")
    os.chmod(path, 0o600)
    return path


async def seal_with(data_dir: Path, key: bytes, text: bytes, tenant: str = "acme") -> str:
    async with open_services(Settings(data_dir=data_dir, master_key=b64(key))) as services:
        if tenant not in [t.id for t in await services.catalog.tenants.list()]:
            await services.catalog.tenants.create(tenant, tenant.title(), "eu", T0)
        record = await services.vault.put_object(
            text, tenant=tenant, kind="transcript", data_class="transcripts", now=T0
        )
        return record.id


async def read_with(data_dir: Path, key: bytes, object_id: str, tenant: str = "acme") -> bytes:
    async with open_services(Settings(data_dir=data_dir, master_key=b64(key))) as services:
        return await services.vault.read_object(tenant, object_id)


async def test_rotate_master_with_the_key_from_the_environment(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    data_dir = tmp_path / "var"
    object_id = await seal_with(data_dir, old, b"sealed under the old master key")
    new_file = key_file(tmp_path / "new.key", new)

    phase_one = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--new-key-file", str(new_file),
        env=clean_env(CALLVAULT_MASTER_KEY=b64(old)),
    )  # fmt: skip
    assert phase_one.returncode == 0, phase_one.stderr
    assert "phase one done" in phase_one.stdout and "--commit" in phase_one.stdout
    for key in (old, new):  # either key opens it until the commit
        assert await read_with(data_dir, key, object_id) == b"sealed under the old master key"
    # A process restarted with the new key seals under it before the commit; one still on
    # the old key makes a new tenant's KEK, under the old key only.
    later = await seal_with(data_dir, new, b"sealed between the phases")
    globex = await seal_with(data_dir, old, b"a tenant made by the old key", tenant="globex")

    commit = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--commit",
        env=clean_env(CALLVAULT_MASTER_KEY=b64(new)),
    )  # fmt: skip
    assert commit.returncode == 2
    assert commit.stderr.startswith("callvault: --old-key-file: 1 value(s) of the keyring")
    assert await read_with(data_dir, old, globex, "globex") == b"a tenant made by the old key"
    old_file = key_file(tmp_path / "old.key", old)
    commit = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--commit",
        "--old-key-file", str(old_file), env=clean_env(CALLVAULT_MASTER_KEY=b64(new)),
    )  # fmt: skip
    assert commit.returncode == 0, commit.stderr
    assert "committed" in commit.stdout
    assert await read_with(data_dir, new, object_id) == b"sealed under the old master key"
    assert await read_with(data_dir, new, later) == b"sealed between the phases"
    assert await read_with(data_dir, new, globex, "globex") == b"a tenant made by the old key"
    refused = callvault(
        "--data-dir", str(data_dir), "keys", "retire",
        env=clean_env(CALLVAULT_MASTER_KEY=b64(old)),
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("callvault: CALLVAULT_MASTER_KEY: does not open")
    assert "not the master key" in refused.stderr
    for result in (phase_one, commit, refused):
        for key in (old, new):
            assert b64(key) not in result.stdout + result.stderr


async def test_rotate_master_rewraps_the_audit_keys_and_the_logs_and_checkpoints_verify(
    tmp_path: Path, database_url: str
) -> None:
    """The audit keys and the checkpoint signing key live in the keyring: ``keys
    rotate-master`` re-wraps them with the KEKs. After the commit the same keys open under
    the new master key, the tenants' keyed chains and their signed checkpoints verify, new
    events are keyed and new checkpoints signed by the same key, and no value of the keyring
    is wrapped under the old master key any more."""
    old, new = os.urandom(32), os.urandom(32)
    data_dir = tmp_path / "var"

    def settings(key: bytes) -> Settings:
        return Settings(data_dir=data_dir, database_url=database_url, master_key=b64(key))

    checkpoints = {}
    async with open_services(settings(old)) as services:
        catalog = services.catalog
        for tenant in ("acme", "beta"):
            await catalog.tenants.create(tenant, tenant.title(), "eu", T0)
            for i in range(3):
                await catalog.audit.append(tenant, "tok_1", "audio.read", f"rec-{i}", {"i": i}, T0)
            checkpoints[tenant] = await catalog.checkpoints.make(tenant, T0)
        signer = await services.audit_keys.checkpoint_signer()
        audit_key = await services.audit_keys.audit_key("acme")
    assert audit_key is not None and audit_key.active

    rotated = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--commit",
        "--new-key-file", str(key_file(tmp_path / "new.key", new)),
        env=clean_env(CALLVAULT_MASTER_KEY=b64(old)),
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr

    doc = orjson.loads((data_dir / KEYRING_FILE).read_bytes())
    assert {"audit_keys", "audit_signing_key"} <= set(doc)
    wrapped = keyfile.contexts(doc, WRAPPED_SECTIONS, PLAIN_SECTIONS)
    assert {place[0] for place, _ in wrapped} >= {"audit_keys", "audit_signing_key"}
    for place, context in wrapped:
        value = doc
        for part in place:
            value = value[part]
        assert isinstance(value, str), place  # one side only: the rotation is over
        unwrap_key(new, base64.b64decode(value), context=context)  # opens under the new key
        with pytest.raises(DecryptionFailed):
            unwrap_key(old, base64.b64decode(value), context=context)

    async with open_services(settings(new)) as services:
        catalog = services.catalog
        assert await services.audit_keys.audit_key("acme") == audit_key
        assert (await services.audit_keys.checkpoint_signer()).public_key == signer.public_key
        for tenant, checkpoint in checkpoints.items():
            assert checkpoint is not None
            check = await catalog.audit.verify(tenant)
            assert check == AuditCheck(True, None, checkpoint.seq, checkpoint=checkpoint.seq)
        await catalog.audit.append("acme", "tok_1", "audio.read", "rec-9", {}, T0)
        later = await catalog.checkpoints.make("acme", T0)
        assert later is not None and later.key_id == signer.key_id
        assert later.seq == checkpoints["acme"].seq + 1  # type: ignore[union-attr]
        assert await catalog.audit.verify("acme") == AuditCheck(
            True, None, later.seq, checkpoint=later.seq
        )
    with pytest.raises(ConfigError, match="not the master key"):
        async with open_services(settings(old)):
            pass


async def test_rotate_master_in_one_go_with_a_generated_key_or_one_on_stdin(
    tmp_path: Path,
) -> None:
    old = os.urandom(32)
    data_dir = tmp_path / "var"
    object_id = await seal_with(data_dir, old, b"kept")
    generated = tmp_path / "generated.key"
    result = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--commit",
        "--generate-new-key", str(generated), env=clean_env(CALLVAULT_MASTER_KEY=b64(old)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert generated.stat().st_mode & 0o777 == 0o600
    new = read_key_file(generated, source="test")
    assert b64(new) not in result.stdout + result.stderr
    assert await read_with(data_dir, new, object_id) == b"kept"
    again = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--generate-new-key",
        str(generated), env=clean_env(CALLVAULT_MASTER_KEY=b64(new)),
    )  # fmt: skip
    assert again.returncode == 2
    assert "never overwritten" in again.stderr
    assert read_key_file(generated, source="test") == new

    newest = os.urandom(32)
    piped = callvault(
        "--data-dir", str(data_dir), "keys", "rotate-master", "--commit", "--new-key-file", "-",
        env=clean_env(CALLVAULT_MASTER_KEY=b64(new)), stdin=b64(newest) + "\n",
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert await read_with(data_dir, newest, object_id) == b"kept"


async def test_abort_drops_the_new_key_and_keeps_the_old(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    data_dir = tmp_path / "var"
    object_id = await seal_with(data_dir, old, b"kept")
    new_file = key_file(tmp_path / "new.key", new)
    env = clean_env(CALLVAULT_MASTER_KEY=b64(old))
    args = ("--data-dir", str(data_dir), "keys", "rotate-master")
    assert callvault(*args, "--new-key-file", str(new_file), env=env).returncode == 0
    aborted = callvault(*args, "--abort", env=env)
    assert aborted.returncode == 0, aborted.stderr
    assert "abandoned" in aborted.stdout
    assert await read_with(data_dir, old, object_id) == b"kept"
    with pytest.raises(ConfigError, match="not the master key"):
        await read_with(data_dir, new, object_id)
    again = callvault(*args, "--commit", env=env)
    assert again.returncode == 2
    assert "no master-key rotation is in progress" in again.stderr


def test_the_key_file_rotation_takes_no_key_from_outside(tmp_path: Path) -> None:
    load_master_key(None, tmp_path)
    given = key_file(tmp_path / "new.key", os.urandom(32))
    result = callvault(
        "--data-dir", str(tmp_path), "keys", "rotate-master", "--new-key-file", str(given)
    )
    assert result.returncode == 2
    assert result.stderr.startswith("callvault: --new-key-file: the master key is the file")


def test_keys_retire_on_the_command_line(tmp_path: Path) -> None:
    async def seal() -> str:
        async with open_services(Settings(data_dir=tmp_path)) as services:
            await services.catalog.tenants.create("acme", "Acme", "eu", T0)
            return await put(services.vault, b"still readable")

    object_id = asyncio.run(seal())
    assert (
        callvault("--data-dir", str(tmp_path), "keys", "rotate", "--tenant", "acme").returncode == 0
    )
    result = callvault("--data-dir", str(tmp_path), "keys", "retire")
    assert result.returncode == 0, result.stderr
    assert "tenant acme: KEK kek-" in result.stdout
    assert "version(s) 1 retired" in result.stdout and "kept: 2" in result.stdout

    async def check() -> None:
        async with open_services(Settings(data_dir=tmp_path)) as services:
            assert await services.vault.read_object("acme", object_id) == b"still readable"
            actions = [e.action for e in await services.catalog.audit.list("acme")]
            assert actions == ["keys.rotated", "keys.retired"]

    asyncio.run(check())
    nothing = callvault("--data-dir", str(tmp_path), "keys", "retire", "--tenant", "acme")
    assert "nothing to retire" in nothing.stdout


# --- the warning at start -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "env_key", "warned"),
    [(WILDCARD, False, True), ("10.1.2.3", False, True), ("::", False, True),
     ("127.0.0.1", False, False), ("::1", False, False), ("localhost", False, False),
     (WILDCARD, True, False)],
)  # fmt: skip
def test_a_key_file_beside_a_gateway_on_the_network_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, env_key: bool, warned: bool
) -> None:
    key = load_master_key(None, tmp_path)
    settings = Settings(
        data_dir=tmp_path, http={"host": host}, master_key=b64(key) if env_key else None
    )
    with caplog.at_level(logging.WARNING):
        warn_about_master_key(settings)
    said = [r for r in caplog.records if "master key is the file" in r.getMessage()]
    assert bool(said) == warned
    if warned:
        message = said[0].getMessage()
        assert str(tmp_path / MASTER_KEY_FILE) in message and "CALLVAULT_MASTER_KEY" in message
    assert b64(key) not in caplog.text


@pytest.mark.parametrize(
    ("left", "host", "warned"),
    [(MASTER_KEY_FILE, WILDCARD, True), (OLD_KEY_FILE, WILDCARD, True),
     (MASTER_KEY_FILE, "127.0.0.1", False), (None, WILDCARD, False)],
)  # fmt: skip
def test_a_key_file_left_beside_a_key_from_the_environment_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, left: str | None, host: str, warned: bool
) -> None:
    """The key moved to ``CALLVAULT_MASTER_KEY``, but a copy of it (or an old key) stayed in
    the data dir: a stolen copy of the data dir still holds a key beside the keyring."""
    leftover = os.urandom(32)
    if left is not None:
        key_file(tmp_path / left, leftover)
    settings = Settings(data_dir=tmp_path, http={"host": host}, master_key=b64(os.urandom(32)))
    with caplog.at_level(logging.WARNING):
        warn_about_master_key(settings)
    said = [r.getMessage() for r in caplog.records if "left in the data dir" in r.getMessage()]
    assert bool(said) == warned
    if warned:
        assert left is not None and str(tmp_path / left) in said[0]
        assert "CALLVAULT_MASTER_KEY" in said[0]
    assert b64(leftover) not in caplog.text
    assert not [r for r in caplog.records if "master key is the file" in r.getMessage()]


def test_an_unfinished_master_rotation_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = load_master_key(None, tmp_path)
    LocalKeyring.open(tmp_path, old).begin_master_rotation(os.urandom(32))
    with caplog.at_level(logging.WARNING):
        warn_about_master_key(Settings(data_dir=tmp_path))
    assert "master-key rotation" in caplog.text and "unfinished" in caplog.text


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(("host", "warned"), [(WILDCARD, True), ("127.0.0.1", False)])
def test_serve_and_worker_warn_on_stderr(
    tmp_path: Path, command: str, host: str, warned: bool
) -> None:
    """The processes stop at once (a model that is not one), after the warning. ``serve``
    on a non-loopback host needs TLS (here: offloaded) to get as far as warning."""
    not_a_model = tmp_path / "models" / "whisper"
    not_a_model.mkdir(parents=True)
    (not_a_model / "config.json").write_text("{}")
    data_dir = tmp_path / "var"
    key = load_master_key(None, data_dir)
    result = callvault(
        "--data-dir", str(data_dir), command,
        env=clean_env(CALLVAULT_AI__MODEL=str(not_a_model), CALLVAULT_HTTP__HOST=host,
                      CALLVAULT_HTTP__PORT="0", CALLVAULT_HTTP__TLS_OFFLOADED="true"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert ("master key is the file" in result.stderr) == warned
    assert b64(key) not in result.stdout + result.stderr
