"""Fixtures of the functional tier: an in-process gateway on embedded defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ai.worker import AnalysisWorker
from gateway.app import build_app
from gateway.settings import Settings
from storage.catalog import Catalog
from tests.ai import AI_BACKOFF_S, AI_LEASE_S, ScriptedTranscriber, new_worker
from tests.gateway import FakeClock, Gateway, GatewayServer, free_port, start_gateway
from tests.keyring import audit_keyring


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a temporary data dir; AudioSocket on a free loopback port; no
    AI worker children (the AI tests drive ``worker`` themselves), a 10 s retry backoff;
    no background retention sweep (the tests run ``app[SWEEPER].sweep`` at a time of their
    choosing) and no background audit checkpoints (the tests make them)."""
    return Settings(
        data_dir=tmp_path / "var",
        audiosocket={"port": free_port()},
        ai={"workers": 0, "retry_backoff": f"PT{AI_BACKOFF_S}S", "lease": f"PT{AI_LEASE_S}S"},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def gateway(aiohttp_client: Callable, gateway_settings: Settings) -> Gateway:
    """The app on the wall clock (ingest paths flush by real time)."""
    client = await aiohttp_client(GatewayServer(build_app(gateway_settings)))
    return await start_gateway(client)


@pytest.fixture
async def clocked_gateway(
    aiohttp_client: Callable, gateway_settings: Settings, clock: FakeClock
) -> Gateway:
    """The app on a ``FakeClock`` the test turns (flush intervals, reconnect grace)."""
    client = await aiohttp_client(GatewayServer(build_app(gateway_settings, clock=clock)))
    return await start_gateway(client)


@pytest.fixture
async def gw(aiohttp_client: Callable, gateway_settings: Settings, clock: FakeClock) -> Gateway:
    """The app on a ``FakeClock`` (the AI tests' gateway: its worker runs on that clock)."""
    client = await aiohttp_client(GatewayServer(build_app(gateway_settings, clock=clock)))
    return await start_gateway(client)


@pytest.fixture
def transcriber() -> ScriptedTranscriber:
    """The model of ``worker``: a test double the test may tell to fail."""
    return ScriptedTranscriber()


@pytest.fixture
async def worker(
    gw: Gateway, gateway_settings: Settings, clock: FakeClock, transcriber: ScriptedTranscriber
) -> AsyncIterator[AnalysisWorker]:
    """An AI worker of ``gw`` (its catalog, store, keys and metrics) with ``transcriber``."""
    worker = new_worker(gw, gateway_settings, clock, transcriber)
    yield worker
    await worker.close()


@pytest.fixture
async def catalog(database_url: str, tmp_path: Path) -> AsyncIterator[Catalog]:
    """A migrated catalog on each backend (``database_url``), its audit log keyed by a
    keyring in ``tmp_path``; modules that need another kind of catalog define their own."""
    catalog = await Catalog.open(database_url, audit_keys=audit_keyring(tmp_path / "keys"))
    try:
        await catalog.migrate()
        yield catalog
    finally:
        await catalog.close()
