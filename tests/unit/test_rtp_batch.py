"""The RTP datagram path in batches (``_RtpCall.receive_batch``: ``RtpTrackReceiver.
receive_batch`` and ``CallSession.place_run``) against the per-packet path it replaced
(``_RtpCall.receive``: ``receive_datagram``, one ``Audio`` event and one ``place`` per
packet): the same datagrams, cut into batches anywhere, must leave the same recording (each
track's records, their offsets and bytes, its position), the same outcome counts, the same
DTMF count and the same call state, through reordering, loss, duplicates, SSRC changes,
sequence and timestamp wraps, DTMF, comfort noise, strangers, garbage, pause, flushes that
are slow or fail (the overload bound), and the call's maximum duration. No sockets: both
paths are fed directly, on a fake clock; flushes are played by the test."""

from __future__ import annotations

import asyncio
import errno
import inspect
import socket
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import Clock
from gateway.ingest import rtp_sockets
from gateway.ingest.rtp import PayloadTypes, RtpTrackReceiver, SrtpKey, Timeline, unprotector
from gateway.ingest.rtp_server import OUTCOMES, TRACKS, _RtpCall
from gateway.ingest.rtp_sockets import Reader
from gateway.metrics import GatewayMetrics
from gateway.session import CallSession
from storage.media.codecs import codec as media_codec
from storage.media.tracks import RecordParser, TrackRecord
from tests.rtp import RtpSender, UdpSender
from tests.unit.test_session import session

NOW = datetime(2026, 12, 6, tzinfo=UTC)
PEER = ("192.0.2.10", 40_000)
STRANGER = ("192.0.2.20", 40_002)


class FakeClock(Clock):
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


def live_session(codec: str, *, flush_bytes: int, max_duration_s: float) -> CallSession:
    """An RTP call's session, not yet attached (the glue attaches it at its first packet)."""
    return session(
        codec,
        max_duration_s=max_duration_s,
        transport="rtp",
        flush_bytes=flush_bytes,
        at=NOW,
        attach=False,
    )


class KeepingUpload:
    """A sealing upload that keeps the plaintext it is given."""

    def __init__(self) -> None:
        self.plaintext = bytearray()

    async def write(self, data: bytes) -> None:
        self.plaintext += data

    async def flush(self) -> None:
        pass


class Side:
    """One RTP call's glue with its own session, receivers, clock and counts."""

    def __init__(
        self, codec: str, key: SrtpKey | None, *, flush_bytes: int, max_duration_s: float
    ) -> None:
        self.clock = FakeClock()
        self.counts: Counter[str] = Counter()
        self.metrics = GatewayMetrics(None)
        self.session = live_session(codec, flush_bytes=flush_bytes, max_duration_s=max_duration_s)
        outcomes = {o: self._counter(o) for o in OUTCOMES}
        self.call = _RtpCall(
            self.session,
            clock=self.clock,
            metrics=self.metrics,
            outcomes=outcomes,
            max_buffered=4 * flush_bytes,
        )
        timeline = Timeline(self.session.call.sample_rate)
        for track in TRACKS:
            self.call.receivers[track] = RtpTrackReceiver(
                track=track,
                codec=media_codec(codec),
                payload_types=PayloadTypes.for_codec(codec, opus=111),
                key=key,
                timeline=timeline,
                count=self.call.count,
            )
        self.uploads: dict[str, KeepingUpload] = {}

    def _counter(self, outcome: str) -> Any:
        def inc(amount: int = 1) -> None:
            self.counts[outcome] += amount

        return inc

    async def flush(self, *, fails: bool) -> None:
        """What the flush task the glue started does, run now instead (the test plays the
        loop): the session's own flush into uploads that keep what they are given, or
        (``fails``) a flush that failed, after which the next waits ``FLUSH_RETRY_S``."""
        task = self.call._flush
        if task is None:
            return
        task.cancel()
        self.call._flush = None
        if fails:
            self.call._retry_at = asyncio.get_running_loop().time() + 3600
            return
        self.call._retry_at = None
        for name, writer in self.session.tracks.items():
            if writer.upload is None:
                writer.upload = self.uploads.setdefault(name, KeepingUpload())  # type: ignore[assignment]
        await self.session._flush(self.clock.at)

    def state(self) -> dict[str, Any]:
        tracks = {}
        for name, writer in self.session.tracks.items():
            kept = self.uploads.get(name)
            data = bytes(kept.plaintext if kept is not None else b"") + bytes(writer._take())
            parser = RecordParser()
            found: list[TrackRecord] = parser.feed(data)
            parser.finish()
            tracks[name] = (found, writer.position)
        receivers = {
            name: (r.source, r.last_packet_at, r.deadline, r._next, r._ssrc, r._end)
            for name, r in self.call.receivers.items()
        }
        return {
            "tracks": tracks,
            "counts": +self.counts,
            "delivered": self.call.delivered,
            "dtmf": self.metrics.dtmf_events.labels("rtp")._value.get(),
            "discarded": self.metrics.audio_discarded._value.get(),
            "closing": self.session.closing,
            "attached": self.session.attached,
            "flushing": self.call._flush is not None,
            "receivers": receivers,
        }

    def close(self) -> None:
        if self.call._flush is not None:
            self.call._flush.cancel()
        self.call.close()


@dataclass
class Batch:
    track: str
    datagrams: list[tuple[bytes, tuple[str, int]]]
    step_s: float
    """The clock moves this far before the batch."""
    then: str | None
    """After the batch: "flush", "flush_fails", "pause", "resume", "poll" or nothing."""


@st.composite
def track_streams(draw: st.DrawFn, codec: str, key: SrtpKey | None) -> list[bytes]:
    """One track's datagrams as a PBX (and the network, and strangers) might send them."""
    opus = codec == "opus"
    size = 40 if opus else 160
    samples = 960 if opus else 160
    audio_type = 111 if opus else (0 if codec == "pcmu" else 8)
    sender = RtpSender(
        audio_type,
        key=key,
        ssrc=draw(st.integers(1, 2**32 - 1)),
        seq=draw(st.sampled_from([0, 65_530, 30_000])),
        timestamp=draw(st.sampled_from([0, 2**32 - 1_000, 123_456])),
    )
    frame = (bytes([0xF8]) + b"\x5a" * (size - 1)) if opus else b"\x7f" * size
    out: list[bytes] = []
    for op in draw(
        st.lists(
            st.sampled_from(
                ["audio"] * 12
                + ["lose", "dup", "swap", "ssrc", "dtmf", "cn", "jump", "back", "junk", "odd"]
            ),
            max_size=120,
        )
    ):
        if op == "audio":
            out.append(sender.packet(frame, samples=samples))
        elif op == "lose":
            sender.packet(frame, samples=samples)
        elif op == "dup" and out:
            out.append(out[draw(st.integers(0, len(out) - 1))])
        elif op == "swap" and len(out) >= 2:
            back = draw(st.integers(2, min(len(out), 8)))
            out.insert(len(out) - back, out.pop())
        elif op == "ssrc":
            sender = RtpSender(
                audio_type,
                key=key,
                ssrc=draw(st.integers(1, 2**32 - 1)),
                seq=draw(st.integers(0, 65_535)),
                timestamp=draw(st.integers(0, 2**32 - 1)),
            )
        elif op == "dtmf":
            out += sender.dtmf(draw(st.integers(0, 15)), updates=2)
        elif op == "cn":
            out.append(sender.packet(b"\x40", samples=samples, payload_type=13))
        elif op == "jump":
            sender.timestamp = (sender.timestamp + draw(st.integers(1, 80_000))) % 2**32
            out.append(sender.packet(frame, samples=samples))
        elif op == "back":
            sender.timestamp = (sender.timestamp - draw(st.integers(1, 8_000))) % 2**32
            out.append(sender.packet(frame, samples=samples))
        elif op == "junk":
            out.append(draw(st.binary(max_size=30)))
        elif op == "odd" and not opus:
            out.append(sender.packet(b"\x7f" * draw(st.integers(1, 300)), samples=samples))
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, SrtpKey | None, list[Batch], int, float]:
    codec = draw(st.sampled_from(["pcmu", "pcmu", "pcma", "opus"]))
    key = SrtpKey.generate() if draw(st.booleans()) else None
    streams = {track: draw(track_streams(codec, key)) for track in TRACKS}
    # Interleave the two tracks' datagrams in batches of any size, in each track's order.
    batches: list[Batch] = []
    while any(streams.values()):
        track = draw(st.sampled_from([t for t in TRACKS if streams[t]]))
        take = draw(st.integers(1, 40))
        chunk, streams[track] = streams[track][:take], streams[track][take:]
        datagrams = [(data, STRANGER if draw(st.integers(0, 30)) == 0 else PEER) for data in chunk]
        batches.append(
            Batch(
                track,
                datagrams,
                draw(st.sampled_from([0.0, 0.02, 0.02, 0.1, 0.5, 1.5, 3.0])),
                draw(
                    st.sampled_from(
                        [None] * 6 + ["flush", "flush", "flush_fails", "pause", "resume", "poll"]
                    )
                ),
            )
        )
    flush_bytes = draw(st.sampled_from([320, 1000, 64 * 1024]))
    max_duration_s = draw(st.sampled_from([0.5, 2.0, 3600.0]))
    return codec, key, batches, flush_bytes, max_duration_s


async def play(side: Side, batches: list[Batch], *, batched: bool) -> dict[str, Any]:
    for batch in batches:
        side.clock.at += timedelta(seconds=batch.step_s)
        if batched:
            side.call.receive_batch(batch.track, batch.datagrams)  # type: ignore[arg-type]
        else:
            for data, addr in batch.datagrams:
                side.call.receive(batch.track, data, addr)  # type: ignore[arg-type]
        if side.call._timer is not None:  # the test plays the reorder timer ("poll")
            side.call._timer.cancel()
            side.call._timer = None
        if batch.then in ("flush", "flush_fails"):
            await side.flush(fails=batch.then == "flush_fails")
        elif batch.then == "pause":
            side.session.paused = True
        elif batch.then == "resume":
            side.session.paused = False
        elif batch.then == "poll":
            side.call._on_timer()
            if side.call._timer is not None:
                side.call._timer.cancel()
                side.call._timer = None
    side.call.drain(side.clock.at + timedelta(seconds=10))
    state = side.state()
    side.close()
    return state


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
async def test_batches_store_exactly_what_packets_one_by_one_store(
    scenario: tuple[str, SrtpKey | None, list[Batch], int, float],
) -> None:
    codec, key, batches, flush_bytes, max_duration_s = scenario
    sides = [
        Side(codec, key, flush_bytes=flush_bytes, max_duration_s=max_duration_s) for _ in range(2)
    ]
    one_by_one = await play(sides[0], batches, batched=False)
    batched = await play(sides[1], batches, batched=True)
    assert batched == one_by_one


async def test_a_clean_stream_is_one_run_per_batch_and_one_record() -> None:
    """The common case, across a sequence and a timestamp wrap: a batch of 50 packets in
    sequence is one run; three such batches land back to back as one record, each packet
    counted as audio once placed."""
    key = SrtpKey.generate()
    sender = RtpSender(0, key=key, seq=65_500, timestamp=2**32 - 8_000)
    payloads = [bytes([n % 256]) * 160 for n in range(150)]
    datagrams = [(sender.packet(payload), PEER) for payload in payloads]
    probe = Side("pcmu", key, flush_bytes=64 * 1024, max_duration_s=3600)
    runs = probe.call.receivers["inbound"].receive_batch(datagrams[:50], 1000.0)
    assert [(type(r).__name__, len(getattr(r, "payloads", ()))) for r in runs] == [("AudioRun", 50)]
    probe.close()

    side = Side("pcmu", key, flush_bytes=64 * 1024, max_duration_s=3600)
    for start in (0, 50, 100):
        side.call.receive_batch("inbound", datagrams[start : start + 50])
    state = side.state()
    side.close()
    assert state["tracks"]["inbound"] == ([TrackRecord(0, b"".join(payloads))], 150 * 160)
    assert state["counts"] == Counter()  # nothing refused ("audio" is published from delivered)
    assert state["delivered"] == 150


# --- the socket reader, on both event loops ------------------------------------------------


def loop_factories() -> list[Any]:
    import uvloop

    return [asyncio.SelectorEventLoop, uvloop.new_event_loop]


@pytest.mark.parametrize("factory", loop_factories(), ids=["asyncio", "uvloop"])
def test_reader_drains_the_socket_in_batches_on_both_loops(
    factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Datagrams that wait on the socket come out together, in order and whole (a 2000-byte
    one too), at most ``MAX_BATCH`` a wake-up; after ``close`` the port is free again."""
    monkeypatch.setattr(rtp_sockets, "MAX_BATCH", 16)

    async def main() -> None:
        batches: list[list[tuple[bytes, tuple[str, int]]]] = []
        reader = Reader(batches.append)
        await reader.bind("127.0.0.1", 0)
        assert reader._socket is not None
        port = reader._socket.getsockname()[1]
        sender = UdpSender()
        sent = [n.to_bytes(2, "big") * 80 for n in range(100)] + [b"\x80" * 2000]
        for datagram in sent:
            sender.send(datagram, port)
        for _ in range(200):
            if sum(len(b) for b in batches) == len(sent):
                break
            await asyncio.sleep(0.01)
        assert [data for batch in batches for data, _ in batch] == sent
        assert {addr for batch in batches for _, addr in batch} == {sender.address}
        assert max(len(b) for b in batches) > 1
        assert max(len(b) for b in batches) == 16
        reader.close()
        reader.close()  # twice: nothing more
        again = Reader(batches.append)
        await again.bind("127.0.0.1", port)  # the port is free
        again.close()
        sender.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def test_reader_bind_raises_what_binding_raises() -> None:
    """A port another socket holds: ``OSError`` with ``EADDRINUSE``, as
    ``create_datagram_endpoint`` raises it (``RtpIngest`` then tries the next pair)."""

    async def main() -> None:
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.bind(("127.0.0.1", 0))
        reader = Reader(lambda batch: None)
        with pytest.raises(OSError) as raised:
            await reader.bind("127.0.0.1", held.getsockname()[1])
        assert raised.value.errno == errno.EADDRINUSE
        assert reader._socket is None
        held.close()

    asyncio.run(main())


def test_unprotector_matches_pylibsrtp_unprotect() -> None:
    """The allocation-free unprotect returns what ``Session.unprotect`` returns and raises
    the same ``pylibsrtp.Error`` (message included: it tells replay from auth_failed) for
    replays, forgeries and packets of another key; without pylibsrtp 1.0.0's internals it
    is ``Session.unprotect`` itself."""
    key = SrtpKey.generate()
    sender = RtpSender(0, key=key)
    datagrams = [sender.packet(bytes([n]) * 160) for n in range(20)]
    other = RtpSender(0, key=SrtpKey.generate()).packet(b"\x01" * 160)
    forged = datagrams[5][:-1] + bytes([datagrams[5][-1] ^ 1])
    feed = [*datagrams[:10], datagrams[3], forged, other, *datagrams[10:], datagrams[0]]
    reference, fast = key.session(), unprotector(key.session())
    # The direct path, not a fallback to Session.unprotect (which would compare it with
    # itself): pylibsrtp 1.0.0 is pinned, so the fallback must not be taken.
    assert fast is not None and not inspect.ismethod(fast)
    for datagram in feed:
        outcomes = []
        for unprotect in (reference.unprotect, fast):
            try:
                outcomes.append(("ok", unprotect(datagram)))
            except pylibsrtp.Error as e:
                outcomes.append(("error", str(e)))
        assert outcomes[0] == outcomes[1]
        assert isinstance(outcomes[1][1], str) or type(outcomes[1][1]) is bytes

    class Other:
        def unprotect(self, data: bytes) -> bytes:
            return data

    plain = Other()
    assert unprotector(plain).__self__ is plain  # type: ignore[arg-type, attr-defined]
