"""The spool's bound and the node's readiness during a store outage, in process: a full
spool refuses new calls (503 ``spool_full``, WebSocket 1013) while the call in progress
records on to a complete export; ``/readyz`` says ``degraded`` while spooled audio waits for
the store, and the publisher publishes it on its own schedule once the store is back.
(``tests/integration/test_store_outage.py`` does the same with SeaweedFS and ``serve``.)"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from gateway.app import build_app
from gateway.publisher import RetrySchedule
from gateway.settings import Settings
from gateway.state import SERVICES
from storage import spool as spool_module
from storage.errors import StorageUnavailable
from tests.functional.test_ingest import NO_CONSENT, closed, recording_wav, until
from tests.gateway import (
    ULAW,
    DownStore,
    Gateway,
    GatewayServer,
    bearer,
    metric_value,
    start_gateway,
    tone,
    twilio_call,
    twilio_connected,
    twilio_start,
    twilio_stop,
)


class DeadStore(DownStore):
    """A store during an outage: uploads fail, and so does its check."""

    async def check(self) -> None:
        raise StorageUnavailable("the store is down", store_code="ServiceUnavailable")


BOUND = 6000
"""Bytes: under one second of one µ-law track once sealed, so one call fills it."""


def with_ingest(settings: Settings, **ingest: Any) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=ingest)})


@pytest.fixture
async def bounded(aiohttp_client: Callable, gateway_settings: Settings) -> Gateway:
    """A gateway whose spool is full after about a second of one call; flushes every 1 KiB."""
    settings = with_ingest(gateway_settings, spool_max_bytes=BOUND, flush_bytes=1024)
    client = await aiohttp_client(GatewayServer(build_app(settings)))
    return await start_gateway(client)


async def readyz(gateway: Gateway) -> tuple[int, dict[str, Any]]:
    response = await gateway.client.get("/readyz")
    return response.status, dict(await response.json())


async def test_a_full_spool_refuses_new_calls_while_the_current_call_records_on(
    bounded: Gateway,
) -> None:
    gateway = bounded
    tenant = await gateway.tenant("acme", NO_CONSENT)
    spool = gateway.app[SERVICES].vault.spool
    assert spool is not None and spool.max_bytes == BOUND
    current = await gateway.announce(tenant)
    sent = ULAW.encode(tone(3.0, 440, seed=31))
    messages = list(twilio_call(sent))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(current["call_id"], tracks=("inbound",)))
    first, rest = messages[:75], messages[75:]  # 1.5 s, then 1.5 s more
    for message in first:
        await ws.send_str(message)
    await until(lambda: spool.full)

    # A new call is refused, announced or not; nothing of it is stored.
    response = await gateway.client.post(
        f"/v1/tenants/{tenant.id}/calls",
        json={"from": "+40711111111", "to": "+40722222222", "transport": "twilio"},
        headers=bearer(tenant.pbx),
    )
    assert response.status == 503
    refusal = await response.json()
    assert refusal["error"] == "spool_full"
    assert "CALLVAULT_INGEST__SPOOL_MAX_BYTES" in refusal["message"]
    other = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await other.send_str(twilio_connected())
    await other.send_str(
        twilio_start("CA-unannounced", tracks=("inbound",), **{"from": "+4071", "to": "+4072"})
    )
    assert await closed(other) == (1013, "spool_full")
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/calls/CA-unannounced", headers=bearer(tenant.admin)
    )
    assert response.status == 404
    status, body = await readyz(gateway)
    assert (status, body["error"]) == (503, "spool_full")
    metrics = await (await gateway.client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_spool_full_refusals_total") == 2
    assert metric_value(metrics, "callvault_spool_bytes") >= BOUND

    # The call in progress records on past the bound, to its end.
    for message in rest:
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")
    pcm = await recording_wav(gateway, tenant, current["recording_id"])
    assert pcm.shape == (len(sent), 2)
    np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(sent))

    # Published, its audio left the spool: new calls are taken again.
    assert spool.held_bytes == 0 and not spool.full
    assert await readyz(gateway) == (200, {"status": "ready"})
    await gateway.announce(tenant)


async def test_readyz_is_degraded_while_spooled_audio_waits_for_the_store(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    settings = with_ingest(gateway_settings, publish_retry=timedelta(seconds=0.2))
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    tenant = await gateway.tenant("acme", NO_CONSENT)
    spool = gateway.app[SERVICES].vault.spool
    assert spool is not None
    store = spool._store
    spool._store = DeadStore(store)  # the store goes down during the call
    announced = await gateway.announce(tenant)
    sent = ULAW.encode(tone(1.0, 440, seed=32))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(announced["call_id"], tracks=("inbound",)))
    for message in twilio_call(sent):
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")

    # The commit failed: the object waits in the spool, and the node says so but takes calls.
    status, body = await readyz(gateway)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["store"].startswith("down")
    assert body["spool_pending_bytes"] == body["spool_bytes"] > len(sent)
    assert spool.store_down
    await gateway.announce(tenant)  # degraded, not refusing

    # The store is back: the publisher's next try (0.2 s, then 0.4 s...) publishes it.
    spool._store = store
    audio = f"/v1/recordings/{announced['recording_id']}/audio"
    async with asyncio.timeout(10):
        while (await gateway.client.get(audio, headers=bearer(tenant.admin))).status == 503:  # noqa: ASYNC110 - published by another task
            await asyncio.sleep(0.05)
    assert not spool.store_down and not spool.pending()
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    np.testing.assert_array_equal(pcm[:, 0], ULAW.decode(sent))
    assert await readyz(gateway) == (200, {"status": "ready"})


def test_the_publisher_retries_after_the_first_wait_doubling_up_to_the_cap() -> None:
    schedule = RetrySchedule(2.0, cap=10.0)
    assert not schedule.due(100.0)  # objects started to wait: the first try 2 s later
    assert not schedule.due(101.9)
    assert schedule.due(102.0)
    waits = []
    now = 102.0
    for _ in range(5):
        schedule.failed(now)
        assert schedule.due_at is not None
        waits.append(schedule.due_at - now)
        assert not schedule.due(schedule.due_at - 0.01)
        now = schedule.due_at
        assert schedule.due(now)
    assert waits == [4.0, 8.0, 10.0, 10.0, 10.0]
    schedule.reset()  # published: the next outage starts from the first wait again
    assert not schedule.due(200.0)
    assert schedule.due(202.0)
    with pytest.raises(ValueError, match="positive"):
        RetrySchedule(0)


async def test_a_spool_that_fails_its_fsync_closes_the_stream(
    aiohttp_client: Callable, gateway_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that fails after it took the audio (the disk fails) has lost that audio: the
    stream is closed with the error, not kept on losing every flush in silence (as a catalog
    outage, which leaves the audio buffered, would be)."""
    settings = with_ingest(gateway_settings, flush_bytes=1024)
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call = await gateway.announce(tenant)

    def failing_disk(handle: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_module, "_sync", failing_disk)
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(call["call_id"], tracks=("inbound",)))
    for message in list(twilio_call(ULAW.encode(tone(1.0, 440, seed=7))))[:25]:
        if ws.closed:
            break
        await ws.send_str(message)
    code, reason = await closed(ws)
    assert (code, reason) == (1011, "storage_unavailable")
    metrics = await (await gateway.client.get("/metrics")).text()
    assert metric_value(metrics, "callvault_flush_failures_total") >= 1
