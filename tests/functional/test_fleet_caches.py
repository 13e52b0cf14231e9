"""What one node changes in the catalog governs every other node: two gateways (two
``build_app``, each its own data dir, node id, spool and connection pool) on one catalog (a
SQLite file, and PostgreSQL) and one object store. Their keyring is the fleet's: on
PostgreSQL the catalog keyring (``CALLVAULT_KEYS__PROVIDER=catalog``, one master key); on
SQLite, whose catalog cannot hold it, B starts with a copy of A's local keyring taken once
the test's tenants exist (so their audit keys are one; a KEK made afterwards is the node's
own).

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

import asyncio
import base64
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, WSServerHandshakeError

from crypto.keys import KEYRING_FILE, MASTER_KEY_FILE
from gateway.app import build_app
from gateway.revalidation import REVALIDATE
from gateway.session import CallSession
from gateway.settings import Settings
from gateway.state import CALLS, NODE, SERVICES
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
from tests.leaks import WATCH

AI_OFF = {"recording": {"enabled": False}}
FRAME = ULAW.encode(tone(0.02, 440))


@pytest.fixture
def shared(tmp_path: Path, database_url: str) -> dict[str, Any]:
    """The settings every node of the fleet shares: the catalog, the store and, on
    PostgreSQL, the catalog keyring with its master key."""
    settings: dict[str, Any] = {
        "database_url": database_url,
        "store": {"url": (tmp_path / "objects").as_uri()},
        "audiosocket": {"port": 0},
        "ai": {"workers": 0},
        "retention": {"sweep_interval": "PT0S"},
    }
    if database_url.startswith("postgresql"):
        master = os.urandom(32)
        WATCH.remember("master key", master)
        settings.update(master_key=base64.b64encode(master).decode(), keys={"provider": "catalog"})
    return settings


class Fleet:
    """Node A, started; node B once the test's tenants exist (``second``)."""

    def __init__(
        self, a: Gateway, start: Callable[[Settings], Awaitable[Any]], shared: dict[str, Any],
        root: Path, clock: FakeClock,
    ) -> None:  # fmt: skip
        self.a = a
        self._start = start
        self._shared = shared
        self._root = root
        self._clock = clock

    async def second(self) -> Gateway:
        """Node B, on its own data dir; it knows A's operator token."""
        b_dir = self._root / "b"
        if "keys" not in self._shared:  # SQLite: a copy of A's local keyring
            b_dir.mkdir(mode=0o700)
            for name in (MASTER_KEY_FILE, KEYRING_FILE):
                shutil.copy2(self._root / "a" / name, b_dir / name)
        settings = Settings(data_dir=b_dir, **self._shared)
        client = await self._start(GatewayServer(build_app(settings, clock=self._clock)))
        b = Gateway(client=client, operator=self.a.operator)
        assert b.app[NODE].id != self.a.app[NODE].id  # two nodes, not one twice
        return b


@pytest.fixture
async def fleet(
    aiohttp_client: Callable[..., Any], shared: dict[str, Any], clock: FakeClock, tmp_path: Path
) -> Fleet:
    settings = Settings(data_dir=tmp_path / "a", **shared)
    a = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings, clock=clock))))
    return Fleet(a, aiohttp_client, shared, tmp_path, clock)


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
    """A Twilio stream of the call, started, with one frame of each track sent; returned
    once the node attached it (sending is not processing: a tick before that would see no
    stream of the call)."""
    ws = await node.client.ws_connect("/v1/ingest/twilio", headers=bearer(token))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(call_id))
    await send_frame(ws, 0)
    async with asyncio.timeout(10):
        while not any(  # noqa: ASYNC110 - the state is the server task's
            s.call_id == call_id and s.attached and s.token_id is not None
            for s in node.app[CALLS].live()
        ):
            await asyncio.sleep(0.01)
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


async def test_new_instructions_set_on_a_govern_the_next_announcement_on_b(fleet: Fleet) -> None:
    a = fleet.a
    tenant = await a.tenant("acme")  # the all-off defaults: nothing recorded
    b = await fleet.second()
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


async def test_limits_set_on_a_hold_on_b(fleet: Fleet) -> None:
    a = fleet.a
    tenant = await a.tenant("acme", RECORD)
    b = await fleet.second()
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


async def test_a_tenant_deleted_on_a_is_404_on_b(fleet: Fleet) -> None:
    a = fleet.a
    tenant = await a.tenant("acme", RECORD)
    b = await fleet.second()
    assert (await b.client.get("/v1/tenants/acme", headers=bearer(b.operator))).status == 200
    response = await a.client.delete("/v1/tenants/acme", headers=bearer(a.operator))
    assert response.status == 200, await response.text()
    assert (await b.client.get("/v1/tenants/acme", headers=bearer(b.operator))).status == 404
    response = await b.client.get("/v1/tenants/acme/recordings", headers=bearer(tenant.admin))
    assert response.status == 401  # its tokens died with it
    assert (await announce(b, tenant, "call-1")).status == 401


# --- live calls: checked every REVALIDATE ---------------------------------------------------


async def test_a_live_call_on_b_ends_within_the_bound_when_its_tenant_is_deleted_on_a(
    fleet: Fleet, clock: FakeClock, tmp_path: Path
) -> None:
    a = fleet.a
    tenant = await a.tenant("acme", RECORD)
    b = await fleet.second()
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
    fleet: Fleet, clock: FakeClock
) -> None:
    a = fleet.a
    tenant = await a.tenant("acme", RECORD)
    b = await fleet.second()
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


async def test_a_revoked_streams_stop_is_refused_and_the_call_waits(
    fleet: Fleet, clock: FakeClock
) -> None:
    """A stream whose token was revoked may not end the call any more than send it audio:
    its stop is refused (1008 unauthorized), and the call waits for a reconnect."""
    a = fleet.a
    tenant = await a.tenant("acme", RECORD)
    b = await fleet.second()
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
        await ws.send_str(twilio_stop())
        assert await closed_with(ws) == (1008, "unauthorized")
    finally:
        await ws.close()
    assert [s.call_id for s in b.app[CALLS].live()] == ["call-1"]
    call = await b.app[SERVICES].catalog.calls.get("acme", "call-1")
    assert call.ended_at is None


class FailingClose:
    """A transport whose ``closing`` fails once for one call (as an RTP transport's might)."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.failed = False

    def closing(self, session: CallSession, now: datetime) -> None:
        if session.call_id == self.call_id and not self.failed:
            self.failed = True
            raise RuntimeError("closing failed")

    def ended(self, session: CallSession) -> None:
        pass


async def test_one_deleted_tenants_call_failing_to_end_stops_no_other_call(
    fleet: Fleet, clock: FakeClock
) -> None:
    """B ends its calls of a tenant deleted through A; ending one of them fails: the
    others are still ended, and another tenant's quiet stream is still flushed, that
    round."""
    a = fleet.a
    acme = await a.tenant("acme", RECORD)
    globex = await a.tenant("globex", RECORD)
    b = await fleet.second()
    registry = b.app[CALLS]
    failing = FailingClose("call-1")
    registry.add_transport(failing)
    for call_id in ("call-1", "call-2"):
        assert (await announce(b, acme, call_id)).status == 201
    assert (await announce(b, globex, "call-3")).status == 201
    ws = await open_stream(b, globex.pbx, "call-3")
    try:
        await received(b, "globex", "call-3")
        await tick(b, clock)
        response = await a.client.delete("/v1/tenants/acme", headers=bearer(a.operator))
        assert response.status == 200, await response.text()

        clock.advance(REVALIDATE.total_seconds())
        await tick(b, clock)
        assert failing.failed
        assert sorted(s.call_id for s in registry.live()) == ["call-1", "call-3"]
        recording = await b.app[SERVICES].catalog.recordings.of_call("globex", "call-3")
        assert recording is not None
        flushed = await b.app[SERVICES].catalog.objects.list("globex", recording_id=recording.id)
        assert sorted(o.track for o in flushed) == ["inbound", "outbound"]
    finally:
        await ws.close()


async def received(node: Gateway, tenant: str, call_id: str) -> None:
    """Wait until the node's session of the call holds the first frame of both tracks."""
    session = next(s for s in node.app[CALLS].live() if (s.tenant, s.call_id) == (tenant, call_id))
    async with asyncio.timeout(10):
        while len(session.tracks) < 2:  # noqa: ASYNC110 - the state lives in another task
            await asyncio.sleep(0.01)
