"""Every call's media timeline is bounded by ``CALLVAULT_CALLS__MAX_DURATION`` (API.md,
"Exposure, limits and trust"), on every transport and however its timestamps run.

Played as a PBX holding a pbx token would: Twilio timestamps jumping ahead, a fork stream and
an AudioSocket stream sent far faster than real time, RTP timestamps jumping ahead within
RTP's own wall-clock bound, and calls that simply last. Each refused stream hears why (close
1007 ``max_duration``, AudioSocket's 0xff ``max_duration``, RTP's drop counted), its call is
ended with reason ``max_duration`` and KEPT: its recording is finalized with exactly the
limit of timeline (the WAV export's length) and its AI job queued; nothing past the limit is
stored; and another call streaming at the same time records every sample it sent.

The limit is 2 s here and the gateway runs on a ``FakeClock``, so that only the test decides
when wall-clock time passes (the calls that stream do so instantly).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import ClientWebSocketResponse

from gateway.app import build_app
from gateway.settings import RtpSettings, Settings
from gateway.state import CALLS, RTP, SERVICES, SETTINGS
from tests.functional.test_ingest import closed, frames_processed, recording, recording_wav
from tests.functional.test_ingest_rtp import (
    announce_rtp,
    call_action,
    counted,
    free_udp_range,
    g711,
    only,
    scrape,
    send,
    to,
    udp_port_taken,
)
from tests.gateway import (
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    audiosocket_frame,
    audiosocket_id,
    audiosocket_uuid,
    bearer,
    free_port,
    metric_value,
    start_gateway,
    tone,
    twilio_call,
    twilio_media,
    twilio_start,
    twilio_stop,
)
from tests.rtp import UdpSender

MAX_S = 2
RATE = 8000
LIMIT = MAX_S * RATE
"""The limit in samples of an 8 kHz call."""
KEPT = {
    "recording": {"enabled": True},
    "consent": {"required": False},
    "ai": {"transcript": True},
}
"""Recording and a transcript: a call ended at its limit is finalized and its job queued."""


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    """The conftest's embedded defaults with a 2 s maximum duration, AudioSocket on a free
    port and RTP ports from a free range of the test's own."""
    base = free_udp_range(12)
    return Settings(
        data_dir=tmp_path / "var",
        audiosocket={"port": free_port()},
        rtp=RtpSettings(port_min=base, port_max=base + 11),
        calls={"max_duration": f"PT{MAX_S}S"},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        audit={"checkpoint_interval": "PT0S"},
    )


# --- helpers ------------------------------------------------------------------------------


async def end_reasons(gateway: Gateway, tenant: TenantTokens, recording_id: str) -> list[str]:
    """The reasons of the recording's ``call.ended`` audit events."""
    response = await gateway.client.get(
        f"/v1/tenants/{tenant.id}/audit?limit=1000", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    return [
        event["detail"]["reason"]
        for event in (await response.json())["items"]
        if event["action"] == "call.ended" and event["object"] == recording_id
    ]


async def kept_at_limit(
    gateway: Gateway, tenant: TenantTokens, recording_id: str, *, duration_s: float = MAX_S
) -> npt.NDArray[np.int16]:
    """Assert the call ended with reason ``max_duration`` and was kept (finalized, its AI
    job queued) with ``duration_s`` of timeline; its export, (frames, 2)."""
    meta = await recording(gateway, tenant, recording_id)
    assert (meta["status"], meta["duration_s"]) == ("processing", duration_s), meta
    assert await end_reasons(gateway, tenant, recording_id) == ["max_duration"]
    pcm = await recording_wav(gateway, tenant, recording_id)
    assert pcm.shape == (round(duration_s * RATE), 2)
    return pcm


async def refused_count(gateway: Gateway) -> float:
    return metric_value(await scrape(gateway), "callvault_ingest_errors_total", code="max_duration")


async def twilio_stream(gateway: Gateway, tenant: TenantTokens, call_id: str) -> Any:
    ws = await gateway.client.ws_connect("/v1/ingest/twilio", headers=bearer(tenant.pbx))
    await ws.send_str(twilio_start(call_id))
    return ws


async def send_all(ws: ClientWebSocketResponse, messages: list[str]) -> None:
    for message in messages:
        await ws.send_str(message)


# --- WebSockets ---------------------------------------------------------------------------


async def test_twilio_timestamps_jumping_ahead_stop_at_the_limit(
    clocked_gateway: Gateway,
) -> None:
    """Timestamps that jump ahead (each jump well within the 600 s a timestamp may skip)
    place frames up to the limit, and the frame that ends exactly at it is stored; the next
    one, contiguous, would end past it: close 1007 ``max_duration``. The call is ended and
    kept with exactly 2 s of timeline, a reconnect meets ``call_ended``, and a call
    streaming beside it records all its audio."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    bad = await gateway.announce(acme)
    good = await gateway.announce(acme)
    good_audio = ULAW.encode(tone(1.0, 440, seed=1))
    good_messages = list(twilio_call(good_audio))
    good_ws = await twilio_stream(gateway, acme, good["call_id"])
    await send_all(good_ws, good_messages[:25])

    frame = ULAW.encode(tone(0.02, 660, seed=2))
    stamps_ms = [0, 600, 1200, 1980]  # the last ends at 2.000 s: exactly the limit
    ws = await twilio_stream(gateway, acme, bad["call_id"])
    await send_all(ws, [twilio_media("inbound", ms, frame) for ms in stamps_ms])
    await ws.send_str(twilio_media("inbound", 2000, frame))  # 2.000-2.020 s
    assert await closed(ws) == (1007, "max_duration")

    await send_all(good_ws, [*good_messages[25:], twilio_stop()])
    assert await closed(good_ws) == (1000, "stop")
    assert np.array_equal(
        (await recording_wav(gateway, acme, good["recording_id"]))[:, 0], ULAW.decode(good_audio)
    )

    pcm = await kept_at_limit(gateway, acme, bad["recording_id"])
    expected = np.zeros(LIMIT, dtype=np.int16)
    for ms in stamps_ms:
        start = ms * RATE // 1000
        expected[start : start + len(frame)] = ULAW.decode(frame)
    assert np.array_equal(pcm[:, 0], expected)
    assert not pcm[:, 1].any()
    assert await refused_count(gateway) == 1

    again = await twilio_stream(gateway, acme, bad["call_id"])
    assert await closed(again) == (1008, "call_ended")


async def test_a_fork_stream_faster_than_real_time_is_kept_up_to_the_limit(
    clocked_gateway: Gateway,
) -> None:
    """A stereo fork stream sends 2.02 s of audio at once (no wall-clock time passes): the
    first 2 s is stored on both tracks, sample for sample, as a replay's would be; the frame
    after it is refused with close 1007 ``max_duration``, and the call is kept. A mono fork
    call streaming meanwhile is unaffected."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    bad = await gateway.announce(acme, transport="fork")
    good = await gateway.announce(acme, transport="fork")
    good_audio = tone(1.0, 300, seed=3).astype("<i2").tobytes()
    good_ws = await gateway.client.ws_connect("/v1/ingest/fork", headers=bearer(acme.pbx))
    await good_ws.send_str(json.dumps({"call_id": good["call_id"], "sampleRate": RATE}))
    half = len(good_audio) // 2
    for start in range(0, half, 320):
        await good_ws.send_bytes(good_audio[start : start + 320])

    caller, callee = tone(MAX_S + 0.02, 400, seed=4), tone(MAX_S + 0.02, 700, seed=5)
    interleaved = np.column_stack([caller, callee]).astype("<i2").tobytes()
    ws = await gateway.client.ws_connect("/v1/ingest/fork", headers=bearer(acme.pbx))
    await ws.send_str(
        json.dumps({"call_id": bad["call_id"], "sampleRate": RATE, "mixType": "stereo"})
    )
    for start in range(0, len(interleaved), 640):  # 101 frames of 20 ms: the last is refused
        await ws.send_bytes(interleaved[start : start + 640])
    assert await closed(ws) == (1007, "max_duration")

    for start in range(half, len(good_audio), 320):
        await good_ws.send_bytes(good_audio[start : start + 320])
    await good_ws.send_str(json.dumps({"event": "stop"}))
    assert await closed(good_ws) == (1000, "stop")
    good_pcm = await recording_wav(gateway, acme, good["recording_id"])
    assert np.array_equal(good_pcm[:, 0], np.frombuffer(good_audio, "<i2"))

    pcm = await kept_at_limit(gateway, acme, bad["recording_id"])
    assert np.array_equal(pcm[:, 0], caller[:LIMIT])
    assert np.array_equal(pcm[:, 1], callee[:LIMIT])


async def test_a_twilio_call_ends_when_its_wall_clock_time_reaches_the_limit(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """A call whose stream lasts, however little audio it sends, is ended by the ticker once
    the limit has passed since its first stream started (kept with what it has); its
    stream's next frame hears why: close 1007 ``max_duration``."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    call = await gateway.announce(acme)
    audio = ULAW.encode(tone(0.5, 440, seed=6))
    ws = await twilio_stream(gateway, acme, call["call_id"])
    await send_all(ws, list(twilio_call(audio)))
    await frames_processed(gateway, len(audio) // 160)
    calls = gateway.app[CALLS]
    await calls.tick(clock.advance(MAX_S - 0.01))
    assert (await recording(gateway, acme, call["recording_id"]))["status"] == "recording"
    await calls.tick(clock.advance(0.01))
    pcm = await kept_at_limit(gateway, acme, call["recording_id"], duration_s=0.5)
    assert np.array_equal(pcm[:, 0], ULAW.decode(audio))
    await ws.send_str(twilio_media("inbound", 500, audio[:160]))
    assert await closed(ws) == (1007, "max_duration")


# --- AudioSocket --------------------------------------------------------------------------


async def test_audiosocket_past_the_limit_gets_an_error_frame_and_the_call_is_kept(
    clocked_gateway: Gateway, gateway_settings: Settings
) -> None:
    """AudioSocket frames carry no timestamps: sent at once, they continue the track up to
    the limit; the one after it is answered with the 0xff ``max_duration`` frame, the call
    is kept with exactly 2 s, and another AudioSocket call beside it records all of its."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    bad = await gateway.announce(acme, transport="audiosocket")
    good = await gateway.announce(acme, transport="audiosocket")
    port = gateway_settings.audiosocket.port

    def frames_of(audio: bytes) -> bytes:
        return b"".join(
            audiosocket_frame(0x10, audio[start : start + 320])
            for start in range(0, len(audio), 320)
        )

    good_audio = tone(1.0, 350, seed=7).astype("<i2").tobytes()
    good_reader, good_writer = await asyncio.open_connection("127.0.0.1", port)
    good_writer.write(audiosocket_uuid(audiosocket_id(good)) + frames_of(good_audio[:8000]))
    await good_writer.drain()

    audio = tone(MAX_S + 0.02, 500, seed=8).astype("<i2").tobytes()  # 101 frames
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(audiosocket_uuid(audiosocket_id(bad)) + frames_of(audio))
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert answer == audiosocket_frame(0xFF, b"max_duration")

    good_writer.write(frames_of(good_audio[8000:]) + audiosocket_frame(0x00))
    await good_writer.drain()
    try:
        await asyncio.wait_for(good_reader.read(), timeout=10)  # closed after the hangup
    finally:
        good_writer.close()
    good_pcm = await recording_wav(gateway, acme, good["recording_id"])
    assert np.array_equal(good_pcm[:, 0], np.frombuffer(good_audio, "<i2"))

    pcm = await kept_at_limit(gateway, acme, bad["recording_id"])
    assert np.array_equal(pcm[:, 0], np.frombuffer(audio, "<i2")[:LIMIT])
    assert await refused_count(gateway) == 1


# --- RTP ----------------------------------------------------------------------------------


async def test_rtp_audio_past_the_limit_is_dropped_and_counted(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """RTP timestamps jumping ahead (within RTP's own bound of a few seconds ahead of the
    call's clock) place a packet ending exactly at the limit, which is stored, and one past
    it, which is dropped and counted ``max_duration`` (as is every one after it); the ticker
    ends the call, kept with
    exactly 2 s, and frees its ports. Another RTP call meanwhile records every packet."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    bad = await announce_rtp(gateway, acme)
    good = await announce_rtp(gateway, acme)
    good_audio, good_pcm = g711(1.0, 440, seed=9)
    good_packets = good.sender("inbound").stream(good_audio)

    audio, audio_pcm = g711(1.0, 550, seed=10)
    last, last_pcm = g711(0.02, 660, seed=11)
    sender = bad.sender("inbound")
    start = sender.timestamp
    packets = sender.stream(audio)  # 0-1 s
    sender.timestamp = start + LIMIT - len(last)
    packets.append(sender.packet(last))  # 1.98-2.00 s: ends exactly at the limit
    sender.timestamp = start + 3 * RATE
    packets.append(sender.packet(last))  # 3.00 s: past it
    packets.append(sender.packet(last))  # and the next: counted the same (not "closed")

    udp = UdpSender()
    try:
        total = await send(udp, to(good.port("inbound"), good_packets[:25]))
        total += await send(udp, to(bad.port("inbound"), packets))
        assert await counted(gateway, total) == only(audio=25 + 51, max_duration=2)
        total += await send(udp, to(good.port("inbound"), good_packets[25:]))
        await counted(gateway, total)
    finally:
        udp.close()

    await gateway.app[CALLS].tick(clock.now())  # the background ticker may have done it
    pcm = await kept_at_limit(gateway, acme, bad.recording_id)
    expected = np.zeros(LIMIT, dtype=np.int16)
    expected[: len(audio_pcm)] = audio_pcm
    expected[LIMIT - len(last_pcm) :] = last_pcm
    assert np.array_equal(pcm[:, 0], expected)
    assert not any(udp_port_taken(bad.port(t) + n) for t in ("inbound", "outbound") for n in (0, 1))

    await call_action(gateway, acme, good, "end")
    assert np.array_equal((await recording_wav(gateway, acme, good.recording_id))[:, 0], good_pcm)


async def test_an_rtp_call_ends_when_its_wall_clock_time_reaches_the_limit(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """RTP's packets keep coming within the idle timeout, but the limit passes on the
    wall clock since its first packet: the call is ended, kept, and its ports freed."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", KEPT)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.2, 440, seed=12)
    udp = UdpSender()
    try:
        await counted(
            gateway, await send(udp, to(call.port("inbound"), call.sender("inbound").stream(audio)))
        )
    finally:
        udp.close()
    calls = gateway.app[CALLS]
    await calls.tick(clock.advance(MAX_S - 0.01))
    assert gateway.app[RTP].free_ports == 6 - 2  # of the range's 6 pairs
    await calls.tick(clock.advance(0.01))
    pcm = await kept_at_limit(gateway, acme, call.recording_id, duration_s=0.2)
    assert np.array_equal(pcm[:, 0], audio_pcm)
    assert gateway.app[RTP].free_ports == 6


async def test_a_node_waiting_for_a_reconnect_leaves_the_limit_to_the_node_carrying_the_call(
    aiohttp_client: Callable[..., Any], tmp_path: Path, clock: FakeClock
) -> None:
    """Two nodes share a catalog. The AudioSocket stream of a call that B announced moved
    from node A to node B after a drop; when the limit passes (counted from the call's
    start), A, waiting for a reconnect, does not end the call B records (a node never ends a
    call another node records); B ends it, counting from the call's start too (not from its
    own stream's, which would give the call up to twice the limit), B's stream hears why,
    and B's audio continues the timeline after A's (not over it)."""

    def node() -> Settings:
        return Settings(
            data_dir=tmp_path / "var",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'catalog.sqlite3'}",
            audiosocket={"port": free_port()},
            calls={"max_duration": f"PT{MAX_S}S"},
            ai={"workers": 0},
            retention={"sweep_interval": "PT0S"},
            audit={"checkpoint_interval": "PT0S"},
        )

    a = await start_gateway(await aiohttp_client(GatewayServer(build_app(node(), clock=clock))))
    b = Gateway(
        client=await aiohttp_client(GatewayServer(build_app(node(), clock=clock))),
        operator=a.operator,
    )
    acme = await b.tenant("acme", KEPT)
    call = await b.announce(acme, transport="audiosocket")
    hello = audiosocket_uuid(audiosocket_id(call))
    audio = tone(0.3, 440, seed=13).astype("<i2").tobytes()
    frames = b"".join(
        audiosocket_frame(0x10, audio[start : start + 320]) for start in range(0, len(audio), 320)
    )
    catalog = b.app[SERVICES].catalog

    async def carried_by_nobody() -> None:
        """Wait until A's release of the dropped connection reached the catalog."""
        lease = catalog.calls.stream_lease
        async with asyncio.timeout(10):
            while (await lease("acme", call["call_id"])).attached_by:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    _reader, writer = await asyncio.open_connection("127.0.0.1", a.app[SETTINGS].audiosocket.port)
    writer.write(hello + frames)
    await writer.drain()
    await frames_processed(a, len(audio) // 320, "audiosocket")
    writer.close()  # dropped without a hangup: A waits for a reconnect
    await carried_by_nobody()

    clock.advance(1)
    b_port = b.app[SETTINGS].audiosocket.port
    reader, writer = await asyncio.open_connection("127.0.0.1", b_port)
    writer.write(hello + frames)
    await writer.drain()
    await frames_processed(b, len(audio) // 320, "audiosocket")

    await a.app[CALLS].tick(clock.advance(1))  # the limit since the call's start
    assert (await recording(b, acme, call["recording_id"]))["status"] == "recording"
    await b.app[CALLS].tick(clock.now())
    assert (await recording(b, acme, call["recording_id"]))["status"] == "processing"
    assert await end_reasons(b, acme, call["recording_id"]) == ["max_duration"]
    writer.write(frames)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert answer == audiosocket_frame(0xFF, b"max_duration")
    await carried_by_nobody()  # B's connection has let go, before the nodes shut down
    pcm = (await recording_wav(b, acme, call["recording_id"]))[:, 0]
    sent = np.frombuffer(audio, "<i2")
    assert np.array_equal(pcm[: len(sent)], sent)  # A's
    assert np.array_equal(pcm[RATE : RATE + len(sent)], sent)  # B's, 1 s of the call later
