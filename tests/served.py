"""A real ``callvault serve`` driven over HTTP and WebSocket, as its users drive it: a tenant
with its tokens, a call pushed over Twilio Media Streams, a recording awaited until the AI
worker is done with it. For the integration and browser tiers (``tests.gateway.serve``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.gateway import (
    Process,
    Server,
    bearer,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
)

ANALYSIS_TIMEOUT_S = 90.0


async def tenant(
    session: aiohttp.ClientSession, server: Server, name: str, instructions: dict[str, Any]
) -> dict[str, str]:
    operator = bearer(server.operator)
    async with session.post("/v1/tenants", json={"id": name, "name": name}, headers=operator) as r:
        assert r.status == 201, await r.text()
    tokens: dict[str, str] = {}
    for role in ("admin", "pbx", "processor"):
        # The operator mints the first admin; the admin the others (break-glass otherwise).
        by = bearer(tokens["admin"]) if tokens else operator
        async with session.post(f"/v1/tenants/{name}/tokens", json={"role": role}, headers=by) as r:
            assert r.status == 201, await r.text()
            tokens[role] = (await r.json())["token"]
    async with session.put(
        f"/v1/tenants/{name}/instructions", json=instructions, headers=bearer(tokens["admin"])
    ) as r:
        assert r.status == 200, await r.text()
    return tokens


async def announce(session: aiohttp.ClientSession, tenant_id: str, pbx: str) -> dict[str, Any]:
    """Announce a Twilio call (consent granted); the announcement, asserting 201."""
    body = {"from": "+40711111111", "to": "+40722222222", "consent": "granted",
            "transport": "twilio"}  # fmt: skip
    async with session.post(f"/v1/tenants/{tenant_id}/calls", json=body, headers=bearer(pbx)) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def push_call(
    session: aiohttp.ClientSession, tenant_id: str, pbx: str, inbound: bytes, outbound: bytes
) -> str:
    """Announce a call and stream it over Twilio Media Streams; its recording id."""
    announced = await announce(session, tenant_id, pbx)
    async with session.ws_connect("/v1/ingest/twilio", headers=bearer(pbx)) as ws:
        await ws.send_str(twilio_connected())
        await ws.send_str(twilio_start(announced["call_id"]))
        for message in twilio_call(inbound, outbound):
            await ws.send_str(message)
        await ws.send_str(twilio_stop())
        msg = await ws.receive()
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1000)
    return str(announced["recording_id"])


async def wait_for_status(
    session: aiohttp.ClientSession, recording_id: str, token: str, process: Process
) -> dict[str, Any]:
    deadline = time.monotonic() + ANALYSIS_TIMEOUT_S
    while True:
        async with session.get(f"/v1/recordings/{recording_id}", headers=bearer(token)) as r:
            view = await r.json()
        if view["status"] in ("analyzed", "failed"):
            return dict(view)
        assert time.monotonic() < deadline, f"still {view['status']}:\n{process.log()}"
        await asyncio.sleep(0.2)  # polling another process's progress


async def fetch(session: aiohttp.ClientSession, path: str, token: str) -> tuple[int, Any]:
    async with session.get(path, headers=bearer(token)) as r:
        return r.status, await r.json()
