"""Webhook secrets at rest: sealed under the tenant's keys, never in the catalog or a file.

The whole gateway runs on a real catalog (SQLite in the data dir, and PostgreSQL), a real
keyring and a real receiver: after PUTs of several versions (a changed secret, a kept one)
and a delivered, verified webhook, neither secret is in any file under the test's directory
(the SQLite file and its -wal included) nor in any row of any table, in clear or in any
encoding a careless write could use. A replaced secret is shredded, deleting the tenant
makes its secret unreadable, rotating the tenant's KEK keeps it readable, and a catalog from
before sealing has its clear secrets sealed at start, once.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import create_async_engine

from crypto.errors import KeyUnavailable
from crypto.keys import WrappedKey
from gateway.app import build_app
from gateway.clock import Clock
from gateway.services import Services, build_sender, open_services
from gateway.settings import Settings
from gateway.state import SERVICES
from gateway.webhooks import queue_event, verify
from storage.catalog import ObjectKeyRow
from storage.catalog.schema import instructions
from storage.instructions import SealedSecret
from storage.webhooksecret import open_secret, seal_clear_secrets
from tests.gateway import (
    FakeClock,
    Gateway,
    GatewayServer,
    bearer,
    data_files,
    start_gateway,
)

# Not ASCII, so that UTF-8, UTF-16 and JSON's \u escapes all differ from one another.
FIRST = "whsec-Ünïcødé-first-0123456789"
SECOND = "whsec-Ωmega-second-9876543210"
HOOK = "https://hooks.example.com/callvault"


# --- what to look for -------------------------------------------------------------------------


def _base64_cores(data: bytes) -> Iterator[bytes]:
    """The base64 characters any base64 text holding ``data`` must contain, whatever the
    offset of ``data`` in what was encoded: for each alignment, the groups made of its
    bytes only (the first and last groups mix in neighbouring bytes)."""
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + data)
        start = 4 if shift else 0
        full = (len(data) - (3 - shift) % 3) // 3
        for text in (encoded, base64.urlsafe_b64encode(bytes(shift) + data)):
            yield text[start : start + 4 * full]


def forms(secret: str) -> dict[str, bytes]:
    """``secret`` in every encoding a write could leave it in."""
    utf8 = secret.encode()
    found = {
        "utf-8": utf8,
        "utf-16-le": secret.encode("utf-16-le"),
        "utf-16-be": secret.encode("utf-16-be"),
        "json-escaped": json.dumps(secret).encode()[1:-1],  # \u00dc, as json.dumps writes
        "hex": utf8.hex().encode(),
        "HEX": utf8.hex().upper().encode(),
    }
    for index, core in enumerate(_base64_cores(utf8)):
        found[f"base64-{index}"] = core
    return found


def leaks(data: bytes, *secrets: str) -> list[str]:
    """The secrets (and forms) found in ``data``."""
    return [
        f"{secret[:12]}… as {name}"
        for secret in secrets
        for name, form in forms(secret).items()
        if form in data
    ]


def test_the_scan_finds_each_form() -> None:
    # The scan itself must be able to fail: every form is found inside other bytes, at every
    # offset (base64 of a blob holding the secret contains one of its cores).
    for prefix in (b"", b"x", b"xy", b"xyz"):
        blob = prefix + FIRST.encode() + b"tail"
        assert leaks(base64.b64encode(blob), FIRST)
        assert leaks(base64.urlsafe_b64encode(blob), FIRST)
        assert leaks(blob.hex().encode(), FIRST)
    assert leaks(json.dumps({"secret": FIRST}).encode(), FIRST)
    assert leaks(FIRST.encode("utf-16-le"), FIRST)
    assert leaks(b"nothing here", FIRST) == []


async def catalog_rows(url: str) -> bytes:
    """Every value of every row of every table of the catalog (reflected, so a table added
    later is searched too), as bytes."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            assert "instructions" in names and "object_keys" in names
            chunks = []
            for name in names:
                table = sa.table(name)
                for row in await conn.execute(sa.select(sa.text("*")).select_from(table)):
                    for value in row:
                        if isinstance(value, bytes | bytearray | memoryview):
                            chunks.append(bytes(value))
                        elif isinstance(value, dict | list):
                            chunks.append(json.dumps(value).encode())
                            chunks.append(json.dumps(value, ensure_ascii=False).encode())
                        else:
                            chunks.append(str(value).encode())
    finally:
        await engine.dispose()
    return b"\n".join(chunks)


def file_leaks(root: Path, *secrets: str) -> dict[str, list[str]]:
    found = {}
    for path in data_files(root):
        if hits := leaks(path.read_bytes(), *secrets):
            found[str(path.relative_to(root))] = hits
    return found


# --- a gateway with a receiver -------------------------------------------------------------


def settings_for(tmp_path: Path, database_url: str | None) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": 0},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        # The receiver is plain http on loopback.
        webhooks={"allow_http": True, "allow_private": True, "max_attempts": 3},
    )


def sqlite_or(database_url: str) -> str | None:
    """The catalog: the embedded default (SQLite in the data dir) or PostgreSQL."""
    return None if database_url.startswith("sqlite") else database_url


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Any]) -> AsyncIterator[tuple[str, list]]:
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    yield str(server.make_url("/hook")), received


async def put(gw: Gateway, tenant: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await gw.client.put(
        f"/v1/tenants/{tenant}/instructions", json=body, headers=bearer(token)
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())


def sealed_of(document: dict[str, Any]) -> SealedSecret:
    return SealedSecret.model_validate(document["webhook"]["secret"])


async def test_the_secret_is_in_no_file_and_no_catalog_row(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    for name in ("gateway", "callvault", "storage", "ai"):
        caplog.set_level(logging.DEBUG, logger=name)
    url, received = receiver
    clock = FakeClock()
    settings = settings_for(tmp_path, sqlite_or(database_url))
    gw = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings, clock=clock))))
    tenant = await gw.tenant("acme")
    # Version 1 with the first secret, version 2 with the second (the first is replaced),
    # version 3 keeping the second (sent back as <redacted>) with another change.
    await put(gw, "acme", tenant.admin, {"webhook": {"url": url, "secret": FIRST}})
    await put(gw, "acme", tenant.admin, {"webhook": {"url": url, "secret": SECOND}})
    kept = {"recording": {"enabled": True}, "webhook": {"url": url, "secret": "<redacted>"}}
    assert (await put(gw, "acme", tenant.admin, kept))["version"] == 3

    services: Services = gw.app[SERVICES]
    job = await queue_event(
        services.catalog,
        tenant="acme",
        event="analysis.completed",
        data={"recording_id": "rec_1", "call_id": "call-1", "status": "analyzed"},
        now=clock.now(),
        max_attempts=3,
    )
    assert job is not None
    sender = build_sender(settings, services, now=clock.now)
    try:
        assert await sender.deliver_once() is True
    finally:
        await sender.close()
    # The sender could open the current secret: the receiver verifies with it.
    [(headers, body)] = received
    now = int(clock.now().timestamp())
    assert verify(SECOND, headers["Callvault-Signature"], body, now=now)
    assert not verify(FIRST, headers["Callvault-Signature"], body, now=now)

    # Neither secret anywhere: files (catalog, -wal, keyring, objects), rows, logs.
    assert file_leaks(tmp_path, FIRST, SECOND) == {}
    assert sorted(p.name for p in data_files(settings.data_dir) if "sqlite" in p.name) == (
        ["catalog.sqlite3", "catalog.sqlite3-shm", "catalog.sqlite3-wal"]
        if database_url.startswith("sqlite")
        else []
    )
    rows = await catalog_rows(settings.catalog_url)
    assert leaks(rows, FIRST, SECOND) == []
    assert b"whsec_" in rows  # the sealed form is there to be searched
    assert leaks(caplog.text.encode(), FIRST, SECOND) == []

    # One key row, for the current secret; the first one's was shredded with its change.
    versions = await services.catalog.instructions.history("acme")
    first, second, third = (sealed_of(v.document) for v in versions)
    assert second == third
    keys = [row.object_id async for row in services.catalog.keys.list("acme")]
    assert keys == [second.key_id]
    assert await open_secret(services.catalog, services.keys, "acme", third) == SECOND
    with pytest.raises(KeyUnavailable):
        await open_secret(services.catalog, services.keys, "acme", first)


async def test_deleting_the_tenant_makes_its_secret_unreadable(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    await put(gateway, "acme", tenant.admin, {"webhook": {"url": HOOK, "secret": FIRST}})
    services: Services = gateway.app[SERVICES]
    row = await services.catalog.instructions.latest("acme")
    assert row is not None
    sealed = sealed_of(row.document)
    # What a backup taken now holds: the sealed secret and its key row.
    backup: ObjectKeyRow = await services.catalog.keys.get(sealed.key_id, "acme")
    assert await open_secret(services.catalog, services.keys, "acme", sealed) == FIRST

    response = await gateway.client.delete("/v1/tenants/acme", headers=bearer(gateway.operator))
    assert response.status == 200, await response.text()
    with pytest.raises(KeyUnavailable):
        await open_secret(services.catalog, services.keys, "acme", sealed)
    # The backup's key row does not open either: the KEKs that wrapped it are destroyed.
    wrapped = WrappedKey(backup.kek_id, backup.kek_version, backup.wrapped_dek)
    with pytest.raises(KeyUnavailable):
        await services.keys.unwrap("acme", sealed.key_id, wrapped)
    # Nothing of it stays in the catalog once the tenant is forgotten.
    assert [r async for r in services.catalog.keys.list("acme")] == []
    assert await services.catalog.instructions.history("acme") == []


async def test_rotating_the_tenants_kek_rewraps_the_secret(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    await put(gateway, "acme", tenant.admin, {"webhook": {"url": HOOK, "secret": FIRST}})
    services: Services = gateway.app[SERVICES]
    row = await services.catalog.instructions.latest("acme")
    assert row is not None
    sealed = sealed_of(row.document)
    before = await services.catalog.keys.get(sealed.key_id, "acme")
    report = await services.vault.rotate_tenant_keys(
        "acme", actor="operator", now=before.created_at
    )
    assert report.rewrapped == 1
    after = await services.catalog.keys.get(sealed.key_id, "acme")
    assert (before.kek_version, after.kek_version) == (1, 2)
    assert after.wrapped_dek != before.wrapped_dek
    assert await open_secret(services.catalog, services.keys, "acme", sealed) == FIRST


# --- a catalog from before sealing -----------------------------------------------------------


async def write_clear_versions(url: str, *versions: tuple[str, int, dict[str, Any]]) -> None:
    """What a callvault from before sealing wrote: ``(tenant, version, webhook)`` rows
    whose secret is in clear."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for tenant, version, webhook in versions:
                await conn.execute(
                    sa.insert(instructions).values(
                        tenant_id=tenant,
                        version=version,
                        document={"recording": {"enabled": True}, "webhook": webhook},
                        created_at=FakeClock().now(),
                        created_by="tok_old",
                    )
                )
    finally:
        await engine.dispose()


OLD_ACME = "whsec-acme-old-Ünïcødé-000000"
CURRENT_ACME = "whsec-acme-current-Ωmega-1111"
OLD_BETA = "whsec-beta-removed-secret-2222"
GONE = "whsec-gone-tenant-secret-33333"


async def test_a_catalog_with_clear_secrets_is_sealed_at_start_once(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, sqlite_or(database_url))
    clock = FakeClock()
    webhook = {"url": HOOK}
    async with open_services(settings, clock=cast(Clock, clock)) as services:
        catalog = services.catalog
        for tenant in ("acme", "beta", "gone"):
            await catalog.tenants.create(tenant, tenant.title(), "eu", clock.now())
        await services.keys.wrap("gone", "obj-1", bytes(32))  # the tenant had keys
        await services.keys.destroy_tenant("gone")
        await catalog.tenants.mark_deleted("gone", clock.now())
    # What the previous version wrote: every version's secret in clear.
    old = [
        ("acme", 1, {**webhook, "secret": OLD_ACME}),
        ("acme", 2, {**webhook, "secret": CURRENT_ACME}),
        ("acme", 3, {**webhook, "secret": CURRENT_ACME}),
        ("beta", 1, {**webhook, "secret": OLD_BETA}),
        ("beta", 2, {"url": None, "secret": None}),
        ("gone", 1, {**webhook, "secret": GONE}),
    ]
    await write_clear_versions(settings.catalog_url, *old)
    secrets = (OLD_ACME, CURRENT_ACME, OLD_BETA, GONE)
    assert leaks(await catalog_rows(settings.catalog_url), *secrets)  # the test can fail

    clock.advance(60)
    caplog.set_level(logging.WARNING, logger="storage.webhooksecret")
    async with open_services(settings, clock=cast(Clock, clock)) as services:  # seals at start
        # Copies made before (backups; on PostgreSQL old row versions and the WAL) still
        # hold the secrets in clear: the operator is told what to do, with no secret.
        (warning,) = [
            r.getMessage() for r in caplog.records if "copies made before" in r.getMessage()
        ]
        # acme's current secret was in clear; beta's current version has none, gone is gone.
        assert "set a new webhook secret (a PUT of their instructions): acme" in warning
        assert "beta" not in warning and "gone" not in warning
        on_postgresql = not database_url.startswith("sqlite")
        assert ("VACUUM FULL instructions" in warning) == on_postgresql
        assert leaks(caplog.text.encode(), *secrets) == []
        caplog.clear()
        catalog = services.catalog
        acme = await catalog.instructions.history("acme")
        first, second, third = (sealed_of(v.document) for v in acme)
        assert second == third  # the same secret, one sealed copy
        assert await open_secret(catalog, services.keys, "acme", third) == CURRENT_ACME
        assert (await catalog.keys.get(third.key_id, "acme")).created_at == clock.now()
        assert [r.object_id async for r in catalog.keys.list("acme")] == [third.key_id]
        # Superseded secrets, and a deleted tenant's, are sealed with no key kept.
        with pytest.raises(KeyUnavailable):
            await open_secret(catalog, services.keys, "acme", first)
        beta = await catalog.instructions.history("beta")
        with pytest.raises(KeyUnavailable):
            await open_secret(catalog, services.keys, "beta", sealed_of(beta[0].document))
        assert beta[1].document["webhook"]["secret"] is None
        assert [r async for r in catalog.keys.list("beta")] == []
        (gone,) = await catalog.instructions.history("gone")
        with pytest.raises(KeyUnavailable):
            await open_secret(catalog, services.keys, "gone", sealed_of(gone.document))
        # Everything else about the versions is as it was.
        assert [(v.version, v.created_by) for v in acme] == [
            (1, "tok_old"),
            (2, "tok_old"),
            (3, "tok_old"),
        ]
        assert all(v.document["recording"] == {"enabled": True} for v in acme)
        assert (await catalog.instructions.current("acme")).document.webhook.url == HOOK

        # Not in the files either while the catalog is open (on SQLite: secure_delete
        # zeroed the old cells, and the WAL that held their pages was truncated).
        assert file_leaks(tmp_path, *secrets) == {}

        # Once: a second run finds nothing, and changes nothing.
        before = await catalog_rows(settings.catalog_url)
        assert await seal_clear_secrets(catalog, services.keys, now=clock.now()) == 0
        assert await catalog_rows(settings.catalog_url) == before
        assert "copies made before" not in caplog.text
    rows = await catalog_rows(settings.catalog_url)
    assert leaks(rows, *secrets) == []
    assert file_leaks(tmp_path, *secrets) == {}


async def test_a_tenant_whose_deletion_stopped_after_its_keys_went_does_not_stop_a_start(
    tmp_path: Path, database_url: str
) -> None:
    """A DELETE destroyed the tenant's keys and stopped before marking it deleted: its
    clear secret is sealed under a key that is not kept, as a deleted tenant's is."""
    settings = settings_for(tmp_path, sqlite_or(database_url))
    clock = FakeClock()
    async with open_services(settings, clock=cast(Clock, clock)) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", clock.now())
        await services.keys.wrap("acme", "obj-1", bytes(32))  # the tenant had keys
        await services.keys.destroy_tenant("acme")  # -- the DELETE stopped here --
    await write_clear_versions(settings.catalog_url, ("acme", 1, {"url": HOOK, "secret": GONE}))

    async with open_services(settings, clock=cast(Clock, clock)) as services:  # seals at start
        (version,) = await services.catalog.instructions.history("acme")
        with pytest.raises(KeyUnavailable):
            await open_secret(services.catalog, services.keys, "acme", sealed_of(version.document))
        assert [r async for r in services.catalog.keys.list("acme")] == []
    assert leaks(await catalog_rows(settings.catalog_url), GONE) == []


async def test_a_start_seals_a_clear_secret_that_the_sender_then_signs_with(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    # End to end on the embedded catalog: an old clear secret, a start, a delivery.
    url, received = receiver
    clock = FakeClock()
    settings = settings_for(tmp_path, None)
    async with open_services(settings, clock=cast(Clock, clock)) as services:
        await services.catalog.tenants.create("acme", "Acme", "eu", clock.now())
    engine = create_async_engine(settings.catalog_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(instructions).values(
                    tenant_id="acme",
                    version=1,
                    document={"webhook": {"url": url, "secret": CURRENT_ACME}},
                    created_at=clock.now(),
                    created_by="tok_old",
                )
            )
    finally:
        await engine.dispose()
    gw = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings, clock=clock))))
    services = gw.app[SERVICES]
    await queue_event(
        services.catalog,
        tenant="acme",
        event="recording.deleted",
        data={"recording_id": "rec_1", "reason": "retention"},
        now=clock.now(),
        max_attempts=3,
    )
    clock.advance(1)
    sender = build_sender(settings, services, now=clock.now)
    try:
        assert await sender.deliver_once() is True
    finally:
        await sender.close()
    [(headers, body)] = received
    now = int(clock.now().timestamp())
    assert verify(CURRENT_ACME, headers["Callvault-Signature"], body, now=now)
    assert leaks(await catalog_rows(settings.catalog_url), CURRENT_ACME) == []
    assert file_leaks(tmp_path, CURRENT_ACME) == {}


async def test_redacted_does_not_keep_a_secret_an_older_version_wrote_in_clear(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    # Each start seals clear secrets; one written since by an older callvault sharing the
    # catalog is not carried into a new version by <redacted> (it would stay in clear).
    tenant = await gateway.tenant("acme")
    engine = create_async_engine(gateway_settings.catalog_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(instructions).values(
                    tenant_id="acme",
                    version=1,
                    document={"webhook": {"url": HOOK, "secret": CURRENT_ACME}},
                    created_at=FakeClock().now(),
                    created_by="tok_old",
                )
            )
    finally:
        await engine.dispose()
    response = await gateway.client.put(
        "/v1/tenants/acme/instructions",
        json={"webhook": {"url": HOOK, "secret": "<redacted>"}},
        headers=bearer(tenant.admin),
    )
    answer = await response.json()
    assert (response.status, answer["field"]) == (422, "webhook.secret")
    assert "not sealed yet" in answer["message"]
    assert len(await gateway.app[SERVICES].catalog.instructions.history("acme")) == 1
    # Sending the secret again stores it sealed.
    await put(gateway, "acme", tenant.admin, {"webhook": {"url": HOOK, "secret": SECOND}})
    latest = await gateway.app[SERVICES].catalog.instructions.latest("acme")
    assert latest is not None and latest.version == 2
    assert leaks(json.dumps(latest.document).encode(), SECOND) == []
