"""Ingest over the real app in process: refusals, bad input beside a good call, pause and
resume, reconnects, flushing, bounded memory and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from gateway.app import build_app
from gateway.ingest import endpoints
from gateway.ingest.stream import StreamBinding
from gateway.settings import Settings
from gateway.state import CALLS, METRICS, SERVICES
from tests.gateway import (
    RECORD,
    ULAW,
    DownStore,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    audiosocket_frame,
    audiosocket_id,
    audiosocket_uuid,
    bearer,
    read_wav,
    start_gateway,
    tone,
    twilio_call,
    twilio_connected,
    twilio_media,
    twilio_start,
    twilio_stop,
)

NO_CONSENT = {"recording": {"enabled": True}, "consent": {"required": False}}


async def recording_wav(gateway: Gateway, tenant: TenantTokens, recording_id: str) -> np.ndarray:
    response = await gateway.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    channels, rate, pcm = read_wav(await response.read())
    assert (channels, rate) == (2, 8000)
    return pcm


async def recording(gateway: Gateway, tenant: TenantTokens, recording_id: str) -> dict[str, Any]:
    response = await gateway.client.get(
        f"/v1/recordings/{recording_id}", headers=bearer(tenant.admin)
    )
    assert response.status == 200
    return dict(await response.json())


async def objects_of(gateway: Gateway, tenant: str) -> list[Any]:
    return await gateway.app[SERVICES].catalog.objects.list(tenant)


async def closed(ws: Any) -> tuple[int | None, str]:
    """Read until the server closes; the close code and reason."""
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code, message.extra or ""
        if message.type is WSMsgType.ERROR:
            return ws.close_code, ""


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (polling, 10 s at most) until the gateway reached a state."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the state lives in another task
            await asyncio.sleep(0.01)


async def frames_processed(gateway: Gateway, count: int, transport: str = "twilio") -> None:
    """Wait until the gateway has taken ``count`` frames (sending is not processing)."""
    frames_in = gateway.app[METRICS].frames_in.labels(transport)
    await until(lambda: frames_in._value.get() >= count)


async def dropped(gateway: Gateway) -> None:
    """Wait until the gateway noticed that the only live call's stream is gone."""
    await until(lambda: not gateway.app[CALLS].live()[0].attached)


async def stream_twilio(
    gateway: Gateway, tenant: TenantTokens, call_id: str, inbound: bytes, outbound: bytes | None
) -> tuple[int | None, str]:
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_connected())
    await ws.send_str(twilio_start(call_id))
    for message in twilio_call(inbound, outbound):
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    return await closed(ws)


# --- refusals -------------------------------------------------------------------------------


async def test_unannounced_twilio_call_is_refused_by_default_instructions(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")  # instructions never set: all off
    ws = await gateway.client.ws_connect("/v1/ingest/twilio")
    await ws.send_str(twilio_connected())
    await ws.send_str(
        twilio_start(
            "call-1",
            token=tenant.pbx,
            **{"from": "+40711111111", "to": "+40722222222", "consent": "granted"},
        )
    )
    assert await closed(ws) == (1008, "recording_not_instructed")
    call = await gateway.app[SERVICES].catalog.calls.get("acme", "call-1")
    assert call.refusal_code == "recording_not_instructed"  # the CDR, and nothing else
    assert await objects_of(gateway, "acme") == []


@pytest.mark.parametrize(
    ("instructions", "parameters", "code"),
    [
        (RECORD, {"consent": "not_asked"}, "consent_missing"),
        (RECORD, {"consent": "denied"}, "consent_missing"),
        (
            {**NO_CONSENT, "exclude_numbers": ["+40 722 222 222"]},
            {"consent": "granted"},
            "number_excluded",
        ),
    ],
)
async def test_unannounced_refusals_close_1008_with_their_code(
    gateway: Gateway, instructions: dict[str, Any], parameters: dict[str, str], code: str
) -> None:
    tenant = await gateway.tenant("acme", instructions)
    ws = await gateway.client.ws_connect(f"/v1/ingest/twilio?token={tenant.pbx}")
    await ws.send_str(
        twilio_start("call-1", **{"from": "+40711111111", "to": "+40722222222", **parameters})
    )
    await ws.send_str(twilio_media("inbound", 0, b"\xff" * 160))
    assert await closed(ws) == (1008, code)
    assert await objects_of(gateway, "acme") == []


async def test_a_stream_for_a_call_refused_at_announcement_gets_its_refusal(
    gateway: Gateway,
) -> None:
    tenant = await gateway.tenant("acme", RECORD)
    response = await gateway.client.post(
        "/v1/tenants/acme/calls",
        json={"call_id": "c1", "from": "+40711111111", "to": "+40722222222", "transport": "twilio"},
        headers=bearer(tenant.pbx),
    )
    assert response.status == 403
    assert (await response.json())["error"] == "consent_missing"
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start("c1"))
    assert await closed(ws) == (1008, "consent_missing")
    assert await objects_of(gateway, "acme") == []


@pytest.mark.parametrize(
    ("instructions", "consent", "code"),
    [
        ({}, "granted", "recording_not_instructed"),
        (RECORD, "denied", "consent_missing"),
        ({**NO_CONSENT, "exclude_numbers": ["+40711111111"]}, "granted", "number_excluded"),
    ],
)
async def test_a_refused_audiosocket_call_gets_no_id_and_its_call_id_opens_nothing(
    gateway: Gateway,
    gateway_settings: Settings,
    instructions: dict[str, Any],
    consent: str,
    code: str,
) -> None:
    """A refusal answers no AudioSocket id, so a stream naming the refused call by its call id
    meets the same ``unknown_call`` as any UUID nobody announced (formerly it met the
    refusal code: API.md's AudioSocket ids changed that)."""
    tenant = await gateway.tenant("acme", instructions)
    refused = str(uuid.uuid4())
    response = await gateway.client.post(
        "/v1/tenants/acme/calls",
        json={
            "call_id": refused,
            "from": "+40711111111",
            "to": "+40722222222",
            "transport": "audiosocket",
            "consent": consent,
        },
        headers=bearer(tenant.pbx),
    )
    assert response.status == 403
    body = await response.json()
    assert body["error"] == code
    assert "ingest" not in body
    port = gateway_settings.audiosocket.port
    for named in (refused, str(uuid.uuid4())):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(audiosocket_uuid(named) + audiosocket_frame(0x10, b"\x00\x01" * 160))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert answer == audiosocket_frame(0xFF, b"unknown_call")
    assert await objects_of(gateway, "acme") == []


# --- bad input beside a good call --------------------------------------------------------


BAD_STREAMS: list[tuple[str, Callable[[str, str], list[Any]], tuple[int, str]]] = [
    ("not json", lambda call, token: [twilio_start(call), "{not json"], (1007, "bad_json")),
    (
        "unknown event",
        lambda call, token: [twilio_start(call), json.dumps({"event": "nope"})],
        (1007, "unknown_event"),
    ),
    (
        "bad base64",
        lambda call, token: [
            twilio_start(call),
            json.dumps(
                {
                    "event": "media",
                    "media": {"track": "inbound", "timestamp": "0", "payload": "###"},
                }
            ),
        ],
        (1007, "bad_base64"),
    ),
    (
        "second start",
        lambda call, token: [twilio_start(call), twilio_start(call)],
        (1007, "duplicate_start"),
    ),
    (
        "media before start",
        lambda call, token: [twilio_media("inbound", 0, b"\xff" * 160)],
        (1008, "stream_not_started"),
    ),
    ("unknown call", lambda call, token: [twilio_start("no-such-call")], (1008, "unknown_call")),
    (
        "binary frame",
        lambda call, token: [twilio_start(call), b"\x00" * 10],
        (1007, "binary_not_expected"),
    ),
]


@pytest.mark.parametrize(
    ("name", "messages", "expected"), BAD_STREAMS, ids=[b[0] for b in BAD_STREAMS]
)
async def test_bad_input_closes_only_the_bad_stream(
    gateway: Gateway,
    name: str,
    messages: Callable[[str, str], list[Any]],
    expected: tuple[int, str],
) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    good_call = (await gateway.announce(tenant))["call_id"]
    bad_call = (await gateway.announce(tenant))["call_id"]
    inbound = ULAW.encode(tone(1.0, 440, seed=1))

    good = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await good.send_str(twilio_start(good_call))
    half = list(twilio_call(inbound))
    for message in half[: len(half) // 2]:
        await good.send_str(message)

    bad = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    for message in messages(bad_call, tenant.pbx):
        await (bad.send_bytes(message) if isinstance(message, bytes) else bad.send_str(message))
    assert await closed(bad) == expected

    for message in half[len(half) // 2 :]:
        await good.send_str(message)
    await good.send_str(twilio_stop())
    assert await closed(good) == (1000, "stop")

    catalog = gateway.app[SERVICES].catalog
    good_recording = await catalog.recordings.of_call("acme", good_call)
    assert good_recording is not None
    pcm = await recording_wav(gateway, tenant, good_recording.id)
    assert np.array_equal(pcm[:, 0], ULAW.decode(inbound))
    bad_recording = await catalog.recordings.of_call("acme", bad_call)
    assert bad_recording is not None
    assert await catalog.objects.list("acme", recording_id=bad_recording.id) == []


async def test_a_message_over_64_kib_closes_1009(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    await ws.send_str(twilio_media("inbound", 0, b"\xff" * 50_000))  # ~67 KB of base64
    code, _reason = await closed(ws)
    assert code == 1009


@pytest.mark.parametrize("where", ["query", "start"])
async def test_wrong_tokens_are_refused_1008(gateway: Gateway, where: str) -> None:
    acme = await gateway.tenant("acme", NO_CONSENT)
    other = await gateway.tenant("other", NO_CONSENT)
    call_id = (await gateway.announce(acme))["call_id"]
    for token, code in (
        ("cv_not-a-token", "unauthorized"),
        (other.pbx, "unknown_call"),
        (acme.admin, "forbidden"),
    ):
        if where == "query":
            ws = await gateway.client.ws_connect(f"/v1/ingest/twilio?token={token}")
            await ws.send_str(twilio_start(call_id))
        else:
            ws = await gateway.client.ws_connect("/v1/ingest/twilio")
            await ws.send_str(twilio_start(call_id, token=token))
        assert await closed(ws) == (1008, code), (where, token[:6])
    assert await objects_of(gateway, "acme") == []


async def test_a_wrong_token_in_the_header_is_refused_before_the_upgrade(
    gateway: Gateway,
) -> None:
    """A token in the upgrade's Authorization header is checked before the upgrade: a bad
    one gets an HTTP 401 (another role's a 403) as JSON and no WebSocket; another tenant's
    pbx token passes the upgrade and meets the call's 1008 at start."""
    acme = await gateway.tenant("acme", NO_CONSENT)
    other = await gateway.tenant("other", NO_CONSENT)
    call_id = (await gateway.announce(acme))["call_id"]
    for path in ("/v1/ingest/twilio", "/v1/ingest/fork"):
        for token, status, code in (
            ("cv_not-a-token", 401, "unauthorized"),
            (acme.admin, 403, "forbidden"),
        ):
            response = await gateway.client.get(
                path,
                headers={**bearer(token), "Connection": "Upgrade", "Upgrade": "websocket",
                         "Sec-WebSocket-Version": "13",
                         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
            )  # fmt: skip
            assert response.status == status, (path, token[:6])
            assert (await response.json())["error"] == code
            assert "Upgrade" not in response.headers
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(other.pbx))
    await ws.send_str(twilio_start(call_id))
    assert await closed(ws) == (1008, "unknown_call")
    assert await objects_of(gateway, "acme") == []


async def test_audiosocket_connections_are_capped_per_peer(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    """Over CALLVAULT_AUDIOSOCKET__MAX_CONNECTIONS_PER_PEER a connection gets an 0xff
    `too_many_connections` frame and is closed; the admitted ones are unaffected, and a place
    frees when one closes."""
    settings = gateway_settings.model_copy(
        update={
            "audiosocket": gateway_settings.audiosocket.model_copy(
                update={"max_connections_per_peer": 2}
            )
        }
    )
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    port = settings.audiosocket.port
    admitted = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), timeout=10) == audiosocket_frame(
        0xFF, b"too_many_connections"
    )
    writer.close()
    for _, open_writer in admitted:
        assert not open_writer.is_closing()
    admitted[0][1].close()
    await until(lambda: gateway.app[METRICS].connections.labels("audiosocket")._value.get() == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(audiosocket_frame(0x01, uuid.uuid4().bytes))  # admitted: answered in turn
    assert await asyncio.wait_for(reader.read(), timeout=10) == audiosocket_frame(
        0xFF, b"unknown_call"
    )
    writer.close()
    admitted[1][1].close()


# --- pause, resume, reconnect ---------------------------------------------------------------


async def test_pause_discards_audio_and_keeps_the_gap_as_silence(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    inbound = ULAW.encode(tone(3.0, 440, seed=2))
    outbound = ULAW.encode(tone(3.0, 660, seed=3))
    messages = list(twilio_call(inbound, outbound))  # 150 frames per track, 2 messages each
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    for message in messages[:100]:  # frames 0-49: 0.0-1.0 s
        await ws.send_str(message)
    await frames_processed(gateway, 100)
    assert (
        await gateway.client.post(f"/v1/calls/{call_id}/pause", headers=bearer(tenant.pbx))
    ).status == 200
    for message in messages[100:200]:  # 1.0-2.0 s: a card number, say
        await ws.send_str(message)
    await frames_processed(gateway, 200)
    assert (
        await gateway.client.post(f"/v1/calls/{call_id}/resume", headers=bearer(tenant.pbx))
    ).status == 200
    for message in messages[200:]:
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")

    rec = await gateway.app[SERVICES].catalog.recordings.of_call("acme", call_id)
    assert rec is not None
    pcm = await recording_wav(gateway, tenant, rec.id)
    assert pcm.shape == (24000, 2)
    for channel, sent in ((0, inbound), (1, outbound)):
        decoded = ULAW.decode(sent)
        assert np.array_equal(pcm[:8000, channel], decoded[:8000])
        assert not pcm[8000:16000, channel].any()  # the paused second is silence
        assert np.array_equal(pcm[16000:, channel], decoded[16000:])
    # Not merely silent in the export: the paused audio was never stored at all.
    stored = sum(o.size or 0 for o in await objects_of(gateway, "acme"))
    assert stored < 2 * 16000 + 4096


async def test_a_dropped_stream_reconnects_to_the_same_recording(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    call_id = announced["call_id"]
    first = ULAW.encode(tone(1.0, 440, seed=4))
    second = ULAW.encode(tone(1.0, 550, seed=5))

    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    for message in twilio_call(first):
        await ws.send_str(message)
    await ws.close()  # dropped without stop
    await dropped(gateway)

    clock.advance(3.0)  # 1 s of audio arrived, 3 s went by: 2 s of outage
    await gateway.app[CALLS].tick(clock.now())  # within the grace: still open
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    for message in twilio_call(second):
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")

    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert pcm.shape == (32000, 2)
    assert np.array_equal(pcm[:8000, 0], ULAW.decode(first))
    assert not pcm[8000:24000, 0].any()
    assert np.array_equal(pcm[24000:, 0], ULAW.decode(second))
    objects = await objects_of(gateway, "acme")
    # Each stint its own object (published as its stream dropped), one recording.
    assert [o.track for o in objects] == ["inbound", "inbound"]


async def test_a_dropped_stream_is_finalized_after_the_grace(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    inbound = ULAW.encode(tone(0.5, 440, seed=6))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(announced["call_id"]))
    for message in twilio_call(inbound):
        await ws.send_str(message)
    await ws.close()
    await dropped(gateway)

    calls = gateway.app[CALLS]
    clock.advance(29.0)
    await calls.tick(clock.now())
    assert (await recording(gateway, tenant, announced["recording_id"]))["status"] == "recording"
    clock.advance(1.0)
    await calls.tick(clock.now())
    meta = await recording(gateway, tenant, announced["recording_id"])
    assert meta["status"] == "recorded"
    assert meta["duration_s"] == 0.5
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], ULAW.decode(inbound))

    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(announced["call_id"]))
    assert await closed(ws) == (1008, "call_ended")


async def started_without_autoping(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> tuple[TenantTokens, dict[str, Any], Any]:
    """A Twilio stream started, whose pings the test answers or not (autoping off), with the
    gateway's quiet watch looking every 0.2 s."""
    monkeypatch.setattr(endpoints, "PING_AFTER_S", 0.2)
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    ws = await gateway.client.ws_connect(
        "/v1/ingest/twilio", headers=bearer(tenant.pbx), autoping=False
    )
    await ws.send_str(twilio_start(announced["call_id"]))
    return tenant, announced, ws


async def test_a_quiet_stream_is_pinged_and_kept_while_it_answers(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant, announced, ws = await started_without_autoping(gateway, monkeypatch)
    first = ULAW.encode(tone(0.5, 440, seed=7))
    second = ULAW.encode(tone(0.5, 550, seed=8))
    for message in twilio_call(first):
        await ws.send_str(message)
    # Silent for eight intervals, answering each ping by hand: the stream stays attached.
    pings = 0
    loop = asyncio.get_running_loop()
    quiet_until = loop.time() + 1.6
    while (left := quiet_until - loop.time()) > 0:
        try:
            message = await ws.receive(timeout=left)
        except TimeoutError:
            break
        assert message.type is WSMsgType.PING, message
        pings += 1
        await ws.pong(message.data)
    assert pings >= 2
    assert gateway.app[CALLS].live()[0].attached
    for message in twilio_call(second):
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:4000, 0], ULAW.decode(first))
    assert np.array_equal(pcm[-4000:, 0], ULAW.decode(second))


async def test_a_quiet_stream_that_answers_no_ping_is_cut_and_its_call_waits(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, announced, ws = await started_without_autoping(gateway, monkeypatch)
    for message in twilio_call(ULAW.encode(tone(0.5, 440, seed=9))):
        await ws.send_str(message)
    await frames_processed(gateway, 25)
    # The client reads nothing now, so it never answers the ping: a vanished PBX.
    await dropped(gateway)
    assert gateway.app[METRICS].ingest_errors.labels("ping_timeout")._value.get() == 1
    live = gateway.app[CALLS].live()
    assert [call.call_id for call in live] == [announced["call_id"]]  # waiting, not ended
    assert live[0].detached_at is not None
    # The PBX's side sees its connection gone.
    message = await ws.receive(timeout=5)
    while message.type is WSMsgType.PING:  # the ping came before the cut
        message = await ws.receive(timeout=5)
    assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR)


async def test_a_stream_whose_handler_is_held_up_is_not_cut_for_its_silence(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the handler is busy with a message (a flush held up by a slow disk), nothing is
    read from the socket: that silence is ours, and the PBX is neither pinged nor cut."""
    handle = StreamBinding.handle
    held = asyncio.Event()

    async def slow_handle(self: StreamBinding, events: Any, now: datetime) -> bool:
        if held.is_set():
            held.clear()
            await asyncio.sleep(1.0)  # five intervals
        return await handle(self, events, now)

    monkeypatch.setattr(StreamBinding, "handle", slow_handle)
    tenant, announced, ws = await started_without_autoping(gateway, monkeypatch)
    audio = ULAW.encode(tone(0.5, 440, seed=10))
    messages = twilio_call(audio)
    held.set()
    for message in messages:
        await ws.send_str(message)
    await ws.send_str(twilio_stop())
    # The client answers nothing (it reads only the close): had the watch taken the held-up
    # handler's silence for the peer's, it would have cut the stream before its stop.
    assert await closed(ws) == (1000, "stop")
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], ULAW.decode(audio))


async def test_pings_before_the_start_do_not_hold_a_connection_past_the_deadline(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    """Each ping is a message the handler reads (and answers) before the stream starts; a
    peer that pings without pause is still closed at CALLVAULT_INGEST__HANDSHAKE_TIMEOUT."""
    settings = gateway_settings.model_copy(
        update={
            "ingest": gateway_settings.ingest.model_copy(
                update={"handshake_timeout": timedelta(seconds=0.3)}
            )
        }
    )
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    for route in ("/v1/ingest/fork", "/v1/ingest/twilio"):
        ws = await gateway.client.ws_connect(route, autoping=False)

        async def chatter(ws: Any = ws) -> None:
            while not ws.closed:
                await ws.ping()
                await asyncio.sleep(0)

        pinging = asyncio.create_task(chatter())
        try:
            code, reason = 0, ""
            async with asyncio.timeout(10):
                while True:
                    message = await ws.receive()
                    if message.type is WSMsgType.PONG:
                        continue
                    code, reason = ws.close_code or 0, message.extra or ""
                    break
            assert (code, reason) == (1008, "start_timeout"), route
        finally:
            pinging.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pinging


async def test_a_second_stream_for_a_streaming_call_is_refused(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    first = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await first.send_str(twilio_start(call_id))
    await first.send_str(twilio_media("inbound", 0, b"\xff" * 160))
    await frames_processed(gateway, 1)
    second = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await second.send_str(twilio_start(call_id))
    assert await closed(second) == (1008, "call_in_progress")
    await first.send_str(twilio_stop())
    assert await closed(first) == (1000, "stop")


async def test_a_stream_for_a_call_announced_for_another_transport_is_refused(
    gateway: Gateway,
) -> None:
    """An RTP call carries PCMU at 8 kHz like Twilio; a Twilio stream naming it must still
    be refused, or it would write into the tracks the call's RTP ports feed."""
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant, transport="rtp"))["call_id"]
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    assert await closed(ws) == (1008, "transport_mismatch")


# --- flushing and memory --------------------------------------------------------------------


async def test_audio_is_flushed_every_interval(clocked_gateway: Gateway, clock: FakeClock) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    await ws.send_str(twilio_media("inbound", 0, b"\x7e" * 160))
    await frames_processed(gateway, 1)
    session = (gateway.app[CALLS].live())[0]
    assert session.buffered() == 160  # below 64 KiB and within 2 s: still in memory
    clock.advance(2.0)
    await gateway.app[CALLS].tick(clock.now())
    assert session.buffered() == 0
    metrics = await (await gateway.client.get("/metrics")).text()
    assert "callvault_flush_latency_seconds_count 1.0" in metrics
    [stored] = await objects_of(gateway, "acme")
    assert stored.state == "writing"  # flushed towards the store, not yet committed
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")


class SlowStore:
    """Wraps the real spool (or a store); every upload's flush waits on an event the test
    controls, like a disk or store that stopped answering."""

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self._inner = inner
        self._gate = gate
        self.stuck = asyncio.Event()
        """Set once a flush is waiting at the gate."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def open_upload(self, key: str) -> Any:
        upload = await self._inner.open_upload(key)
        gate, stuck = self._gate, self.stuck

        class Slow:
            def __getattr__(self, name: str) -> Any:
                return getattr(upload, name)

            async def flush(self) -> None:
                stuck.set()
                await gate.wait()
                await upload.flush()

        return Slow()


async def test_a_slow_store_pushes_back_instead_of_buffering(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    settings = gateway_settings.model_copy(
        update={"ingest": gateway_settings.ingest.model_copy(update={"flush_bytes": 4096})}
    )
    app = build_app(settings)
    gate = asyncio.Event()
    slow: list[SlowStore] = []

    async def slow_store(app: web.Application) -> Any:
        vault = app[SERVICES].vault
        slow.append(SlowStore(vault.spool, gate))
        vault.spool = slow[0]  # live audio is flushed to the spool
        yield

    app.cleanup_ctx.insert(1, slow_store)
    client: TestClient = await aiohttp_client(app)
    gateway = await start_gateway(client)
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    ws = await client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    inbound = ULAW.encode(tone(10.0, 440, seed=7))  # 80 KB, 20x the flush threshold
    sender = asyncio.create_task(_send_all(ws, list(twilio_call(inbound))))
    await asyncio.wait_for(slow[0].stuck.wait(), timeout=20)
    session = app[CALLS].live()[0]
    frames_in = app[METRICS].frames_in.labels("twilio")
    stalled_at = frames_in._value.get()
    await asyncio.sleep(0.3)  # time in which a gateway that kept reading would take frames
    # The store is stuck: the session holds at most one flush's worth plus one frame, and
    # the gateway stopped taking frames, so the rest waits in the socket, not in memory.
    assert session.buffered() <= 4096 + 160
    assert frames_in._value.get() == stalled_at < 500
    gate.set()
    await asyncio.wait_for(sender, timeout=20)
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")
    rec = await app[SERVICES].catalog.recordings.of_call("acme", call_id)
    assert rec is not None
    pcm = await recording_wav(gateway, tenant, rec.id)
    assert np.array_equal(pcm[:, 0], ULAW.decode(inbound))


async def _send_all(ws: Any, messages: list[str]) -> None:
    for message in messages:
        await ws.send_str(message)


async def test_shutdown_finalizes_open_calls(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    app = build_app(gateway_settings)
    client: TestClient = await aiohttp_client(app)
    gateway = await start_gateway(client)
    tenant = await gateway.tenant("acme", {**NO_CONSENT, "ai": {"transcript": True}})
    announced = await gateway.announce(tenant)
    inbound = ULAW.encode(tone(0.4, 440, seed=8))
    ws = await client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(announced["call_id"]))
    for message in twilio_call(inbound):
        await ws.send_str(message)
    await frames_processed(gateway, len(inbound) // 160)
    catalog = app[SERVICES].catalog
    await client.server.close()  # on_shutdown closes the socket (1001), cleanup finalizes
    assert ws.closed or (await ws.receive(timeout=5)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    # The catalog is closed with the app; reopen it to look.
    from crypto.auditkeys import AuditKeyring
    from gateway.services import open_keyring
    from storage.catalog import Catalog

    reopened = await Catalog.open(
        gateway_settings.catalog_url, audit_keys=AuditKeyring(open_keyring(gateway_settings))
    )
    try:
        rec = await reopened.recordings.get("acme", announced["recording_id"])
        assert rec.status == "processing"  # AI was instructed: a job was queued
        assert rec.samples == 3200
        objects = await reopened.objects.list("acme", recording_id=rec.id)
        assert [o.state for o in objects] == ["committed"]
        job = await reopened.jobs.claim("test", datetime.now(UTC), timedelta(minutes=1))
        assert job is not None
        assert (job.kind, job.recording_id, job.tenant_id) == ("analyze", rec.id, "acme")
        assert await reopened.jobs.claim("test", datetime.now(UTC), timedelta(minutes=1)) is None
    finally:
        await reopened.close()
    del catalog


# --- fork and AudioSocket --------------------------------------------------------------------


async def test_fork_stereo_is_split_into_two_tracks(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="fork")
    caller, callee = tone(1.0, 300, seed=9), tone(1.0, 500, seed=10)
    interleaved = np.column_stack([caller, callee]).astype("<i2").tobytes()
    ws = await gateway.client.ws_connect(f"/v1/ingest/fork?token={tenant.pbx}")
    await ws.send_str(
        json.dumps({"call_id": announced["call_id"], "sampleRate": 8000, "mixType": "stereo"})
    )
    for start in range(0, len(interleaved), 640):
        await ws.send_bytes(interleaved[start : start + 640])
    await ws.send_str(json.dumps({"event": "stop"}))
    assert await closed(ws) == (1000, "stop")
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], caller)
    assert np.array_equal(pcm[:, 1], callee)
    # Tokens travel in URLs here; they must never reach the logs.
    assert tenant.pbx not in caplog.text
    assert tenant.pbx[3:] not in caplog.text


async def test_audiosocket_call_is_recorded_on_the_inbound_track(
    gateway: Gateway, gateway_settings: Settings
) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    # Asterisk's ${UNIQUEID}: an AudioSocket call's id is the PBX's own, like any call's.
    announced = await gateway.announce(tenant, transport="audiosocket", call_id="1732788000.42")
    assert announced["call_id"] == "1732788000.42"
    assert announced["ingest"]["audiosocket"]["address"] == (
        f"127.0.0.1:{gateway_settings.audiosocket.port}"
    )
    audio = tone(0.6, 350, seed=11).astype("<i2").tobytes()
    _reader, writer = await asyncio.open_connection("127.0.0.1", gateway_settings.audiosocket.port)
    writer.write(audiosocket_uuid(audiosocket_id(announced)))
    for start in range(0, len(audio), 320):
        writer.write(audiosocket_frame(0x10, audio[start : start + 320]))
    writer.write(audiosocket_frame(0x00))
    await writer.drain()
    await asyncio.wait_for(_reader.read(), timeout=10)  # the server closes after the hangup
    writer.close()
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], np.frombuffer(audio, "<i2"))
    assert not pcm[:, 1].any()


async def test_audiosocket_refuses_peers_outside_the_allowed_networks(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    settings = gateway_settings.model_copy(
        update={
            "audiosocket": gateway_settings.audiosocket.model_copy(
                update={"allow_networks": ("10.0.0.0/8",)}
            )
        }
    )
    settings = Settings.model_validate(settings.model_dump())
    gateway = await start_gateway(await aiohttp_client(build_app(settings)))
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant, transport="audiosocket")
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.audiosocket.port)
    writer.write(audiosocket_uuid(audiosocket_id(announced)))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), timeout=10) == audiosocket_frame(
        0xFF, b"forbidden_network"
    )
    writer.close()


async def test_a_store_outage_at_the_end_of_a_call_loses_nothing(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    spool = gateway.app[SERVICES].vault.spool
    store = spool._store
    spool._store = DownStore(store)  # the store goes down during the call
    inbound = ULAW.encode(tone(1.0, 440, seed=12))
    assert await stream_twilio(gateway, tenant, announced["call_id"], inbound, None) == (
        1000,
        "stop",
    )

    meta = await recording(gateway, tenant, announced["recording_id"])
    assert meta["status"] == "recorded" and meta["duration_s"] == 1.0
    response = await gateway.client.get(
        f"/v1/recordings/{announced['recording_id']}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 503  # not a WAV with silence where the audio will be
    assert (await response.json())["error"] == "storage_unavailable"

    assert await gateway.app[CALLS].recover(clock.now()) == 0  # still down: kept in the spool
    spool._store = store  # the store is back; the ticker's next recovery pass publishes
    assert await gateway.app[CALLS].recover(clock.now()) == 1
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], ULAW.decode(inbound))


# --- failures met by the review -------------------------------------------------------------


class FailingOnce:
    """The spool, except that the Nth write of a live upload fails (a disk error)."""

    def __init__(self, inner: Any, fail_at: int) -> None:
        self.inner = inner
        self.writes = 0
        self.fail_at = fail_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def open_upload(self, key: str) -> Any:
        upload = await self.inner.open_upload(key)
        spool = self

        class Failing:
            def __getattr__(self, name: str) -> Any:
                return getattr(upload, name)

            async def write(self, data: bytes) -> None:
                spool.writes += 1
                if spool.writes == spool.fail_at:
                    from storage.errors import StorageUnavailable

                    await upload.write(data[: len(data) // 2])  # torn, then the error
                    raise StorageUnavailable("the spool failed: No space left on device")
                await upload.write(data)

        return Failing()


async def test_a_failed_spool_write_loses_one_flush_and_the_track_goes_on(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    vault = gateway.app[SERVICES].vault
    vault.spool = FailingOnce(vault.spool, fail_at=3)  # header, 1st flush, 2nd flush
    audio = ULAW.encode(tone(3.0, 440, seed=13))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(announced["call_id"]))
    messages = list(twilio_call(audio))
    for second in range(3):  # a flush per second of audio
        for message in messages[second * 50 : (second + 1) * 50]:
            await ws.send_str(message)
        await frames_processed(gateway, (second + 1) * 50)
        clock.advance(2.0)
        try:
            await gateway.app[CALLS].tick(clock.now())
        except Exception:  # noqa: S110 - the ticker logs and goes on; so does this test
            pass
    await ws.send_str(twilio_stop())
    assert await closed(ws) == (1000, "stop")
    await gateway.app[CALLS].recover(clock.now())  # publishes the abandoned first object

    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    decoded = ULAW.decode(audio)
    assert len(pcm) == len(decoded)
    kept = pcm[:, 0] == decoded
    # The failed flush (one second of audio) is the only thing lost: silence, not noise;
    # everything before and after it decodes exactly.
    assert kept[:8000].all() and kept[16000:].all()
    assert not pcm[8000:16000, 0].any()
    objects = await gateway.app[SERVICES].catalog.objects.list("acme")
    assert [o.state for o in objects] == ["committed", "committed"]


async def test_a_finish_that_fails_is_retried_and_keeps_the_audio(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", NO_CONSENT)
    announced = await gateway.announce(tenant)
    audio = ULAW.encode(tone(1.0, 440, seed=14))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(announced["call_id"]))
    for message in twilio_call(audio):
        await ws.send_str(message)
    await frames_processed(gateway, 50)

    catalog = gateway.app[SERVICES].catalog
    finish = catalog.recordings.finish

    async def down(*args: Any, **kwargs: Any) -> Any:
        from storage.errors import CatalogUnavailable

        raise CatalogUnavailable("The catalog database could not be reached.")

    catalog.recordings.finish = down  # type: ignore[method-assign]
    response = await gateway.client.post(
        f"/v1/calls/{announced['call_id']}/end", headers=bearer(tenant.pbx)
    )
    assert response.status == 503
    catalog.recordings.finish = finish  # type: ignore[method-assign]
    await gateway.app[CALLS].tick(clock.now())  # the ticker finishes what failed
    meta = await recording(gateway, tenant, announced["recording_id"])
    assert (meta["status"], meta["duration_s"]) == ("recorded", 1.0)
    pcm = await recording_wav(gateway, tenant, announced["recording_id"])
    assert np.array_equal(pcm[:, 0], ULAW.decode(audio))
    await ws.close()


async def test_a_timestamp_jumping_far_ahead_is_refused(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    await ws.send_str(twilio_media("inbound", 0, b"\xff" * 160))
    await ws.send_str(twilio_media("inbound", 200_000_000, b"\xff" * 160))  # 2.3 days later
    assert await closed(ws) == (1007, "bad_timestamp")


async def test_a_stream_that_never_starts_is_closed(
    aiohttp_client: Callable, gateway_settings: Settings
) -> None:
    """A WebSocket that never sends its start, and an AudioSocket connection that never
    sends its 0x01 frame, are closed after CALLVAULT_INGEST__HANDSHAKE_TIMEOUT."""
    settings = gateway_settings.model_copy(
        update={
            "ingest": gateway_settings.ingest.model_copy(
                update={"handshake_timeout": timedelta(seconds=0.3)}
            )
        }
    )
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    ws = await gateway.client.ws_connect("/v1/ingest/twilio")
    await ws.send_str(twilio_connected())  # chatty, but never a start
    assert await closed(ws) == (1008, "start_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_settings.audiosocket.port)
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert answer == audiosocket_frame(0xFF, b"start_timeout")


async def test_concurrent_lookups_of_a_call_take_it_up_once(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme", NO_CONSENT)
    call_id = (await gateway.announce(tenant))["call_id"]
    calls = gateway.app[CALLS]
    calls._sessions.clear()  # as after a restart: the call is live in the catalog only
    now = datetime.now(UTC)
    first, second = await asyncio.gather(
        calls.session("acme", call_id, now), calls.session("acme", call_id, now)
    )
    assert first is second
    assert calls.live() == [first]


async def test_deeply_nested_json_is_a_400_not_a_500(gateway: Gateway) -> None:
    tenant = await gateway.tenant("acme")
    body = "[" * 100_000 + "]" * 100_000
    response = await gateway.client.put(
        "/v1/tenants/acme/instructions", data=body, headers=bearer(tenant.admin)
    )
    assert response.status == 400
    assert (await response.json())["error"] == "bad_json"
