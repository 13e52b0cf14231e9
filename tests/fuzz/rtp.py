"""Fuzz ``gateway.ingest.rtp``: ``parse_rtp`` and the receiver of a call's two tracks, the
placement of their audio on the call's shared timeline included. ``tests.fuzz.srtp`` runs
the same with SRTP.

Input: a configuration byte (codec, reorder depth, DTMF's payload type), then records
``flags u8 | ms u16 | length u16 | datagram``: ``ms`` milliseconds pass, then the
datagram reaches the track ``flags & 1`` from one of two addresses (``flags & 2``); with
``flags & 8`` the receiver is polled instead. With SRTP, ``flags & 4`` protects the
datagram with the track's key first (so fuzzed packets also get past authentication);
without it, the bytes go in as they are. At the end both receivers are drained.

Contract: nothing raises (``RtpTrackReceiver`` promises it for anything a peer sends;
``parse_rtp`` raises only ``RtpError``); every datagram is accounted for exactly once, as a
counted outcome of ``DROP_REASONS`` or ``DELIVERED`` or as an ``Audio`` event; audio is
the track's, whole packets of the codec, at an offset that is never negative and never ahead
of the call's clock by more than ``MAX_AHEAD_S`` unless it follows on from the track's end
(a sender cannot stretch the timeline faster than time passes); the reorder buffer holds at
most its depth.
"""

from __future__ import annotations

from collections import Counter

import pylibsrtp

from gateway.ingest.events import Audio, Dtmf, Event, Track
from gateway.ingest.rtp import (
    DELIVERED,
    DROP_REASONS,
    MAX_AHEAD_S,
    PayloadTypes,
    RtpError,
    RtpTrackReceiver,
    SrtpKey,
    Timeline,
    parse_rtp,
)
from storage.media.codecs import CODECS, Codec
from tests.fuzz.harness import Reader

KEYS: dict[Track, SrtpKey] = {
    "inbound": SrtpKey(bytes(range(30))),
    "outbound": SrtpKey(bytes(range(100, 130))),
}
"""Fixed SRTP keys, so that seeds protected with them authenticate."""
OPUS_PT = 111
# codec name, RTP clock rate, pinned Opus payload type (None: any dynamic one)
CONFIGS: tuple[tuple[str, int, int | None], ...] = (
    ("pcmu", 8000, None),
    ("pcma", 8000, None),
    ("opus", 48000, OPUS_PT),
    ("opus", 48000, None),
)
ADDRESSES = (("192.0.2.1", 4000), ("198.51.100.7", 4000))
FLAG_OUTBOUND, FLAG_OTHER_ADDRESS, FLAG_PROTECT, FLAG_POLL = 1, 2, 4, 8


class TrackUnderTest:
    """One track's receiver and what the harness knows it must have done."""

    def __init__(
        self,
        track: Track,
        codec: Codec,
        types: PayloadTypes,
        timeline: Timeline,
        *,
        depth: int,
        srtp: bool,
    ) -> None:
        self.track = track
        self.codec = codec
        self.timeline = timeline
        self.counts: Counter[str] = Counter()
        self.receiver = RtpTrackReceiver(
            track=track,
            codec=codec,
            payload_types=types,
            key=KEYS[track] if srtp else None,
            timeline=timeline,
            count=self.count,
            reorder_depth=depth,
        )
        self.sender = KEYS[track].session(outbound=True) if srtp else None
        self.datagrams = 0
        self.audio = 0
        self.end: int | None = None
        """End of the track's last audio on the timeline, as the events placed it."""

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1

    def receive(self, datagram: bytes, addr: tuple[str, int], now: float) -> None:
        self.datagrams += 1
        self.check(self.receiver.receive_datagram(datagram, addr, now), now)

    def check(self, events: list[Event], now: float) -> None:
        held = len(self.receiver._held)  # the reorder buffer, to hold it to its depth
        assert held <= self.receiver._depth, f"{held} packets held"
        for event in events:
            if isinstance(event, Dtmf):
                assert event.track == self.track and event.digit in "0123456789*#ABCD"
                continue
            assert isinstance(event, Audio) and event.track == self.track
            self.audio += 1
            samples = self.codec.frames(event.payload)
            assert samples > 0, "audio that covers no samples"
            assert event.sequence is not None and 0 <= event.sequence < 1 << 16
            offset = event.offset
            assert offset is not None and offset >= 0, f"offset {offset}"
            assert self.timeline.origin is not None
            clock = round((now - self.timeline.origin) * self.timeline.rate)
            ahead = round(MAX_AHEAD_S * self.timeline.rate)
            if self.end is None or offset > self.end:
                assert offset <= clock + ahead, (
                    f"audio placed at sample {offset}, {offset - clock} samples ahead of the "
                    f"call's clock ({clock}) and past the track's end ({self.end})"
                )
            self.end = offset + samples

    def finish(self, now: float) -> None:
        self.check(self.receiver.poll(now), now)
        self.check(self.receiver.drain(now), now)
        assert set(self.counts) <= set(DROP_REASONS) | set(DELIVERED), self.counts
        accounted = sum(self.counts.values()) + self.audio
        assert accounted == self.datagrams, (
            f"{self.datagrams} datagrams, {accounted} accounted for: {self.counts}, "
            f"{self.audio} audio"
        )


def check_parse(datagram: bytes) -> None:
    try:
        packet = parse_rtp(datagram)
    except RtpError:
        return
    assert len(packet.payload) <= len(datagram) - 12
    assert 0 <= packet.payload_type < 128 and 0 <= packet.sequence < 1 << 16


def run(data: bytes, *, srtp: bool) -> None:
    reader = Reader(data)
    config = reader.u8()  # bits 0-1 the codec, 2-4 the reorder depth, 6-7 DTMF's type
    name, rate, opus = CONFIGS[config & 3]
    types = PayloadTypes.for_codec(name, opus=opus, telephone_event=101 + (config >> 6))
    timeline = Timeline(rate)
    depth = (config >> 2 & 7) + 1
    tracks = {
        track: TrackUnderTest(track, CODECS[name], types, timeline, depth=depth, srtp=srtp)
        for track in ("inbound", "outbound")
    }
    now = 1000.0
    while reader.remaining():
        flags = reader.u8()
        now += reader.u16() / 1000
        datagram = reader.take(reader.u16())
        track = tracks["outbound" if flags & FLAG_OUTBOUND else "inbound"]
        if flags & FLAG_POLL:
            track.check(track.receiver.poll(now), now)
            continue
        check_parse(datagram)
        if track.sender is not None and flags & FLAG_PROTECT:
            try:
                datagram = track.sender.protect(datagram)
            except (pylibsrtp.Error, ValueError):
                continue  # not a packet libsrtp protects (or over its 1500 bytes): not sent
        track.receive(datagram, ADDRESSES[bool(flags & FLAG_OTHER_ADDRESS)], now)
    for track in tracks.values():
        track.finish(now + 1.0)


def fuzz_one(data: bytes) -> None:
    run(data, srtp=False)
