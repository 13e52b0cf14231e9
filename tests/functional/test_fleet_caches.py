"""What one node changes in the catalog governs every other node: two gateways (two
``build_app``, each its own connection pool) on one catalog (a SQLite file, and PostgreSQL).

Requests read the catalog each time, so the bound there is zero: a new instructions version
set through A governs B's next announcement, limits changed through A hold on B's next
announcement, a tenant deleted through A is 404 (its tokens 401) on B at its next request.
(A token revoked through A and refused by B at once is tests/functional/
test_token_lifecycle.py::test_a_token_revoked_on_one_node_is_401_on_the_other_at_once.)

Live calls are held in one node's memory: ``gateway.revalidation`` checks them every
``REVALIDATE``. A tenant deleted through A ends B's live calls of it, and a stream on B whose
token was revoked through A is cut (its call waits for a reconnect with an active token),
at B's first ticker round ``REVALIDATE`` after its last check. The ticker is driven here by
hand on the fake clock (``registry.tick``), so the bound is shown, not waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError

from gateway.app import build_app
from gateway.revalidation import REVALIDATE
from gateway.settings import Settings
from gateway.state import CALLS, SERVICES
from storage.errors import NotFound
from tests.gateway import (
    RECORD,
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    bearer,
    data_files,
    start_gateway,
    tone,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
)

AI_OFF = {"recording": {"enabled": False}}
FRAME = ULAW.encode(tone(0.02, 440))


@pytest.fixture
def node_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": 0},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
    )


@pytest.fixture
async def nodes(
    aiohttp_client: Callable[..., Any], node_settings: Settings, clock: FakeClock
) -> tuple[Gateway, Gateway]:
    """Two gateways on one catalog; the second knows the first's operator token."""
    a = await start_gateway(
        await aiohttp_client(GatewayServer(build_app(node_settings, clock=clock)))
    )
    b_client = await aiohttp_client(GatewayServer(build_app(node_settings, clock=clock)))
    return a, Gateway(client=b_client, operator=a.operator)


async def announce(node: Gateway, tenant: TenantTokens, call_id: str, **extra: Any) -> Any:
    body = {
        "call_id": call_id,
        "from": "+40711111111",
        "to": "+40722222222",
        "consent": "granted",
        "transport": "twilio",
        **extra,
    }
    return await node.client.post(
        f"/v1/tenants/{tenant.id}/calls", json=body, headers=bearer(tenant.pbx)
    )


async def mint(node: Gateway, tenant: TenantTokens, role: str) -> dict[str, Any]:
    response = await node.client.post(
        f"/v1/tenants/{tenant.id}/tokens", json={"role": role}, headers=bearer(tenant.admin)
    )
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def open_stream(node: Gateway, token: str, call_id: str) -> ClientWebSocketResponse:
    """A Twilio stream of the call, started, with one frame of each track sent."""
    ws = await node.client.ws_connect("/v1/ingest/twilio", headers=bearer(token))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(call_id))
    await send_frame(ws, 0)
    return ws


async def send_frame(ws: ClientWebSocketResponse, timestamp_ms: int) -> None:
    for track in ("inbound", "outbound"):
        await ws.send_str(twilio_media(track, timestamp_ms, FRAME))


async def closed_with(ws: ClientWebSocketResponse) -> tuple[Any, str]:
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE, message
    return message.data, message.extra


async def tick(node: Gateway, clock: FakeClock) -> None:
    """One round of the node's call ticker at the clock's time."""
    await node.app[CALLS].tick(clock.now())


# --- requests: read from the catalog each time (bound 0) -----------------------------------


async def test_new_instructions_set_on_a_govern_the_next_announcement_on_b(
    nodes: tuple[Gateway, Gateway],
) -> None:
    a, b = nodes
    tenant = await a.tenant("acme")  # the all-off defaults: nothing recorded
    response = await announce(b, tenant, "call-1")
    assert (response.status, (await response.json())["error"]) == (
        403,
        "recording_not_instructed",
    )
    version = (await a.instruct(tenant, RECORD))["version"]
    response = await announce(b, tenant, "call-2")
    assert response.status == 201, await response.text()
    call = await b.client.get("/v1/tenants/acme/calls/call-2", headers=bearer(tenant.admin))
    assert (await call.json())["instructions_version"] == version
    await a.instruct(tenant, AI_OFF)
    response = await announce(b, tenant, "call-3")
    assert response.status == 403


async def test_limits_set_on_a_hold_on_b(nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    tenant = await a.tenant("acme", RECORD)
    assert (await announce(b, tenant, "call-1")).status == 201
    response = await a.client.patch(
        "/v1/tenants/acme", json={"limits": {"live_calls": 1}}, headers=bearer(a.operator)
    )
    assert response.status == 200, await response.text()
    response = await announce(b, tenant, "call-2")
    body = await response.json()
    assert (response.status, body["error"], body["limit"]) == (
        429,
        "limit_exceeded",
        "live_calls",
    )


async def test_a_tenant_deleted_on_a_is_404_on_b(nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    tenant = await a.tenant("acme", RECORD)
    assert (await b.client.get("/v1/tenants/acme", headers=bearer(b.operator))).status == 200
    response = await a.client.delete("/v1/tenants/acme", headers=bearer(a.operator))
    assert response.status == 200, await response.text()
    assert (await b.client.get("/v1/tenants/acme", headers=bearer(b.operator))).status == 404
    response = await b.client.get("/v1/tenants/acme/recordings", headers=bearer(tenant.admin))
    assert response.status == 401  # its tokens died with it
    assert (await announce(b, tenant, "call-1")).status == 401


# --- live calls: checked every REVALIDATE ---------------------------------------------------


async def test_a_live_call_on_b_ends_within_the_bound_when_its_tenant_is_deleted_on_a(
    nodes: tuple[Gateway, Gateway], clock: FakeClock, tmp_path: Path
) -> None:
    a, b = nodes
    tenant = await a.tenant("acme", RECORD)
    assert (await announce(b, tenant, "call-1")).status == 201
    ws = await open_stream(b, tenant.pbx, "call-1")
    try:
        await tick(b, clock)  # B's check runs: nothing to do yet
        response = await a.client.delete("/v1/tenants/acme", headers=bearer(a.operator))
        assert response.status == 200, await response.text()
        assert [s.call_id for s in b.app[CALLS].live()] == ["call-1"]  # A cannot end it

        clock.advance(REVALIDATE.total_seconds())
        await tick(b, clock)
        assert b.app[CALLS].live() == []
        await send_frame(ws, 20)
        assert await closed_with(ws) == (1008, "call_ended")
    finally:
        await ws.close()
    # Nothing of it is kept: A's deletion swept its rows, and what B had spooled is
    # discarded by B's recovery pass (its key is gone).
    with pytest.raises(NotFound):
        await b.app[SERVICES].catalog.calls.get("acme", "call-1")
    await b.app[CALLS].recover(clock.now())
    assert [p for p in data_files(tmp_path) if "acme" in p.parts] == []


async def test_a_stream_on_b_whose_token_is_revoked_on_a_is_cut_within_the_bound(
    nodes: tuple[Gateway, Gateway], clock: FakeClock
) -> None:
    a, b = nodes
    tenant = await a.tenant("acme", RECORD)
    pbx = await mint(a, tenant, "pbx")
    assert (await announce(b, tenant, "call-1")).status == 201
    ws = await open_stream(b, pbx["token"], "call-1")
    try:
        await tick(b, clock)
        response = await a.client.delete(
            f"/v1/tenants/acme/tokens/{pbx['id']}", headers=bearer(tenant.admin)
        )
        assert response.status == 200, await response.text()

        clock.advance(REVALIDATE.total_seconds())
        await tick(b, clock)
        await send_frame(ws, 20)
        assert await closed_with(ws) == (1008, "unauthorized")
    finally:
        await ws.close()

    # The call was not ended: it waits for a reconnect, which an active token makes.
    assert [s.call_id for s in b.app[CALLS].live()] == ["call-1"]
    with pytest.raises(WSServerHandshakeError) as refused:  # refused at once, as ever
        await b.client.ws_connect("/v1/ingest/twilio", headers=bearer(pbx["token"]))
    assert refused.value.status == 401
    ws = await open_stream(b, tenant.pbx, "call-1")
    try:
        clock.advance(REVALIDATE.total_seconds())
        await tick(b, clock)  # the new stream's token is active: it goes on
        await send_frame(ws, 40)
        await ws.send_str(twilio_stop())
        assert await closed_with(ws) == (1000, "stop")
    finally:
        await ws.close()
    recording = await b.app[SERVICES].catalog.calls.get("acme", "call-1")
    assert recording.ended_at is not None
