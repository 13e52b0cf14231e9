"""``?token=`` on WebSocket ingest: refused (1008 ``token_in_url_needs_tls``) on a plaintext
connection from another machine, accepted over TLS, behind an offloading proxy, or from
loopback; nothing of a refused stream is stored.

"Another machine" is this machine's own non-loopback address (the gateway binds it and the
client connects to it, so the gateway's peer is that address, not loopback). A machine
without one skips those cases; the decision itself is tested in tests/unit/test_tls.py.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import WSMsgType

from gateway.app import build_app
from gateway.settings import Settings
from gateway.state import REGISTRY
from gateway.tls import load_context
from tests.gateway import (
    RECORD,
    ULAW,
    Gateway,
    GatewayServer,
    bearer,
    read_wav,
    start_gateway,
    tone,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
)
from tests.tls import SERVER_NAMES, local_address, make_pki

REFUSED = "token_in_url_needs_tls"


@pytest.fixture
def address() -> str:
    found = local_address()
    if found is None:
        pytest.skip("this machine has no non-loopback address for a peer that is not loopback")
    return found


async def gateway_at(
    aiohttp_client: Callable[..., Any],
    settings: Settings,
    host: str,
    *,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
) -> Gateway:
    """The app listening on ``host`` (over TLS with ``server_tls``), and a client of it."""
    server = GatewayServer(build_app(settings), host=host)
    await server.start_server(ssl=server_tls)
    connector = aiohttp.TCPConnector(ssl=client_tls) if client_tls else None
    client = await aiohttp_client(server, connector=connector)
    return await start_gateway(client)


async def stream(
    gateway: Gateway, call_id: str, audio: bytes, *, url_token: str | None = None, **headers: str
) -> tuple[int | None, str]:
    """A Twilio stream of ``audio`` (inbound) to its ``stop``: (close code, reason)."""
    path = "/v1/ingest/twilio" + (f"?token={url_token}" if url_token else "")
    async with gateway.client.ws_connect(path, headers=headers) as ws:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(call_id, tracks=("inbound",)))
        for message in twilio_call(audio):
            await ws.send_str(message)
        await ws.send_str(twilio_stop())
        closing = await ws.receive()
    assert closing.type is WSMsgType.CLOSE, closing
    return closing.data, closing.extra or ""


async def recorded(gateway: Gateway, admin: str, recording_id: str) -> np.ndarray | None:
    """The inbound track of the recording's export, or ``None`` when it holds no audio."""
    response = await gateway.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(admin)
    )
    if response.status != 200:
        return None
    _, _, pcm = read_wav(await response.read())
    return pcm[:, 0]


AUDIO = ULAW.encode(tone(0.4, 440, seed=7))


async def assert_url_token_accepted(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    call = await gateway.announce(tenant)
    assert await stream(gateway, call["call_id"], AUDIO, url_token=tenant.pbx) == (1000, "stop")
    pcm = await recorded(gateway, tenant.admin, call["recording_id"])
    assert pcm is not None
    np.testing.assert_array_equal(pcm, ULAW.decode(AUDIO))


async def test_a_url_token_on_plaintext_from_another_machine_is_refused_and_nothing_stored(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings, address: str
) -> None:
    gateway = await gateway_at(aiohttp_client, gateway_settings, address)
    tenant = await gateway.tenant("acme", RECORD)
    call = await gateway.announce(tenant)
    # A valid pbx token: refused for where it travelled, not for what it is.
    assert await stream(gateway, call["call_id"], AUDIO, url_token=tenant.pbx) == (1008, REFUSED)
    # ... also next to a header token: the URL already carried it in clear.
    assert await stream(
        gateway, call["call_id"], AUDIO, url_token=tenant.pbx, **bearer(tenant.pbx)
    ) == (1008, REFUSED)
    refusals = gateway.app[REGISTRY].get_sample_value(
        "callvault_ingest_errors_total", {"code": REFUSED}
    )
    assert refusals == 2
    response = await gateway.client.get(
        f"/v1/recordings/{call['recording_id']}", headers=bearer(tenant.admin)
    )
    assert (await response.json())["tracks"] == []

    # The same token in the Authorization header is taken (the rule is about URLs).
    assert await stream(gateway, call["call_id"], AUDIO, **bearer(tenant.pbx)) == (1000, "stop")
    pcm = await recorded(gateway, tenant.admin, call["recording_id"])
    assert pcm is not None
    np.testing.assert_array_equal(pcm, ULAW.decode(AUDIO))


async def test_a_url_token_from_loopback_is_accepted(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings
) -> None:
    await assert_url_token_accepted(await gateway_at(aiohttp_client, gateway_settings, "127.0.0.1"))


async def test_a_url_token_over_tls_from_another_machine_is_accepted(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings, address: str, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", (*SERVER_NAMES, address))
    http = gateway_settings.http.model_copy(
        update={"tls_cert": pki.cert_file, "tls_key": pki.key_file}
    )
    server_tls = load_context(http)
    gateway = await gateway_at(
        aiohttp_client, gateway_settings, address, server_tls=server_tls, client_tls=pki.client()
    )
    assert gateway.client.make_url("/").scheme == "https"
    await assert_url_token_accepted(gateway)


async def test_a_url_token_behind_an_offloading_proxy_is_accepted(
    aiohttp_client: Callable[..., Any], gateway_settings: Settings, address: str
) -> None:
    offloaded = gateway_settings.model_copy(
        update={"http": gateway_settings.http.model_copy(update={"tls_offloaded": True})}
    )
    await assert_url_token_accepted(await gateway_at(aiohttp_client, offloaded, address))
