"""The operational endpoints of ``callvault serve``, in process (aiohttp test client)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway import publisher
from gateway.app import build_app
from gateway.settings import Settings
from gateway.state import SERVICES


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var")


async def test_healthz_answers_ok(aiohttp_client, settings: Settings) -> None:
    client: TestClient = await aiohttp_client(build_app(settings))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ready_with_embedded_defaults(aiohttp_client, settings: Settings) -> None:
    client: TestClient = await aiohttp_client(build_app(settings))
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready"}
    # Embedded defaults: catalog, file store, keyring and master key in the data dir.
    names = {p.name for p in settings.data_dir.iterdir()}
    assert {"catalog.sqlite3", "keyring.json", "master.key"} <= names
    assert (settings.data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    # Owner-only: the catalog holds wrapped keys and phone numbers.
    assert settings.data_dir.stat().st_mode & 0o777 == 0o700
    for path in settings.data_dir.glob("catalog.sqlite3*"):
        assert path.stat().st_mode & 0o777 == 0o600, path.name


async def test_readyz_is_degraded_naming_the_store_when_it_is_unusable(
    aiohttp_client, tmp_path: Path
) -> None:
    # Calls are still taken (the spool holds their audio), so not a 503: a load balancer
    # keeps sending calls; the body says what is wrong.
    not_a_directory = tmp_path / "objects-file"
    not_a_directory.write_bytes(b"")
    settings = Settings(data_dir=tmp_path / "var", store={"url": not_a_directory.as_uri()})
    client: TestClient = await aiohttp_client(build_app(settings))
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["store"].startswith("not reachable")
    assert (body["spool_bytes"], body["spool_pending_bytes"]) == (0, 0)


async def test_metrics_exports_the_vault_counters(aiohttp_client, settings: Settings) -> None:
    client: TestClient = await aiohttp_client(build_app(settings))
    response = await client.get("/metrics")
    assert response.status == 200
    text = await response.text()
    for name in (
        "callvault_bytes_sealed_total",
        "callvault_objects_committed_total",
        "callvault_flush_latency_seconds_bucket",
        "callvault_decryption_failures_total",
    ):
        assert name in text


async def test_unknown_path_is_a_json_404(aiohttp_client, settings: Settings) -> None:
    client: TestClient = await aiohttp_client(build_app(settings))
    response = await client.get("/v1/nothing-here")
    assert response.status == 404
    body = await response.json()
    assert body["error"] == "not_found"


async def test_readyz_answers_in_time_when_the_store_hangs(
    aiohttp_client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A blackholed store: its client would wait out connect and read timeouts and retries.
    async def hang() -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(publisher, "READY_CHECK_S", 0.2)
    app = build_app(settings)
    client: TestClient = await aiohttp_client(app)
    monkeypatch.setattr(app[SERVICES].store, "check", hang)
    response = await asyncio.wait_for(client.get("/readyz"), 10)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "degraded"
    assert body["store"] == "not reachable: no answer within 0.2 s"


async def test_readyz_answers_not_ready_in_time_when_the_catalog_hangs(
    aiohttp_client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catalog server that accepts connections and never answers: the probe answers 503
    # within READY_CHECK_S instead of hanging (and a load balancer's probe timing out).
    async def hang() -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(publisher, "READY_CHECK_S", 0.2)
    app = build_app(settings)
    client: TestClient = await aiohttp_client(app)
    monkeypatch.setattr(app[SERVICES].catalog, "check", hang)
    response = await asyncio.wait_for(client.get("/readyz"), 10)
    assert response.status == 503
    assert await response.json() == {
        "error": "not_ready",
        "message": "catalog is not reachable: no answer within 0.2 s",
    }
