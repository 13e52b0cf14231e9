"""The RTP/SRTP ingest through the in-process app, over real loopback UDP.

A pylibsrtp sender (``tests/rtp.py``) plays the PBX: it loses, duplicates, reorders and
replays packets, wraps sequence numbers and timestamps, sends from strangers and with wrong
keys, and mixes in telephone events and comfort noise. Each test ends the call over the API
and compares the exported WAV with what was sent, sample-exactly for G.711 (its decoding is
a table lookup) and by correlation for Opus. Media tests run on the ``FakeClock`` so that
both tracks of a call are anchored at sample 0 and reorder gaps are given up by depth, not
by wall-clock time: what lands where is then fully determined by the packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import build_app
from gateway.ingest import rtp_sockets
from gateway.ingest.rtp import PayloadTypes, SrtpKey
from gateway.ingest.rtp_server import MAX_BUFFERED_FLUSHES, OUTCOMES
from gateway.session import CallSession
from gateway.settings import AudioSocketSettings, IngestSettings, RtpSettings, Settings
from gateway.state import CALLS, RTP
from storage.errors import StorageUnavailable
from tests.gateway import (
    ULAW,
    FakeClock,
    Gateway,
    GatewayServer,
    TenantTokens,
    bearer,
    data_files,
    metric_value,
    read_wav,
    start_gateway,
    tone,
)
from tests.rtp import OPUS_FRAME, RtpSender, UdpSender, offer_key, opus_packets

ON = {"recording": {"enabled": True}}
PLAIN_ALLOWED = {"recording": {"enabled": True}, "transport": {"allow_unencrypted_rtp": True}}
FRAME = 160
"""Samples (and µ-law bytes) of a 20 ms G.711 packet."""
DATAGRAMS = "callvault_rtp_datagrams_total"
PORTS_IN_USE = "callvault_rtp_ports_in_use"
COUNTED_TIMEOUT_S = 5.0
PRIVATE_PORTS = range(20_000, 32_000)
"""Where each test's RTP port range is drawn from."""


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    """The conftest's embedded defaults, but RTP ports from a free range of the test's own
    (12 pairs: three calls with room for least-recently-used reuse) so that the port checks
    never meet another gateway on this host; AudioSocket off (not used here)."""
    base = free_udp_range(24)
    return Settings(
        data_dir=tmp_path / "var",
        audiosocket=AudioSocketSettings(port=0),
        rtp=RtpSettings(port_min=base, port_max=base + 23),
    )


# --- helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RtpCall:
    """An announced RTP call: its ids and the ``ingest.rtp`` offer."""

    announced: dict[str, Any]

    @property
    def call_id(self) -> str:
        return str(self.announced["call_id"])

    @property
    def recording_id(self) -> str:
        return str(self.announced["recording_id"])

    @property
    def offer(self) -> dict[str, Any]:
        return dict(self.announced["ingest"]["rtp"])

    def port(self, track: str) -> int:
        return int(self.offer[track])

    def key(self, track: str) -> SrtpKey | None:
        return offer_key(self.offer, track) if self.offer["srtp"] else None

    def sender(self, track: str, payload_type: int = 0, **fields: Any) -> RtpSender:
        """A sender with the track's key (none for plain RTP)."""
        return RtpSender(payload_type, self.key(track), **fields)


async def announce_rtp(gateway: Gateway, tenant: TenantTokens, **call: Any) -> RtpCall:
    body: dict[str, Any] = {"transport": "rtp", "codec": "pcmu"}
    body.update(call)
    return RtpCall(await gateway.announce(tenant, **body))


async def scrape(gateway: Gateway) -> str:
    response = await gateway.client.get("/metrics")
    assert response.status == 200
    return await response.text()


def outcomes(text: str) -> dict[str, float]:
    """``callvault_rtp_datagrams_total`` by outcome, every outcome present."""
    counts = dict.fromkeys(OUTCOMES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == DATAGRAMS:
                counts[sample.labels["outcome"]] = float(sample.value)
    return counts


async def settled(gateway: Gateway, done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Poll /metrics until the counts by outcome are ``done``, or the timeout; the counts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COUNTED_TIMEOUT_S
    while True:
        counts = outcomes(await scrape(gateway))
        if done(counts) or loop.time() > deadline:
            return counts
        await asyncio.sleep(0)


async def counted(gateway: Gateway, total: int) -> dict[str, float]:
    """Wait (bounded) until the app has counted ``total`` datagrams, whatever their outcome;
    the counts by outcome."""
    counts = await settled(gateway, lambda counts: sum(counts.values()) >= total)
    seen = {outcome: n for outcome, n in counts.items() if n}
    assert sum(counts.values()) == total, f"expected {total} datagrams counted, got {seen}"
    return counts


def only(**expected: float) -> dict[str, float]:
    """Every outcome 0 but those given."""
    return {**dict.fromkeys(OUTCOMES, 0.0), **{k: float(v) for k, v in expected.items()}}


async def send(udp: UdpSender, datagrams: Iterable[tuple[int, bytes]]) -> int:
    """Send each (port, datagram), yielding to the loop after each so that the app reads
    them as they come (one datagram per socket per loop turn); how many were sent."""
    sent = 0
    for port, datagram in datagrams:
        udp.send(datagram, port)
        sent += 1
        await asyncio.sleep(0)
    return sent


async def deliver(gateway: Gateway, port: int, datagrams: Iterable[bytes]) -> dict[str, float]:
    """Send ``datagrams`` to ``port`` from a loopback socket of their own and wait until the
    app has counted every one; the outcomes counted so far."""
    udp = UdpSender()
    try:
        return await counted(gateway, await send(udp, to(port, datagrams)))
    finally:
        udp.close()


def to(port: int, datagrams: Iterable[bytes]) -> list[tuple[int, bytes]]:
    return [(port, datagram) for datagram in datagrams]


def interleave(*streams: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The streams' datagrams taken in turn, as two tracks of a call arrive."""
    out: list[tuple[int, bytes]] = []
    for index in range(max(len(stream) for stream in streams)):
        out += [stream[index] for stream in streams if index < len(stream)]
    return out


async def call_action(
    gateway: Gateway, tenant: TenantTokens, call: RtpCall, action: str
) -> dict[str, Any]:
    response = await gateway.client.post(
        f"/v1/calls/{call.call_id}/{action}", headers=bearer(tenant.pbx)
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def get_recording(gateway: Gateway, tenant: TenantTokens, call: RtpCall) -> dict[str, Any]:
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def export_bytes(gateway: Gateway, tenant: TenantTokens, call: RtpCall) -> bytes:
    response = await gateway.client.get(
        f"/v1/recordings/{call.recording_id}/audio", headers=bearer(tenant.admin)
    )
    assert response.status == 200, await response.text()
    return await response.read()


async def export(
    gateway: Gateway, tenant: TenantTokens, call: RtpCall, rate: int = 8000
) -> npt.NDArray[np.int16]:
    """The recording's WAV as (frames, 2) samples; asserts stereo at ``rate``."""
    channels, found_rate, pcm = read_wav(await export_bytes(gateway, tenant, call))
    assert (channels, found_rate) == (2, rate)
    return pcm


def g711(seconds: float, hz: float, seed: int = 0) -> tuple[bytes, npt.NDArray[np.int16]]:
    """A tone as µ-law, and the µ-law decoded: what an exact export gives back."""
    encoded = ULAW.encode(tone(seconds, hz, seed=seed))
    return encoded, ULAW.decode(encoded)


def with_silence(pcm: npt.NDArray[np.int16], packets: Iterable[int]) -> npt.NDArray[np.int16]:
    """``pcm`` with the samples of the given 20 ms packets zeroed (lost, late, paused)."""
    out = pcm.copy()
    for index in packets:
        out[index * FRAME : (index + 1) * FRAME] = 0
    return out


def assert_samples(actual: npt.NDArray[Any], expected: npt.NDArray[Any], what: str) -> None:
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    differ = np.flatnonzero(actual != expected)
    assert differ.size == 0, (
        f"{what}: {differ.size} samples differ, the first at {differ[0]} "
        f"(packet {differ[0] // FRAME})"
    )


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages logged at ERROR or above (a datagram the glue could not handle is one)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def schedule(
    count: int,
    *,
    lost: Iterable[int] = (),
    swapped: Iterable[tuple[int, int]] = (),
    delayed: Iterable[tuple[int, int]] = (),
    again: Iterable[tuple[int, int]] = (),
) -> list[int]:
    """The order packets ``0..count-1`` are sent in: ``lost`` never; each ``swapped`` pair
    the other way round; a ``delayed`` (packet, after) sent right after ``after``; an
    ``again`` (packet, after) sent once more right after ``after`` (a duplicate)."""
    late = dict(delayed)
    order = [index for index in range(count) if index not in set(lost) and index not in late]
    for first, second in swapped:
        a, b = order.index(first), order.index(second)
        order[a], order[b] = second, first
    for packet, after in [*late.items(), *again]:
        order.insert(order.index(after) + 1, packet)
    return order


def free_udp_range(count: int) -> int:
    """An even port from which ``count`` consecutive UDP ports on loopback are free now,
    below the kernel's usual ephemeral range (32768-60999: the test's own senders and
    clients never get them) and away from the default RTP range that other gateways on
    this host may be using."""
    for _ in range(100):
        base = PRIVATE_PORTS.start + 2 * secrets.randbelow(len(PRIVATE_PORTS) // 2)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {count} consecutive free UDP ports found")


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# --- 1. loss, duplicates, reordering, wrap ------------------------------------------------


@pytest.mark.parametrize("srtp", [True, False], ids=["srtp", "plain-rtp"])
async def test_impaired_stream_lands_sample_exact_on_both_tracks(
    clocked_gateway: Gateway, srtp: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Lost packets come back as silence of their exact length at their exact place, a late
    one (its gap given up) too; duplicates add nothing; reordered packets are put back;
    sequence numbers and timestamps wrap; packets held behind a gap when the call ends are
    delivered then; inbound (left) and outbound (right) line up sample for sample.
    Duplicates are counted ``replay`` under SRTP (libsrtp sees them first) and
    ``duplicate`` for plain RTP."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", PLAIN_ALLOWED)
    call = await announce_rtp(gateway, acme, srtp=srtp)
    inbound, inbound_pcm = g711(1.0, 440)
    outbound, outbound_pcm = g711(1.0, 660, seed=1)
    # Inbound's sequence wraps at packet 16 (lost), outbound's at 36 (lost); outbound's
    # timestamp wraps at packet 25.
    a = call.sender("inbound", ssrc=0x1111_1111, seq=65_520)
    b = call.sender("outbound", ssrc=0x2222_2222, seq=65_500, timestamp=(1 << 32) - 4000)
    a_packets, b_packets = a.stream(inbound), b.stream(outbound)
    a_lost, a_late = {7, 16, 30, 31, 47}, {35}
    a_order = schedule(
        50,
        lost=a_lost,
        swapped=[(12, 13), (26, 28)],
        delayed=[(35, 43)],  # 6 packets wait behind its gap: given up, then it is late
        # The last datagram, a duplicate, shows that 48 and 49 were read: they wait behind
        # the gap of 47 (fewer than the reorder depth) until the call ends.
        again=[(5, 9), (20, 20), (40, 44), (46, 49)],
    )
    b_lost = {3, 36}
    b_order = schedule(50, lost=b_lost, swapped=[(20, 21)], again=[(10, 10)])
    udp = UdpSender()
    try:
        sent = await send(
            udp,
            interleave(
                to(call.port("inbound"), [a_packets[i] for i in a_order]),
                to(call.port("outbound"), [b_packets[i] for i in b_order]),
            ),
        )
        waiting = 2  # 48 and 49, counted once delivered
        counts = await counted(gateway, sent - waiting)
    finally:
        udp.close()
    delivered = 50 - len(a_lost) - len(a_late) + 50 - len(b_lost)
    expected = only(audio=delivered, late=1, **{"replay" if srtp else "duplicate": 5})
    assert counts == {**expected, "audio": delivered - waiting}
    await call_action(gateway, acme, call, "end")
    metrics = await scrape(gateway)
    assert outcomes(metrics) == expected
    assert metric_value(metrics, "callvault_frames_in_total", transport="rtp") == delivered

    pcm = await export(gateway, acme, call)
    assert_samples(pcm[:, 0], with_silence(inbound_pcm, a_lost | a_late), "inbound (left)")
    assert_samples(pcm[:, 1], with_silence(outbound_pcm, b_lost), "outbound (right)")
    recording = await get_recording(gateway, acme, call)
    assert recording["duration_s"] == 1.0
    assert sorted(recording["tracks"]) == ["inbound", "outbound"]
    assert not errors(caplog), errors(caplog)


async def test_a_gap_is_given_up_after_the_reorder_delay_on_the_wall_clock(
    gateway: Gateway,
) -> None:
    """On the wall clock, packets held behind a lost one wait at most the reorder delay
    (60 ms), not for the buffer to fill or more packets to come: they are delivered by the
    timer alone, and the gap is silence."""
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.16, 440)
    packets = call.sender("inbound").stream(audio)
    assert await deliver(gateway, call.port("inbound"), packets[:5] + packets[6:]) == only(audio=7)
    await call_action(gateway, acme, call, "end")
    assert_samples(
        (await export(gateway, acme, call))[:, 0], with_silence(audio_pcm, {5}), "inbound"
    )


async def test_a_packet_that_arrives_within_the_reorder_delay_fills_its_gap_between_reads(
    gateway: Gateway,
) -> None:
    """``rtp.read_interval`` (here 200 ms, the most) may be longer than the reorder delay
    (60 ms): a packet that arrives 10 ms after the one past its gap was read, but waits
    for the poller's next read, must still fill the gap, as it would with each datagram
    read on arrival. (The reorder timer reads the call's sockets before it gives a gap
    up.)"""
    rtp = gateway.app[RTP]
    rtp._settings = rtp._settings.model_copy(update={"read_interval": timedelta(seconds=0.2)})
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.16, 440)
    packets = call.sender("inbound").stream(audio)
    receiver = rtp._calls[(acme.id, call.call_id)].receivers["inbound"]
    udp = UdpSender()
    try:
        await send(udp, to(call.port("inbound"), packets[:5] + packets[6:7]))
        for _ in range(5000):  # until 6 was read, and waits behind the gap of 5
            if receiver._held:
                break
            await asyncio.sleep(0.001)
        assert receiver._held
        await asyncio.sleep(0.01)
        udp.send(packets[5], call.port("inbound"))
        await send(udp, to(call.port("inbound"), packets[7:]))
        counts = await counted(gateway, len(packets))
    finally:
        udp.close()
    assert counts == only(audio=len(packets))
    await call_action(gateway, acme, call, "end")
    assert_samples((await export(gateway, acme, call))[:, 0], audio_pcm, "inbound")


async def test_a_new_ssrc_takes_over_after_two_packets_in_sequence(
    clocked_gateway: Gateway,
) -> None:
    """A PBX that restarts its stream (new SSRC, sequence and timestamps) is followed once
    the new SSRC has sent two packets in sequence; on the FakeClock its audio continues
    exactly where the track ends; a straggler of the old SSRC is ``stale_source``."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    first, first_pcm = g711(0.2, 440)
    second, second_pcm = g711(0.2, 880, seed=4)
    old = call.sender("inbound", ssrc=1)
    new = call.sender("inbound", ssrc=2, seq=30_000, timestamp=777)
    datagrams = [*old.stream(first), *new.stream(second), old.packet(first[:FRAME])]
    assert await deliver(gateway, call.port("inbound"), datagrams) == only(audio=20, stale_source=1)
    await call_action(gateway, acme, call, "end")
    assert_samples(
        (await export(gateway, acme, call))[:, 0],
        np.concatenate([first_pcm, second_pcm]),
        "inbound",
    )


async def test_a_lone_packet_of_another_ssrc_is_counted(clocked_gateway: Gateway) -> None:
    """A single datagram of an unknown SSRC in the middle of a stream (a stray, never
    followed by a second) is counted once, ``stale_source``, by the time the call has ended
    (the receiver gives its probation up at the end), and the audio is unaffected."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.4, 440)
    packets = call.sender("inbound", ssrc=1).stream(audio)
    stray = call.sender("inbound", ssrc=2, seq=9, timestamp=12_345).packet(audio[:FRAME])
    udp = UdpSender()
    try:
        await send(udp, to(call.port("inbound"), [*packets[:10], stray, *packets[10:]]))
        await counted(gateway, 20)  # the good packets after it: the stray was read
    finally:
        udp.close()
    await call_action(gateway, acme, call, "end")
    assert_samples((await export(gateway, acme, call))[:, 0], audio_pcm, "inbound")
    assert outcomes(await scrape(gateway)) == only(audio=20, stale_source=1)


# --- 2. hostile datagrams beside a good call ----------------------------------------------


async def test_hostile_datagrams_are_dropped_and_counted_while_another_call_records(
    clocked_gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong keys (another key, or the other track's), replays, random bytes, short
    datagrams, RTP version 1, RTCP on either port and a foreign payload type are dropped and
    counted by outcome; the attacked call's good packets and a second call on other ports,
    streaming at the same time, are recorded sample-exactly."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    attacked = await announce_rtp(gateway, acme)
    other = await announce_rtp(gateway, acme)
    assert {attacked.port("inbound"), attacked.port("outbound")}.isdisjoint(
        {other.port("inbound"), other.port("outbound")}
    )
    audio, audio_pcm = g711(0.4, 440)
    good = attacked.sender("inbound", ssrc=7).stream(audio)
    forged = RtpSender(0, SrtpKey.generate(), ssrc=7, seq=5000).stream(audio[: 6 * FRAME])
    other_track_key = RtpSender(0, attacked.key("inbound"), ssrc=8).stream(audio[: 2 * FRAME])
    foreign_type = RtpSender(9, attacked.key("inbound"), ssrc=9).packet(audio[:FRAME])
    rng = np.random.default_rng(3)
    rtcp_sender_report = bytes([0x80, 200, 0, 6]) + rng.bytes(24)
    inbound_port = attacked.port("inbound")
    hostile_first = [
        *forged[:3],  # before anything authenticated: nothing is latched
        b"\x00" + rng.bytes(171),  # random bytes, version 0
        b"\x80\x00" + rng.bytes(170),  # random bytes that pass for RTP version 2
    ]
    hostile_then = [
        good[3],  # replays of delivered packets
        good[8],
        b"\x80\x00\x01",  # shorter than an RTP header
        b"\x40" + good[11][1:],  # RTP version 1
        rtcp_sender_report,  # RTCP multiplexed onto the RTP port
        *forged[3:],  # a wrong key from the latched address
        foreign_type,  # PT 9 (G.722) on a PCMU call
    ]
    attacked_datagrams = [
        *to(inbound_port, hostile_first),
        *to(inbound_port, good[:10]),
        *to(inbound_port, hostile_then),
        *to(inbound_port, good[10:]),
        (inbound_port + 1, rtcp_sender_report),  # the RTCP port
        *to(attacked.port("outbound"), other_track_key),  # the inbound key on outbound
    ]
    other_in, other_in_pcm = g711(0.4, 520, seed=2)
    other_out, other_out_pcm = g711(0.4, 780, seed=3)
    other_datagrams = interleave(
        to(other.port("inbound"), other.sender("inbound", ssrc=21).stream(other_in)),
        to(other.port("outbound"), other.sender("outbound", ssrc=22).stream(other_out)),
    )
    udp, peer = UdpSender(), UdpSender()
    try:
        sent = 0
        for index in range(max(len(attacked_datagrams), len(other_datagrams))):
            if index < len(attacked_datagrams):
                sent += await send(udp, [attacked_datagrams[index]])
            if index < len(other_datagrams):
                sent += await send(peer, [other_datagrams[index]])
        counts = await counted(gateway, sent)
    finally:
        udp.close()
        peer.close()
    assert counts == only(
        audio=20 + 40,
        malformed=3,
        auth_failed=3 + 1 + 3 + 2,
        replay=2,
        rtcp=2,
        unexpected_payload_type=1,
    )
    await call_action(gateway, acme, attacked, "end")
    await call_action(gateway, acme, other, "end")

    pcm = await export(gateway, acme, attacked)
    assert_samples(pcm[:, 0], audio_pcm, "attacked call, inbound")
    assert not pcm[:, 1].any(), "nothing reached the attacked call's outbound track"
    pcm = await export(gateway, acme, other)
    assert_samples(pcm[:, 0], other_in_pcm, "other call, inbound")
    assert_samples(pcm[:, 1], other_out_pcm, "other call, outbound")
    assert not errors(caplog), errors(caplog)


# --- 3. the announcement ------------------------------------------------------------------


async def test_announcement_hands_out_fresh_keys_and_even_port_pairs(gateway: Gateway) -> None:
    """SRTP by default with a key per track, fresh per call; each track an even RTP port
    with RTCP on the next; no port handed out twice."""
    acme = await gateway.tenant("acme", ON)
    calls = [
        await announce_rtp(gateway, acme),
        await announce_rtp(gateway, acme, codec="pcma"),
    ]
    ports: list[int] = []
    keys: list[bytes] = []
    for call in calls:
        offer = call.offer
        assert offer["host"] == "127.0.0.1"
        assert offer["srtp"] is True
        for track in ("inbound", "outbound"):
            assert offer[track] % 2 == 0
            assert offer["rtcp"][track] == offer[track] + 1
            assert offer["crypto"][track].startswith("AES_CM_128_HMAC_SHA1_80 inline:")
            key = call.key(track)
            assert key is not None
            keys.append(key.material)
            ports += [offer[track], offer[track] + 1]
    assert len(set(ports)) == 8, ports
    fresh = len(set(keys)) == 4
    assert fresh, "an SRTP key was handed out twice (across tracks or calls)"
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 8
    for port in ports:
        assert udp_port_taken(port), port


async def test_plain_rtp_needs_the_tenants_permission(clocked_gateway: Gateway) -> None:
    """``"srtp": false`` is refused 403 ``unencrypted_transport`` (only the call record is
    kept, no port is taken) until the instructions allow unencrypted RTP; then the offer has
    no keys and plain RTP records exactly."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    body = {
        "call_id": "plain-1",
        "from": "+40711111111",
        "to": "+40722222222",
        "consent": "granted",
        "transport": "rtp",
        "srtp": False,
    }
    response = await gateway.client.post(
        "/v1/tenants/acme/calls", json=body, headers=bearer(acme.pbx)
    )
    assert response.status == 403, await response.text()
    assert (await response.json())["error"] == "unencrypted_transport"
    response = await gateway.client.get("/v1/tenants/acme/calls/plain-1", headers=bearer(acme.pbx))
    assert response.status == 200
    assert (await response.json())["refusal"] == "unencrypted_transport"
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0

    await gateway.instruct(acme, PLAIN_ALLOWED)
    call = await announce_rtp(gateway, acme, srtp=False)
    assert call.offer["srtp"] is False
    assert call.offer["crypto"] is None
    inbound, inbound_pcm = g711(0.2, 440)
    outbound, outbound_pcm = g711(0.2, 660, seed=1)
    udp = UdpSender()
    try:
        sent = await send(
            udp,
            interleave(
                to(call.port("inbound"), RtpSender(0, ssrc=1).stream(inbound)),
                to(call.port("outbound"), RtpSender(0, ssrc=2).stream(outbound)),
            ),
        )
        assert await counted(gateway, sent) == only(audio=20)
    finally:
        udp.close()
    await call_action(gateway, acme, call, "end")
    pcm = await export(gateway, acme, call)
    assert_samples(pcm[:, 0], inbound_pcm, "inbound")
    assert_samples(pcm[:, 1], outbound_pcm, "outbound")


UNCARRIABLE: list[tuple[dict[str, Any], str]] = [
    ({"transport": "twilio", "srtp": True}, "invalid_call"),
    ({"transport": "twilio", "payload_types": {"telephone_event": 101}}, "invalid_call"),
    ({"transport": "rtp", "codec": "opus", "sample_rate": 8000}, "unsupported_codec"),
    ({"transport": "rtp", "codec": "pcmu", "sample_rate": 48000}, "unsupported_codec"),
    ({"transport": "rtp", "codec": "l16"}, "unsupported_codec"),
    ({"transport": "rtp", "codec": "opus", "payload_types": {"opus": 95}}, "invalid_call"),
]


async def test_announcement_refuses_what_rtp_cannot_carry(gateway: Gateway) -> None:
    """SRTP or payload types on a Twilio call, Opus at 8 kHz, G.711 at 48 kHz, L16 over
    RTP, a static PT for Opus: each 400 with its error code, and no port taken. (One app
    for all the cases: each is one request.)"""
    acme = await gateway.tenant("acme", ON)
    for fields, code in UNCARRIABLE:
        body = {"from": "+40711111111", "to": "+40722222222", "consent": "granted", **fields}
        response = await gateway.client.post(
            "/v1/tenants/acme/calls", json=body, headers=bearer(acme.pbx)
        )
        assert response.status == 400, (fields, await response.text())
        assert (await response.json())["error"] == code, fields
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0


# --- 4. ports go back to the pool ---------------------------------------------------------


async def test_ports_are_released_when_the_call_ends(gateway: Gateway) -> None:
    """The four sockets are bound while the call lives and free after ``/end``."""
    acme = await gateway.tenant("acme", ON)
    free = gateway.app[RTP].free_ports
    call = await announce_rtp(gateway, acme)
    ports = [call.port(t) + n for t in ("inbound", "outbound") for n in (0, 1)]
    assert gateway.app[RTP].free_ports == free - 2
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 4
    assert all(udp_port_taken(port) for port in ports), ports

    await call_action(gateway, acme, call, "end")
    assert gateway.app[RTP].free_ports == free
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0
    assert not any(udp_port_taken(port) for port in ports), ports


async def test_media_timeout_finalizes_the_call_and_frees_its_ports(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """No packet for ``rtp.timeout`` (30 s) ends the call: finalized ``recorded`` with what
    arrived, ports back in the pool; 29 s of silence does not."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.2, 440)
    await deliver(gateway, call.port("inbound"), call.sender("inbound").stream(audio))
    await gateway.app[RTP].tick(clock.advance(29))
    assert (await get_recording(gateway, acme, call))["status"] == "recording"
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 4

    await gateway.app[RTP].tick(clock.advance(2))
    recording = await get_recording(gateway, acme, call)
    assert recording["status"] == "recorded"
    assert recording["duration_s"] == 0.2
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0
    assert_samples((await export(gateway, acme, call))[:, 0], audio_pcm, "inbound")


async def test_a_call_that_never_sends_frees_its_ports_after_the_rtp_timeout(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """An announced RTP call that never gets a packet holds its ports for ``rtp.timeout``
    (30 s) after its announcement, not for ``ingest.start_timeout`` (5 min): then it is
    ended (``start_timeout``: its stream never started) and its four ports go back to the
    pool, bindable again. A stranger's datagrams (which do not authenticate) do not keep it."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    free = gateway.app[RTP].free_ports
    call = await announce_rtp(gateway, acme)
    ports = [call.port(t) + n for t in ("inbound", "outbound") for n in (0, 1)]
    await gateway.app[RTP].tick(clock.advance(10))
    stranger = RtpSender(0, SrtpKey.generate())
    assert await deliver(gateway, call.port("inbound"), [stranger.packet(b"\xff" * FRAME)]) == (
        only(auth_failed=1)
    )
    await gateway.app[RTP].tick(clock.advance(19))
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 4
    assert gateway.app[RTP].free_ports == free - 2
    await gateway.app[RTP].tick(clock.advance(1))
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0
    assert gateway.app[RTP].free_ports == free
    assert not any(udp_port_taken(port) for port in ports), ports
    response = await gateway.client.get(
        f"/v1/tenants/acme/calls/{call.call_id}", headers=bearer(acme.pbx)
    )
    assert (await response.json())["ended_at"] is not None
    response = await gateway.client.get("/v1/tenants/acme/audit", headers=bearer(acme.admin))
    ended = [e for e in (await response.json())["items"] if e["action"] == "call.ended"]
    assert [e["detail"]["reason"] for e in ended] == ["start_timeout"]


async def test_port_exhaustion_refuses_503_until_a_call_ends(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """With room for one call (two pairs), a second call is answered 503
    ``rtp_ports_exhausted`` and ended empty; once the first ends, a new call gets ports."""
    base = free_udp_range(4)
    settings = Settings(
        data_dir=tmp_path / "var",
        audiosocket=AudioSocketSettings(port=0),
        rtp=RtpSettings(port_min=base, port_max=base + 3),
    )
    gateway = await start_gateway(await aiohttp_client(GatewayServer(build_app(settings))))
    acme = await gateway.tenant("acme", ON)
    first = await announce_rtp(gateway, acme)
    assert {first.port("inbound"), first.port("outbound")} == {base, base + 2}
    body = {
        "call_id": "second",
        "from": "+40711111111",
        "to": "+40722222222",
        "consent": "granted",
        "transport": "rtp",
    }
    response = await gateway.client.post(
        "/v1/tenants/acme/calls", json=body, headers=bearer(acme.pbx)
    )
    assert response.status == 503, await response.text()
    assert (await response.json())["error"] == "rtp_ports_exhausted"
    response = await gateway.client.get("/v1/tenants/acme/calls/second", headers=bearer(acme.pbx))
    assert (await response.json())["ended_at"] is not None
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 4

    await call_action(gateway, acme, first, "end")
    third = await announce_rtp(gateway, acme)
    assert {third.port("inbound"), third.port("outbound")} == {base, base + 2}
    await call_action(gateway, acme, third, "end")


async def test_a_descriptor_shortage_is_not_reported_as_a_full_pool(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors, no port of the pool would do: the call is answered 503
    ``rtp_unavailable`` at once (not ``rtp_ports_exhausted`` after trying every port), it is
    ended empty, and the pool is intact for the next call."""
    acme = await gateway.tenant("acme", ON)
    loop = asyncio.get_running_loop()
    tries = 0

    async def no_descriptors(*args: Any, **kwargs: Any) -> Any:
        nonlocal tries
        tries += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(loop, "create_datagram_endpoint", no_descriptors)
    body = {"call_id": "starved", "from": "+40711111111", "to": "+40722222222"}
    response = await gateway.client.post(
        "/v1/tenants/acme/calls",
        json={**body, "consent": "granted", "transport": "rtp"},
        headers=bearer(acme.pbx),
    )
    assert response.status == 503, await response.text()
    answer = await response.json()
    assert answer["error"] == "rtp_unavailable"
    assert "Too many open files" in answer["message"]
    assert tries == 1
    response = await gateway.client.get("/v1/tenants/acme/calls/starved", headers=bearer(acme.pbx))
    assert (await response.json())["ended_at"] is not None
    monkeypatch.undo()
    call = await announce_rtp(gateway, acme)
    assert call.port("inbound") % 2 == 0
    await call_action(gateway, acme, call, "end")
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0


async def test_an_overloaded_datagram_is_counted_once(
    aiohttp_client: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a call's flush hangs (a slow disk), the call buffers at most
    ``MAX_BUFFERED_FLUSHES`` flushes' worth and drops further audio as ``overload``, each
    dropped datagram counted once: 26 ``audio`` (4160 bytes reach the 4096-byte bound) and
    14 ``overload`` of 40; the stored audio is the first 26 packets, exact."""
    gate = asyncio.Event()
    flush_if_due = CallSession.flush_if_due

    async def slow_flush(self: CallSession, now: datetime, *, force: bool = False) -> None:
        await gate.wait()
        await flush_if_due(self, now, force=force)

    monkeypatch.setattr(CallSession, "flush_if_due", slow_flush)
    settings = Settings(
        data_dir=tmp_path / "var",
        audiosocket=AudioSocketSettings(port=0),
        ingest=IngestSettings(flush_bytes=1024),
    )
    clock: Any = FakeClock()  # duck-typed: the app only calls now()
    app = build_app(settings, clock=clock)
    gateway = await start_gateway(await aiohttp_client(GatewayServer(app)))
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.8, 440)
    udp = UdpSender()
    try:
        await send(udp, to(call.port("inbound"), call.sender("inbound").stream(audio)))
        counts = await settled(gateway, lambda counts: counts["overload"] >= 14)
    finally:
        udp.close()
        gate.set()
    await call_action(gateway, acme, call, "end")
    assert_samples((await export(gateway, acme, call))[:, 0], audio_pcm[: 26 * FRAME], "inbound")
    assert counts == only(audio=26, overload=14)


# --- 5. after the end; strangers ----------------------------------------------------------


async def test_packets_to_an_ended_calls_ports_are_not_recorded(clocked_gateway: Gateway) -> None:
    """After ``/end`` the call's ports are closed: more packets to them change nothing in
    its recording, nor reach the next call (which gets other ports)."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.4, 440)
    sender = call.sender("inbound")
    packets = sender.stream(audio)
    udp = UdpSender()
    try:
        await counted(gateway, await send(udp, to(call.port("inbound"), packets[:10])))
        await call_action(gateway, acme, call, "end")
        before = await export_bytes(gateway, acme, call)
        assert_samples(read_wav(before)[2][:, 0], audio_pcm[: 10 * FRAME], "inbound")

        nxt = await announce_rtp(gateway, acme)
        old = {call.port("inbound"), call.port("outbound")}
        assert old.isdisjoint({nxt.port("inbound"), nxt.port("outbound")})
        await send(udp, to(call.port("inbound"), packets[10:]))
        # A packet to the live call after them: once it is counted, they would have been.
        barrier = nxt.sender("inbound").packet(audio[:FRAME])
        await send(udp, [(nxt.port("inbound"), barrier)])
        assert await counted(gateway, 11) == only(audio=11)
    finally:
        udp.close()
    assert await export_bytes(gateway, acme, call) == before
    assert (await get_recording(gateway, acme, call))["duration_s"] == 0.2


async def test_a_second_source_after_latching_is_dropped_and_counted(
    clocked_gateway: Gateway,
) -> None:
    """The first authenticated packet latches its address: valid SRTP packets from another
    address (while the latched one is not silent) are ``unexpected_source``, and do not
    spoil the real packets with the same sequence numbers that follow."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.4, 440)
    packets = call.sender("inbound", ssrc=5).stream(audio)
    # The intruder holds the key and sends what would be packets 10-19, another tone.
    intruder_audio, _ = g711(0.2, 990, seed=9)
    intruding = call.sender("inbound", ssrc=5, seq=1010, timestamp=50_000 + 10 * FRAME)
    forged = intruding.stream(intruder_audio)
    port = call.port("inbound")
    udp, intruder = UdpSender(), UdpSender()
    try:
        sent = await send(udp, to(port, packets[:10]))
        sent += await send(intruder, to(port, forged))
        sent += await send(udp, to(port, packets[10:]))
        assert await counted(gateway, sent) == only(audio=20, unexpected_source=10)
    finally:
        udp.close()
        intruder.close()
    await call_action(gateway, acme, call, "end")
    assert_samples((await export(gateway, acme, call))[:, 0], audio_pcm, "inbound")


@pytest.mark.parametrize("srtp", [True, False], ids=["srtp", "plain-rtp"])
async def test_only_srtp_may_move_its_source_after_a_second_of_silence(
    clocked_gateway: Gateway, clock: FakeClock, srtp: bool
) -> None:
    """A PBX failing over: once the latched address has been silent for 1 s, an SRTP packet
    that authenticates from a new address takes the track over (its audio continues at its
    timestamps, and the old address becomes the stranger); plain RTP, which anyone can
    forge, never moves."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", PLAIN_ALLOWED)
    call = await announce_rtp(gateway, acme, srtp=srtp)
    audio, audio_pcm = g711(0.4, 440)
    packets = call.sender("inbound", ssrc=5).stream(audio)
    port = call.port("inbound")
    first, second = UdpSender(), UdpSender()
    try:
        sent = await send(first, to(port, packets[:10]))
        await counted(gateway, sent)
        clock.advance(1.5)
        sent += await send(second, to(port, packets[10:]))
        sent += await send(first, to(port, packets[:1]))
        counts = await counted(gateway, sent)
    finally:
        first.close()
        second.close()
    await call_action(gateway, acme, call, "end")
    pcm = await export(gateway, acme, call)
    if srtp:
        assert counts == only(audio=20, unexpected_source=1)
        assert_samples(pcm[:, 0], audio_pcm, "inbound")
    else:
        assert counts == only(audio=10, unexpected_source=10, duplicate=1)
        assert_samples(pcm[:, 0], audio_pcm[: 10 * FRAME], "inbound")


async def test_deleting_the_tenant_ends_its_rtp_calls_and_frees_their_ports(
    gateway: Gateway,
) -> None:
    """Tenant deletion ends its live RTP calls; their sockets are closed."""
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    ports = [call.port("inbound"), call.port("outbound")]
    response = await gateway.client.delete("/v1/tenants/acme", headers=bearer(gateway.operator))
    assert response.status in (200, 204), await response.text()
    assert metric_value(await scrape(gateway), PORTS_IN_USE) == 0
    assert not any(udp_port_taken(port) for port in ports), ports


# --- 6. pause and resume ------------------------------------------------------------------


async def test_paused_rtp_is_silence_of_the_right_length(clocked_gateway: Gateway) -> None:
    """Packets that arrive while the call is paused are discarded but keep their place: the
    pause is silence of exactly their length, the audio around it exact, on both tracks."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    inbound, inbound_pcm = g711(0.6, 440)
    outbound, outbound_pcm = g711(0.6, 660, seed=1)
    a = call.sender("inbound", ssrc=1).stream(inbound)
    b = call.sender("outbound", ssrc=2).stream(outbound)
    udp = UdpSender()

    async def span(start: int, stop: int, total: int) -> int:
        total += await send(
            udp,
            interleave(
                to(call.port("inbound"), a[start:stop]), to(call.port("outbound"), b[start:stop])
            ),
        )
        await counted(gateway, total)
        return total

    try:
        total = await span(0, 10, 0)
        assert (await call_action(gateway, acme, call, "pause"))["paused"] is True
        total = await span(10, 20, total)
        assert (await call_action(gateway, acme, call, "resume"))["paused"] is False
        await span(20, 30, total)
    finally:
        udp.close()
    await call_action(gateway, acme, call, "end")
    pcm = await export(gateway, acme, call)
    paused = range(10, 20)
    assert_samples(pcm[:, 0], with_silence(inbound_pcm, paused), "inbound")
    assert_samples(pcm[:, 1], with_silence(outbound_pcm, paused), "outbound")


# --- 7. Opus ------------------------------------------------------------------------------


@pytest.mark.parametrize("pinned", [None, 111], ids=["any-dynamic-pt", "pinned-pt"])
async def test_opus_over_srtp_exports_48k_audio(
    clocked_gateway: Gateway, pinned: int | None
) -> None:
    """Opus packets from libopus, SRTP with PT 111 (any dynamic PT, or the one pinned in
    ``payload_types``), export as a 48 kHz WAV whose inbound correlates with the source and
    lasts as long; a packet that is not Opus is ``bad_payload``, and with a pinned PT
    another dynamic PT is ``unexpected_payload_type``."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    extra = {"payload_types": {"opus": pinned}} if pinned else {}
    call = await announce_rtp(gateway, acme, codec="opus", **extra)
    source = tone(1.0, 440, rate=48_000)
    packets = opus_packets(source)
    sender = call.sender("inbound", payload_type=111)
    datagrams = [sender.packet(packet, samples=OPUS_FRAME) for packet in packets]
    stray = RtpSender(111, call.key("inbound"), ssrc=77)
    datagrams.insert(10, stray.packet(b""))  # an empty payload is no Opus packet
    expected = only(audio=len(packets), bad_payload=1)
    if pinned:
        datagrams.insert(20, stray.packet(packets[20], payload_type=112))
        expected = only(audio=len(packets), bad_payload=1, unexpected_payload_type=1)
    assert await deliver(gateway, call.port("inbound"), datagrams) == expected
    await call_action(gateway, acme, call, "end")

    pcm = await export(gateway, acme, call, rate=48_000)
    assert abs(len(pcm) - len(source)) <= len(source) // 100, len(pcm)
    assert not pcm[:, 1].any()
    decoded = pcm[:, 0].astype(np.float64)
    reference = source.astype(np.float64)
    window = len(source) - 2 * OPUS_FRAME

    def correlation(lag: int) -> float:
        return float(np.corrcoef(decoded[lag : lag + window], reference[:window])[0, 1])

    best = max(correlation(lag) for lag in range(0, 2 * OPUS_FRAME))
    assert best >= 0.95, best


# --- 8. DTMF ------------------------------------------------------------------------------


async def test_telephone_events_are_counted_and_never_audio(
    clocked_gateway: Gateway, gateway_settings: Settings
) -> None:
    """RFC 4733 events (PT 101) inside the stream are counted once per event in
    ``callvault_dtmf_events_total{transport="rtp"}``; the audio around them is exact and
    nothing is added to it; the digits are nowhere in the data dir's files."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.6, 440)
    sender = call.sender("inbound")
    chunks = [audio[i * FRAME : (i + 1) * FRAME] for i in range(30)]
    datagrams: list[bytes] = []
    for index, chunk in enumerate(chunks):
        if index == 8:
            datagrams += sender.dtmf(9)
        if index == 15:
            datagrams += sender.dtmf(11)  # '#'
        if index == 22:
            datagrams += sender.dtmf(7)
        datagrams.append(sender.packet(chunk))
    assert await deliver(gateway, call.port("inbound"), datagrams) == only(
        audio=30, telephone_event=3 * 6
    )
    await call_action(gateway, acme, call, "end")
    metrics = await scrape(gateway)
    assert metric_value(metrics, "callvault_dtmf_events_total", transport="rtp") == 3
    assert metric_value(metrics, "callvault_frames_in_total", transport="rtp") == 30
    pcm = await export(gateway, acme, call)
    assert_samples(pcm[:, 0], audio_pcm, "inbound")
    assert (await get_recording(gateway, acme, call))["duration_s"] == 0.6
    digits = [b"9#7", "9#7".encode("utf-16-le")]
    leaked = [
        p.name
        for p in data_files(gateway_settings.data_dir)
        if any(d in p.read_bytes() for d in digits)
    ]
    assert not leaked, leaked


# --- 9. comfort noise ---------------------------------------------------------------------


async def test_comfort_noise_is_ignored_and_timestamps_keep_the_timeline(
    clocked_gateway: Gateway,
) -> None:
    """PT 13 packets during silence suppression are counted and dropped; the audio after
    the silence lands where its timestamps say, the silence exact in between."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, audio_pcm = g711(0.6, 440)
    sender = call.sender("inbound")
    chunks = [audio[i * FRAME : (i + 1) * FRAME] for i in range(30)]
    datagrams = [sender.packet(chunk) for chunk in chunks[:10]]
    # Silence suppression for packets 10-19: two SID frames (RFC 3389) cover 200 ms.
    datagrams += [sender.packet(b"\x40", payload_type=13, samples=5 * FRAME) for _ in range(2)]
    datagrams += [sender.packet(chunk) for chunk in chunks[20:]]
    assert await deliver(gateway, call.port("inbound"), datagrams) == only(
        audio=20, comfort_noise=2
    )
    await call_action(gateway, acme, call, "end")
    pcm = await export(gateway, acme, call)
    assert_samples(pcm[:, 0], with_silence(audio_pcm, range(10, 20)), "inbound")


# --- 10. secrets --------------------------------------------------------------------------


async def test_srtp_keys_never_reach_logs_metrics_or_the_data_dir(
    clocked_gateway: Gateway, gateway_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a call with good packets, wrong keys and garbage, and its end: neither
    track's key (its SDES text, base64 or raw bytes) is in any log record, in /metrics, or
    in any file of the data dir (the gateway never stores them)."""
    caplog.set_level(logging.DEBUG)
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, _ = g711(0.2, 440)
    udp = UdpSender()
    try:
        datagrams = [
            *to(call.port("inbound"), call.sender("inbound").stream(audio)),
            *to(call.port("outbound"), call.sender("outbound").stream(audio)),
            *to(call.port("inbound"), RtpSender(0, SrtpKey.generate()).stream(audio[:FRAME])),
            (call.port("outbound"), b"\x80\x00" + bytes(40)),
        ]
        await counted(gateway, await send(udp, datagrams))
    finally:
        udp.close()
    await call_action(gateway, acme, call, "end")
    await export(gateway, acme, call)
    metrics = await scrape(gateway)

    key_texts: list[bytes] = []
    for track in ("inbound", "outbound"):
        sdes = call.offer["crypto"][track]
        key = call.key(track)
        assert key is not None
        encoded = sdes.split("inline:", 1)[1]
        key_texts += [sdes.encode(), encoded.encode(), key.material, key.material.hex().encode()]
    places = {"logs": caplog.text.encode(), "metrics": metrics.encode()}
    places.update({str(p): p.read_bytes() for p in data_files(gateway_settings.data_dir)})
    leaked = sorted({where for where, text in places.items() for s in key_texts if s in text})
    assert not leaked, f"SRTP key material found in {leaked}"


# --- found in review: each of these failed before its fix ------------------------------------


async def test_a_lost_10_ms_packet_keeps_the_rest_in_place(clocked_gateway: Gateway) -> None:
    """ptime 10 ms (80 samples): losing one packet must not pull the rest 10 ms earlier (the
    jitter snap meant for Twilio's millisecond timestamps must not touch RTP's exact ones)."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, pcm = g711(0.2, 440)
    packets = call.sender("inbound").stream(audio, size=80)
    await deliver(gateway, call.port("inbound"), [p for i, p in enumerate(packets) if i != 5])
    await call_action(gateway, acme, call, "end")
    expected = pcm.copy()
    expected[400:480] = 0
    assert_samples((await export(gateway, acme, call))[:, 0], expected, "inbound")


async def test_datagrams_unread_when_the_call_ends_are_the_calls(
    clocked_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A datagram that reached the port before ``/end`` is recorded even when the sockets'
    poller has not read it yet (``rtp.read_interval``): ending a call reads its sockets
    first. Here the poller never reads, so only that read can take the rest."""
    monkeypatch.setattr(rtp_sockets.Poller, "_woken", lambda self: self._unwatch())
    gateway = clocked_gateway
    assert gateway.app[RTP]._poller() is not None  # the default interval: a poller reads
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, pcm = g711(0.4, 440)
    udp = UdpSender()
    try:
        await send(udp, to(call.port("inbound"), call.sender("inbound").stream(audio)))
        await asyncio.sleep(0.05)
        # The loop read the socket's first datagram(s) (``Reader._first``); the poller,
        # which would read the rest, never does.
        assert 1 <= outcomes(await scrape(gateway))["audio"] < 20
        await call_action(gateway, acme, call, "end")
    finally:
        udp.close()
    assert outcomes(await scrape(gateway)) == only(audio=20)
    assert_samples((await export(gateway, acme, call))[:, 0], pcm, "inbound")


async def test_a_track_that_starts_11_minutes_in_lands_at_11_minutes(
    clocked_gateway: Gateway, clock: FakeClock
) -> None:
    """An agent leg answering after 11 minutes in a queue starts where the call's clock is,
    and every one of its packets is stored (none refused as a jump)."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    frame, _ = g711(0.02, 440)
    inbound = call.sender("inbound")
    outbound = call.sender("outbound", ssrc=0x2222)
    udp = UdpSender()
    total = 0
    try:
        for step in range(67):  # one inbound packet every 10 s for 660 s
            inbound.timestamp = (50_000 + step * 10 * 8000) % (1 << 32)
            total += await send(udp, to(call.port("inbound"), [inbound.packet(frame)]))
            await counted(gateway, total)
            clock.advance(10)
        late, late_pcm = g711(0.2, 660)
        total += await send(udp, to(call.port("outbound"), outbound.stream(late)))
        assert await counted(gateway, total) == only(audio=total)
    finally:
        udp.close()
    await call_action(gateway, acme, call, "end")
    right = (await export(gateway, acme, call))[:, 1]
    start = 670 * 8000  # the clock had advanced 67 x 10 s when the outbound leg began
    assert_samples(right[start : start + len(late_pcm)], late_pcm, "outbound")
    assert not right[:start].any()


async def test_a_sender_cannot_stretch_the_timeline_past_the_clock(
    clocked_gateway: Gateway,
) -> None:
    """Timestamps 599 s apart sent within a moment (a key holder playing games): the audio
    stays within a few seconds of the call's clock instead of spanning an hour and a half."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    frame, _ = g711(0.02, 440)
    sender = call.sender("inbound")
    packets = []
    for _ in range(10):
        packets.append(sender.packet(frame))
        sender.timestamp = (sender.timestamp + 599 * 8000) % (1 << 32)
    await deliver(gateway, call.port("inbound"), packets)
    await call_action(gateway, acme, call, "end")
    recording = await get_recording(gateway, acme, call)
    assert recording["duration_s"] <= 10 * 0.02 + 5 * 2


async def test_a_failing_store_does_not_make_a_call_buffer_without_bound(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When every flush fails at once (the spool cannot open an upload), the call still
    holds at most MAX_BUFFERED_FLUSHES flushes' worth, drops the rest as overload, and
    does not retry (and log) a flush per datagram."""

    async def broken_open(self: CallSession, track: str, now: datetime) -> Any:
        raise StorageUnavailable("spool down")

    monkeypatch.setattr(CallSession, "_open_upload", broken_open)
    settings = Settings(
        data_dir=tmp_path / "var",
        audiosocket=AudioSocketSettings(port=0),
        ingest=IngestSettings(flush_bytes=1024),
        rtp=RtpSettings(port_min=(base := free_udp_range(4)), port_max=base + 3),
    )
    gateway = await start_gateway(
        await aiohttp_client(GatewayServer(build_app(settings, clock=FakeClock())))
    )
    acme = await gateway.tenant("acme", ON)
    call = await announce_rtp(gateway, acme)
    audio, _ = g711(4.0, 440)
    datagrams = call.sender("inbound").stream(audio)
    counts = await deliver(gateway, call.port("inbound"), datagrams)
    session = gateway.app[CALLS].live()[0]
    assert session.buffered() <= MAX_BUFFERED_FLUSHES * 1024 + 160
    assert counts["overload"] > 0 and counts["audio"] + counts["overload"] == len(datagrams)
    failures = sum("RTP flush failed" in record.getMessage() for record in caplog.records)
    assert 1 <= failures <= 5


async def test_a_request_cancelled_while_ports_bind_leaks_nothing(
    clocked_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement's handler cancelled between binding a track's RTP and RTCP ports:
    the RTP socket is closed and the pair is back in the pool."""
    gateway = clocked_gateway
    acme = await gateway.tenant("acme", ON)
    await announce_rtp(gateway, acme)
    rtp = gateway.app[RTP]
    free = rtp.free_ports
    session = gateway.app[CALLS].live()[0]
    loop = asyncio.get_running_loop()
    real = loop.create_datagram_endpoint
    seen: list[int] = []
    rtcp_reached = asyncio.Event()

    async def hang_on_rtcp(factory: Any, local_addr: tuple[str, int], **kwargs: Any) -> Any:
        seen.append(local_addr[1])
        if local_addr[1] % 2:
            rtcp_reached.set()
            await asyncio.Event().wait()
        return await real(factory, local_addr=local_addr, **kwargs)

    monkeypatch.setattr(loop, "create_datagram_endpoint", hang_on_rtcp)
    task = asyncio.create_task(
        rtp.open_call(session, srtp=True, payload_types=PayloadTypes.for_codec("pcmu"))
    )
    await rtcp_reached.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    await asyncio.sleep(0)  # the closed transport lets go of its socket
    assert rtp.free_ports == free
    # Only RTCP ports go through create_datagram_endpoint (an RTP port is read by its own
    # reader): the one that hung is odd, and its RTP port, bound just before, is free again.
    assert seen[0] % 2 == 1
    assert not udp_port_taken(seen[0] - 1)


async def test_a_datagram_while_the_ports_bind_is_handled(
    clocked_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray datagram (say a late packet of the port's previous call) reaching a track's
    RTP port before its RTCP port is bound is dropped and counted, not an exception in the
    event loop."""
    gateway = clocked_gateway
    tenant = await gateway.tenant("acme", {**ON, "transport": {"allow_unencrypted_rtp": True}})
    call = await announce_rtp(gateway, tenant, srtp=False)
    rtp = gateway.app[RTP]
    loop = asyncio.get_running_loop()
    real = loop.create_datagram_endpoint
    seen: list[int] = []
    release = asyncio.Event()
    rtcp_reached = asyncio.Event()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def slow_rtcp(factory: Any, local_addr: tuple[str, int], **kwargs: Any) -> Any:
        seen.append(local_addr[1])
        if local_addr[1] % 2 and len(seen) == 2:
            rtcp_reached.set()
            await release.wait()
        return await real(factory, local_addr=local_addr, **kwargs)

    monkeypatch.setattr(loop, "create_datagram_endpoint", slow_rtcp)
    udp = UdpSender()
    try:
        await call_action(gateway, tenant, call, "end")  # its ports go back to the pool
        second = asyncio.create_task(
            gateway.client.post(
                "/v1/tenants/acme/calls",
                json={"from": "+40711111111", "to": "+40722222222", "consent": "granted",
                      "transport": "rtp", "srtp": False},
                headers=bearer(tenant.pbx),
            )
        )  # fmt: skip
        await rtcp_reached.wait()
        # The outbound track's RTP port is bound, its RTCP port (seen[1]) is not yet.
        assert seen[1] % 2 == 1
        udp.send(b"\x80" + bytes(171), seen[1] - 1)
        await asyncio.sleep(0.05)
        release.set()
        response = await second
        assert response.status == 201, await response.text()
    finally:
        loop.set_exception_handler(None)
        udp.close()
    assert errors == []
    assert rtp.free_ports >= 1
