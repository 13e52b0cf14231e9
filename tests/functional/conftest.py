"""Fixtures of the functional tier: an in-process gateway on embedded defaults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.app import build_app
from gateway.settings import Settings
from tests.gateway import FakeClock, Gateway, GatewayServer, free_port, start_gateway


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a temporary data dir; AudioSocket on a free loopback port."""
    return Settings(data_dir=tmp_path / "var", audiosocket={"port": free_port()})


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
