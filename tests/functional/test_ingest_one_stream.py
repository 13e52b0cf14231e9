"""One stream per call across the fleet, for the WebSocket transports (Twilio Media Streams
and mod_audio_fork): two gateways (two ``build_app``, each its own catalog connection pool
and node id) on one catalog, a SQLite file and PostgreSQL, as a load balancer would spread
the streams of one call over them.

* A second stream of a call that streams on node A is refused by node B as by A itself
  (close 1008 ``call_in_progress``), also past the lease's first term while A renews it, and
  B takes nothing of it: the first stream records to its end, nothing lost.
* After the first stream dropped, the PBX's reconnect to B is taken at once (A released the
  lease, after flushing its part to the spool), or, when A stopped renewing (stalled, or cut
  off from the catalog), once A's lease ran out; A then refuses its old stream's frames. The
  recording holds both parts once, the outage as silence.

The nodes share their data dir as well as the catalog (the keyring: key custody across
nodes is another part of issue 16), but each has its own node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from gateway.app import build_app
from gateway.attachments import LEASE_RENEWAL, LEASE_TTL
from gateway.errors import SpoolFull
from gateway.settings import Settings
from gateway.state import CALLS, METRICS, SERVICES
from storage.catalog import StreamLease
from storage.media.codecs import codec as media_codec
from storage.media.timeline import mono_pcm
from storage.media.tracks import AUDIO_KIND, track_records
from tests.gateway import (
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    bearer,
    read_wav,
    start_gateway,
    tone,
    twilio_media,
    twilio_start,
    twilio_stop,
)

NO_CONSENT = {"recording": {"enabled": True}, "consent": {"required": False}}
RATE = 8000
FRAME_S = 0.02


@dataclass(frozen=True)
class Transport:
    """How a PBX streams one track of a call over one WebSocket transport."""

    name: str

    @property
    def path(self) -> str:
        return f"/v1/ingest/{self.name}"

    def start(self, call_id: str) -> str:
        if self.name == "twilio":
            return twilio_start(call_id, tracks=("inbound",))
        return json.dumps({"call_id": call_id, "sampleRate": RATE})

    def audio(self, samples: np.ndarray, start_ms: int = 0) -> list[str | bytes]:
        """20 ms messages of ``samples``; Twilio's timestamps count from ``start_ms`` (ms
        since its stream started), fork's frames carry none."""
        step = int(RATE * FRAME_S)
        chunks = [samples[i : i + step] for i in range(0, len(samples), step)]
        if self.name == "twilio":
            return [
                twilio_media("inbound", start_ms + 20 * n, ULAW.encode(chunk), sequence=n + 2)
                for n, chunk in enumerate(chunks)
            ]
        return [chunk.astype("<i2").tobytes() for chunk in chunks]

    def stop(self) -> str:
        return twilio_stop() if self.name == "twilio" else json.dumps({"event": "stop"})

    def stored(self, samples: np.ndarray) -> np.ndarray:
        """What the recording holds of ``samples``: G.711 for Twilio, as sent for fork."""
        return ULAW.decode(ULAW.encode(samples)) if self.name == "twilio" else samples


@pytest.fixture(params=["twilio", "fork"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return Transport(request.param)


def node_settings(tmp_path: Path, database_url: str, node: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        audiosocket={"port": 0},
        ai={"workers": 0},
        retention={"sweep_interval": "PT0S"},
        node={"id": node},
    )


async def two_nodes(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock_a: FakeClock,
    clock_b: FakeClock,
) -> tuple[Gateway, Gateway]:
    """Nodes A and B on one catalog, both started before any call; B knows A's operator."""
    a = await start_gateway(
        await aiohttp_client(
            GatewayServer(build_app(node_settings(tmp_path, database_url, "a"), clock=clock_a))
        )
    )
    b_app = build_app(node_settings(tmp_path, database_url, "b"), clock=clock_b)
    return a, Gateway(client=await aiohttp_client(GatewayServer(b_app)), operator=a.operator)


async def open_stream(
    node: Gateway, transport: Transport, tenant: TenantTokens, call_id: str
) -> ClientWebSocketResponse:
    ws = await node.client.ws_connect(transport.path, headers=bearer(tenant.pbx))
    await ws.send_str(transport.start(call_id))
    return ws


async def send(ws: ClientWebSocketResponse, messages: list[str | bytes]) -> None:
    for message in messages:
        if isinstance(message, str):
            await ws.send_str(message)
        else:
            await ws.send_bytes(message)


async def refused_audio(ws: ClientWebSocketResponse, messages: list[str | bytes]) -> None:
    """Send audio behind a start the node refuses: it may close before the last message."""
    with contextlib.suppress(ConnectionResetError):
        await send(ws, messages)


async def closed(ws: ClientWebSocketResponse) -> tuple[int | None, str]:
    """Read until the server closes; the close code and reason."""
    while True:
        message = await ws.receive(timeout=10)
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
            return ws.close_code, message.extra or ""
        assert message.type is not WSMsgType.ERROR, message


def frames_in(node: Gateway, transport: Transport) -> float:
    return float(node.app[METRICS].frames_in.labels(transport.name)._value.get())


def frame_count(samples: np.ndarray) -> int:
    return -(-len(samples) // int(RATE * FRAME_S))


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (polling, 10 s at most) until a node reached a state."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the state lives in another task
            await asyncio.sleep(0.01)


async def lease(node: Gateway, tenant: str, call_id: str) -> StreamLease:
    return await node.app[SERVICES].catalog.calls.stream_lease(tenant, call_id)


async def lease_until(node: Gateway, tenant: str, call_id: str, check: Callable[..., bool]) -> None:
    """Wait (polling the catalog, 10 s at most) until the call's lease passes ``check``."""
    async with asyncio.timeout(10):
        while not check(await lease(node, tenant, call_id)):  # noqa: ASYNC110 - a catalog row
            await asyncio.sleep(0.01)


async def object_states(node: Gateway, tenant: str, recording_id: str) -> list[str]:
    objects = await node.app[SERVICES].catalog.objects.list(tenant, recording_id=recording_id)
    return sorted(o.state for o in objects)


async def inbound(node: Gateway, tenant: TenantTokens, recording_id: str) -> np.ndarray:
    response = await node.client.get(
        f"/v1/recordings/{recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    _channels, rate, pcm = read_wav(await response.read())
    assert rate == RATE
    assert not pcm[:, 1].any()
    return np.ascontiguousarray(pcm[:, 0])


async def test_a_second_stream_on_the_other_node_is_refused_and_the_first_records_to_the_end(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
) -> None:
    """The load balancer sent the announcement to B and the call's stream to A; a second
    stream of the call reaches B. B refuses it as A would (``call_in_progress``), also after
    A's lease had to be renewed to last, and stores nothing of it; A's stream records on
    to its stop with nothing lost."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await b.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after = tone(1.0, 440, seed=41), tone(0.6, 660, seed=42)
    intruder = tone(0.4, 880, seed=43)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    second = await open_stream(b, transport, tenant, call_id)
    await refused_audio(second, transport.audio(intruder))
    assert await closed(second) == (1008, "call_in_progress")
    # A renews its lease every 5 s: past the lease's first 15 s B still refuses.
    for _ in range(4):
        clock.advance(LEASE_RENEWAL.total_seconds())
        end = clock.now() + LEASE_TTL
        await lease_until(a, "acme", call_id, lambda held, end=end: held.attached_until == end)
    third = await open_stream(b, transport, tenant, call_id)
    await refused_audio(third, transport.audio(intruder))
    assert await closed(third) == (1008, "call_in_progress")
    assert frames_in(b, transport) == 0
    (on_b,) = b.app[CALLS].live()  # B announced the call: it waits for a stream there
    assert not on_b.attached and not on_b.tracks

    await send(first, transport.audio(after, start_ms=1000) + [transport.stop()])
    assert await closed(first) == (1000, "stop")
    assert frames_in(a, transport) == frame_count(before) + frame_count(after)
    assert await object_states(b, "acme", recording_id) == ["committed"]
    pcm = await inbound(b, tenant, recording_id)
    assert np.array_equal(pcm, np.concatenate([transport.stored(before), transport.stored(after)]))


async def test_a_reconnect_on_the_other_node_after_a_drop_continues_the_recording(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
) -> None:
    """The first stream, on A, drops without a stop: A publishes its part (its object
    committed) and then releases the lease, so the PBX's reconnect to B is taken at once,
    and B's stream is refused nothing. The call ends on B. The recording holds both parts
    once, the 3 s outage as silence."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after = tone(1.0, 440, seed=44), tone(0.6, 660, seed=45)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    await first.close()  # dropped: no stop
    await lease_until(a, "acme", call_id, lambda held: held.attached_by is None)
    # Released only once its audio was published.
    assert await object_states(a, "acme", recording_id) == ["committed"]

    clock.advance(3)
    again = await open_stream(b, transport, tenant, call_id)
    await send(again, transport.audio(after) + [transport.stop()])
    assert await closed(again) == (1000, "stop")
    assert frames_in(b, transport) == frame_count(after)
    catalog = b.app[SERVICES].catalog
    assert (await catalog.recordings.get("acme", recording_id)).status == "recorded"

    assert await object_states(a, "acme", recording_id) == ["committed"] * 2
    pcm = await inbound(a, tenant, recording_id)
    gap_end = 3 * RATE
    assert len(pcm) == gap_end + len(after)
    assert np.array_equal(pcm[: len(before)], transport.stored(before))
    assert not pcm[len(before) : gap_end].any()
    assert np.array_equal(pcm[gap_end:], transport.stored(after))


async def test_a_dropped_stream_whose_publish_failed_keeps_the_lease_until_a_renewal_published(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first stream, on A, drops, and publishing its part fails (the store, the spool
    or the catalog). A keeps the lease, renewed past its first term: the PBX's reconnect to
    B is refused, so the call can neither move nor end there without A's part. A's next
    renewal publishes the part and then releases the lease; the reconnect to B is taken,
    and the recording holds both parts once."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after = tone(1.0, 440, seed=46), tone(0.6, 660, seed=47)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    (session,) = a.app[CALLS].live()
    holder = session.holder
    assert holder is not None
    publish, failures, broken = session.publish, [], [True]

    async def failing(now: datetime) -> bool:
        if broken:
            failures.append(now)
            raise SpoolFull("The spool is full.")
        return await publish(now)

    monkeypatch.setattr(session, "publish", failing)
    await first.close()  # dropped: no stop
    await until(lambda: bool(failures))
    await a.app[CALLS].attachments.settle()
    assert (await lease(a, "acme", call_id)).attached_by == holder  # kept
    assert "committed" not in await object_states(a, "acme", recording_id)

    # While publishing fails, A's renewals retry it and keep the lease past its first
    # term: B refuses the reconnect.
    for _ in range(2):
        clock.advance(LEASE_RENEWAL.total_seconds())
        await a.app[CALLS].tick(clock.now())
    assert len(failures) >= 3  # at the drop, then at each renewal
    clock.advance(LEASE_TTL.total_seconds() - 2 * LEASE_RENEWAL.total_seconds() + 1)
    held = await lease(b, "acme", call_id)
    assert held.attached_by == holder and held.held_by_other(None, clock.now())
    refused = await open_stream(b, transport, tenant, call_id)
    await refused_audio(refused, transport.audio(after))
    assert await closed(refused) == (1008, "call_in_progress")
    assert "committed" not in await object_states(a, "acme", recording_id)

    broken.clear()  # the store is back: A's next renewal publishes, then releases
    clock.advance(LEASE_RENEWAL.total_seconds())
    await a.app[CALLS].tick(clock.now())
    await lease_until(a, "acme", call_id, lambda held: held.attached_by is None)
    assert await object_states(a, "acme", recording_id) == ["committed"]

    again = await open_stream(b, transport, tenant, call_id)
    await send(again, transport.audio(after) + [transport.stop()])
    assert await closed(again) == (1000, "stop")
    catalog = b.app[SERVICES].catalog
    assert (await catalog.recordings.get("acme", recording_id)).status == "recorded"
    assert await object_states(a, "acme", recording_id) == ["committed"] * 2
    pcm = await inbound(a, tenant, recording_id)
    assert np.array_equal(pcm[: len(before)], transport.stored(before))
    assert np.array_equal(pcm[-len(after) :], transport.stored(after))


async def test_a_node_that_stopped_renewing_loses_the_call_to_the_reconnect_on_the_other(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    transport: Transport,
) -> None:
    """Node A stops renewing (its clock stands still: a stalled node, or one cut off from
    the catalog, as a crashed one looks to the others) while its stream seems open. B
    refuses the PBX's reconnect while A's lease runs and takes it once the lease ran out;
    when A wakes, it finds its lease lost, publishes its part and refuses its old stream's
    next frame, so the call never has two writers. The recording is A's part, the outage
    as silence, then B's part."""
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock_a, clock_b)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after, late = tone(1.0, 440, seed=46), tone(0.6, 660, seed=47), tone(0.2, 880)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    refused = await open_stream(b, transport, tenant, call_id)
    assert await closed(refused) == (1008, "call_in_progress")

    clock_b.advance(LEASE_TTL.total_seconds() + 1)  # A's lease ran out, as B sees it
    again = await open_stream(b, transport, tenant, call_id)
    await send(again, transport.audio(after))
    await until(lambda: frames_in(b, transport) == frame_count(after))
    clock_a.advance(LEASE_TTL.total_seconds() + 5)
    await a.app[CALLS].tick(clock_a.now())  # A renews: lost
    (held,) = a.app[CALLS].live()
    await until(lambda: not held.attached and not held.unpublished())
    await send(first, transport.audio(late, start_ms=1000))
    assert await closed(first) == (1008, "call_in_progress")
    assert frames_in(a, transport) == frame_count(before)

    await send(again, [transport.stop()])
    assert await closed(again) == (1000, "stop")
    assert await object_states(b, "acme", recording_id) == ["committed", "committed"]
    pcm = await inbound(b, tenant, recording_id)
    gap_end = int(LEASE_TTL.total_seconds() + 1) * RATE
    assert len(pcm) == gap_end + len(after)
    assert np.array_equal(pcm[: len(before)], transport.stored(before))
    assert not pcm[len(before) : gap_end].any()
    assert np.array_equal(pcm[gap_end:], transport.stored(after))


async def rendered(node: Gateway, tenant: str, recording_id: str, track: str) -> np.ndarray:
    """The track as the AI worker renders it (``ai.worker``'s sources): the committed
    objects of the track in the catalog's order, their records over the recording's length
    (``mono_pcm``)."""
    services = node.app[SERVICES]
    recording = await services.catalog.recordings.get(tenant, recording_id)
    call = await services.catalog.calls.get(tenant, recording.call_id)
    parts = [
        o.id
        for o in await services.catalog.objects.list(tenant, recording_id=recording_id)
        if o.kind == AUDIO_KIND and o.track == track and o.state == "committed"
    ]
    streams = [await services.vault.open_object(tenant, part) for part in parts]
    blocks = [
        block.copy()
        async for block in mono_pcm(
            track_records(streams), codec=media_codec(call.codec), frames=recording.samples or 0
        )
    ]
    return np.concatenate(blocks)


@pytest.mark.parametrize("delay", [0, 2])
async def test_a_call_that_comes_back_to_the_node_it_left_is_stored_in_order(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
    delay: int,
) -> None:
    """A call announced ``delay`` seconds before its first stream moves A -> B -> A, a 1 s
    outage at each move. Each node publishes its part when its stream drops (so A's second
    stint has objects of its own, created after B's), and every node counts the call's
    timeline from its first stream (the catalog keeps when): the export holds each part
    where it was heard, sample for sample, and the AI worker's rendering of the track reads
    the same."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    first, second, third = tone(1.0, 440, seed=51), tone(5.0, 660, seed=52), tone(1.0, 880, seed=53)
    clock.advance(delay)

    s1 = await open_stream(a, transport, tenant, call_id)
    await send(s1, transport.audio(first))
    await until(lambda: frames_in(a, transport) == frame_count(first))
    clock.advance(1)
    await s1.close()  # dropped
    await lease_until(a, "acme", call_id, lambda held: held.attached_by is None)
    # Published as it dropped: this stint's object is closed.
    assert await object_states(a, "acme", recording_id) == ["committed"]

    clock.advance(1)
    s2 = await open_stream(b, transport, tenant, call_id)
    await send(s2, transport.audio(second))
    await until(lambda: frames_in(b, transport) == frame_count(second))
    clock.advance(5)
    await s2.close()
    await lease_until(b, "acme", call_id, lambda held: held.attached_by is None)

    clock.advance(1)
    s3 = await open_stream(a, transport, tenant, call_id)
    await send(s3, transport.audio(third) + [transport.stop()])
    assert await closed(s3) == (1000, "stop")
    assert await object_states(a, "acme", recording_id) == ["committed"] * 3

    expected = np.zeros(9 * RATE, dtype=np.int16)  # 0-1 A, 2-7 B, 8-9 A again
    expected[: len(first)] = transport.stored(first)
    expected[2 * RATE : 2 * RATE + len(second)] = transport.stored(second)
    expected[8 * RATE :] = transport.stored(third)
    for node in (a, b):  # whichever node the export reaches
        assert np.array_equal(await inbound(node, tenant, recording_id), expected)
    assert np.array_equal(await rendered(a, "acme", recording_id, "inbound"), expected)


async def test_a_pause_sent_through_another_node_reaches_the_carrying_node_at_its_renewal(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
) -> None:
    """The call streams on B; its PBX pauses it, and later resumes it, through A (the load
    balancer's choice). B learns each at its next lease renewal (every 5 s): the audio it
    receives while paused is discarded (kept as silence), the audio after the resume
    stored."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, secret, after = tone(1.0, 440, seed=61), tone(1.0, 660, seed=62), tone(1.0, 880)

    stream = await open_stream(b, transport, tenant, call_id)
    await send(stream, transport.audio(before))
    await until(lambda: frames_in(b, transport) == frame_count(before))
    (carried,) = b.app[CALLS].live()
    for action, paused in (("pause", True), ("resume", False)):
        response = await a.client.post(f"/v1/calls/{call_id}/{action}", headers=bearer(tenant.pbx))
        assert response.status == 200, await response.text()
        clock.advance(LEASE_RENEWAL.total_seconds())
        await b.app[CALLS].tick(clock.now())
        assert carried.paused is paused
        if paused:
            await send(stream, transport.audio(secret, start_ms=1000))
            await until(lambda: frames_in(b, transport) == 2 * frame_count(before))
    await send(stream, transport.audio(after, start_ms=2000) + [transport.stop()])
    assert await closed(stream) == (1000, "stop")

    pcm = await inbound(a, tenant, recording_id)
    assert len(pcm) == 3 * RATE
    assert np.array_equal(pcm[:RATE], transport.stored(before))
    assert not pcm[RATE : 2 * RATE].any()  # discarded, kept as silence
    assert np.array_equal(pcm[2 * RATE :], transport.stored(after))


async def test_a_stream_that_lost_its_lease_cannot_end_the_call_the_other_node_carries(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    transport: Transport,
) -> None:
    """Node A stalled past its lease and B's stream carries the call now; A's old stream,
    still open, sends its stop. A refuses it as it refuses that stream's audio (1008
    ``call_in_progress``), the call is not ended, and B records on to its own stop."""
    clock_a, clock_b = FakeClock(), FakeClock()
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock_a, clock_b)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after, more = tone(1.0, 440, seed=71), tone(0.6, 660, seed=72), tone(0.4, 880)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    clock_b.advance(LEASE_TTL.total_seconds() + 1)  # A's lease ran out, as B sees it
    again = await open_stream(b, transport, tenant, call_id)
    await send(again, transport.audio(after))
    await until(lambda: frames_in(b, transport) == frame_count(after))
    clock_a.advance(LEASE_TTL.total_seconds() + 5)  # A wakes: its lease lapsed

    await send(first, [transport.stop()])
    assert await closed(first) == (1008, "call_in_progress")
    # A publishes its part after it closed its old stream; until then the export answers
    # 503 (part of the audio is still being published), which is not what this test checks.
    await until(lambda: all(not s.attached and not s.unpublished() for s in a.app[CALLS].live()))
    catalog = b.app[SERVICES].catalog
    assert (await catalog.calls.get("acme", call_id)).ended_at is None
    assert (await catalog.recordings.get("acme", recording_id)).status == "recording"
    assert (await lease(b, "acme", call_id)).attached_by == b.app[CALLS].live()[0].holder

    await send(again, transport.audio(more, start_ms=600) + [transport.stop()])
    assert await closed(again) == (1000, "stop")
    assert frames_in(b, transport) == frame_count(after) + frame_count(more)
    pcm = await inbound(b, tenant, recording_id)
    gap_end = int(LEASE_TTL.total_seconds() + 1) * RATE
    assert np.array_equal(pcm[: len(before)], transport.stored(before))
    assert np.array_equal(
        pcm[gap_end:], np.concatenate([transport.stored(after), transport.stored(more)])
    )


async def test_a_call_ended_on_one_node_refuses_the_other_nodes_stream_after_its_renewal(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
) -> None:
    """The call streams on B and is ended through A (``POST .../end``). B learns it at its
    next lease renewal (every 5 s): its stream's next frame is then refused ``call_ended``
    and not stored (never placed in the session), and B finishes its side of the call."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, late = tone(1.0, 440, seed=73), tone(0.4, 660, seed=74)

    stream = await open_stream(b, transport, tenant, call_id)
    await send(stream, transport.audio(before))
    await until(lambda: frames_in(b, transport) == frame_count(before))
    (carried,) = b.app[CALLS].live()
    response = await a.client.post(f"/v1/calls/{call_id}/end", headers=bearer(tenant.pbx))
    assert response.status == 200, await response.text()
    clock.advance(LEASE_RENEWAL.total_seconds())
    await b.app[CALLS].tick(clock.now())
    assert carried.closing == "ended_elsewhere" or carried.ended

    await refused_audio(stream, transport.audio(late, start_ms=1000))
    assert await closed(stream) == (1008, "call_ended")
    assert frames_in(b, transport) == frame_count(before)
    await until(lambda: not b.app[CALLS].live())
    assert (await b.app[SERVICES].catalog.calls.get("acme", call_id)).ended_at is not None
    assert "committed" in await object_states(b, "acme", recording_id)


async def test_a_claim_landing_while_a_node_shuts_down_keeps_the_call_live_on_the_other(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    database_url: str,
    clock: FakeClock,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shuts down gracefully while it waits on a call whose stream dropped from it: it
    looks at the call's lease (free), and the PBX's reconnect claims the call on B before A
    finalizes it. A's finish, checked again under the call's row lock, sees B's stream: A
    publishes its part and forgets the call without ending it, and B records on to its
    stop. The recording holds both parts."""
    a, b = await two_nodes(aiohttp_client, tmp_path, database_url, clock, clock)
    tenant = await a.tenant("acme", NO_CONSENT)
    announced = await a.announce(tenant, transport=transport.name)
    call_id, recording_id = announced["call_id"], announced["recording_id"]
    before, after = tone(1.0, 440, seed=48), tone(0.6, 660, seed=49)

    first = await open_stream(a, transport, tenant, call_id)
    await send(first, transport.audio(before))
    await until(lambda: frames_in(a, transport) == frame_count(before))
    await first.close()  # dropped: no stop
    await lease_until(a, "acme", call_id, lambda held: held.attached_by is None)
    clock.advance(2)

    attachments = a.app[CALLS].attachments
    looked, streams = attachments.elsewhere, []

    async def claimed_meanwhile(session: Any, now: datetime) -> StreamLease:
        free = await looked(session, now)  # what A saw: nobody carries the call
        streams.append(await open_stream(b, transport, tenant, call_id))
        await lease_until(
            b, "acme", call_id, lambda held: (held.attached_by or "").startswith("b:")
        )
        return free

    monkeypatch.setattr(attachments, "elsewhere", claimed_meanwhile)
    assert await a.app[CALLS].close(clock.now()) == 0
    assert len(streams) == 1 and not a.app[CALLS].live()
    catalog = b.app[SERVICES].catalog
    assert (await catalog.calls.get("acme", call_id)).ended_at is None
    assert (await catalog.recordings.get("acme", recording_id)).status == "recording"
    await until(lambda: any(session.attached for session in b.app[CALLS].live()))
    (carried,) = b.app[CALLS].live()
    assert (await lease(b, "acme", call_id)).attached_by == carried.holder

    (again,) = streams
    await send(again, transport.audio(after) + [transport.stop()])
    assert await closed(again) == (1000, "stop")
    assert frames_in(b, transport) == frame_count(after)
    assert (await catalog.recordings.get("acme", recording_id)).status == "recorded"
    pcm = await inbound(b, tenant, recording_id)
    assert np.array_equal(pcm[: len(before)], transport.stored(before))
    assert np.array_equal(pcm[-len(after) :], transport.stored(after))
