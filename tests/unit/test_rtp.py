"""The sans-I/O RTP/SRTP core: packets parsed, SDES keys, payload types, and one track's
receiver fed datagrams that are lost, duplicated, reordered, replayed, forged or garbled,
checking where each payload lands on the call's timeline and that every datagram is counted
exactly once. No sockets: datagrams are built with ``tests.rtp.RtpSender`` (SRTP through
pylibsrtp) or by hand."""

from __future__ import annotations

import base64
import struct
from collections import Counter
from collections.abc import Callable, Sequence

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.events import Audio, Dtmf, Event, Track
from gateway.ingest.rtp import (
    DELIVERED,
    DROP_REASONS,
    MAX_BACKSTEP_S,
    MAX_MISORDER,
    MAX_SRTP_PACKET,
    MIN_SEQUENTIAL,
    PayloadTypes,
    RtpError,
    RtpTrackReceiver,
    SrtpKey,
    Timeline,
    parse_rtp,
)
from storage.media.codecs import CODECS
from tests.rtp import RtpSender

PEER = ("192.0.2.10", 40_000)
OTHER = ("192.0.2.20", 40_002)
T0 = 1_000.0
"""The first packet's arrival; times after it are binary fractions where an anchor depends
on them, so that ``(now - origin) * rate`` is exact."""
FRAME = 160
"""Samples (and G.711 bytes) per 20 ms packet at 8 kHz."""
OPUS_20MS = bytes([0xF8]) + b"\x5a" * 40
"""A CELT fullband 20 ms code-0 Opus packet: 960 samples (its frame is never decoded)."""
DTMF = "0123456789*#ABCD"


def payload(n: int, size: int = FRAME) -> bytes:
    """A G.711 payload that says which packet it is."""
    return n.to_bytes(4, "big") + bytes([n % 251]) * (size - 4)


def payload_number(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


def dtmf_payload(code: int, *, end: bool = False, duration: int = 160) -> bytes:
    """An RFC 4733 §2.3 event payload: event, E bit and volume, duration."""
    return struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


class Rx:
    """One receiver and everything it reported: events, outcomes counted, datagrams fed."""

    def __init__(
        self,
        *,
        codec: str = "pcmu",
        key: SrtpKey | None = None,
        timeline: Timeline | None = None,
        track: Track = "inbound",
        payload_types: PayloadTypes | None = None,
        depth: int = 5,
        delay: float = 0.06,
    ) -> None:
        rate = 48_000 if codec == "opus" else 8_000
        self.timeline = timeline if timeline is not None else Timeline(rate)
        self.outcomes: list[str] = []
        self.events: list[Event] = []
        self.fed = 0
        self.receiver = RtpTrackReceiver(
            track=track,
            codec=CODECS[codec],
            payload_types=payload_types or PayloadTypes.for_codec(codec),
            key=key,
            timeline=self.timeline,
            count=self.outcomes.append,
            reorder_depth=depth,
            reorder_delay_s=delay,
        )

    def feed(self, datagram: bytes, now: float = T0, addr: tuple[str, int] = PEER) -> list[Event]:
        self.fed += 1
        return self._took(self.receiver.receive_datagram(datagram, addr, now))

    def poll(self, now: float) -> list[Event]:
        return self._took(self.receiver.poll(now))

    def drain(self, now: float = T0 + 60) -> list[Event]:
        return self._took(self.receiver.drain(now))

    def _took(self, events: list[Event]) -> list[Event]:
        """Record the events; Audio events are counted 'audio' here, as the glue does once
        the session took them (the receiver leaves their counting to its caller)."""
        self.events += events
        self.outcomes += ["audio" for event in events if isinstance(event, Audio)]
        return events

    # Methods, not attributes: mypy would keep an attribute narrowed across feeds.
    def deadline(self) -> float | None:
        return self.receiver.deadline

    def source(self) -> tuple[str, int] | None:
        return self.receiver.source

    def last_packet_at(self) -> float | None:
        return self.receiver.last_packet_at

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.outcomes)

    def audio(self) -> list[tuple[int, int]]:
        """(offset, packet number) of each Audio event so far, in order."""
        return audio_of(self.events)

    def assert_counted_once(self) -> None:
        """Every datagram fed was counted exactly once, with a known label."""
        assert len(self.outcomes) == self.fed, self.counts
        assert set(self.outcomes) <= set(DROP_REASONS) | set(DELIVERED)


def audio_of(events: Sequence[Event]) -> list[tuple[int, int]]:
    """(offset, packet number) of each Audio event, in order."""
    audio = [e for e in events if isinstance(e, Audio)]
    assert all(e.offset is not None for e in audio)
    return [(e.offset or 0, payload_number(e.payload)) for e in audio]


def packets(sender: RtpSender, numbers: range) -> list[bytes]:
    return [sender.packet(payload(n)) for n in numbers]


@pytest.fixture(params=["rtp", "srtp"])
def key(request: pytest.FixtureRequest) -> SrtpKey | None:
    """Plain RTP (no key) or SRTP with a fresh key."""
    return SrtpKey.generate() if request.param == "srtp" else None


# --- parse_rtp -----------------------------------------------------------------------------


def build_rtp(
    *,
    payload: bytes = b"",
    marker: bool = False,
    payload_type: int = 0,
    sequence: int = 1,
    timestamp: int = 2,
    ssrc: int = 3,
    csrcs: Sequence[int] = (),
    extension: bytes | None = None,
    padding: int = 0,
    version: int = 2,
) -> bytes:
    """An RTP packet by hand (RFC 3550 §5.1, §5.3.1): ``extension`` is the extension's
    data (whole 32-bit words), ``padding`` the padding bytes to append (count included)."""
    first = version << 6 | (0x20 if padding else 0) | (0x10 if extension is not None else 0)
    first |= len(csrcs)
    data = struct.pack(
        "!BBHII", first, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc
    )
    data += b"".join(struct.pack("!I", csrc) for csrc in csrcs)
    if extension is not None:
        data += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


def test_parse_plain_header() -> None:
    """The fields of a bare 12-byte header and the payload after it."""
    packet = parse_rtp(
        build_rtp(payload=b"abc", payload_type=96, sequence=65535, timestamp=2**32 - 1, ssrc=7)
    )
    assert packet.payload == b"abc"
    assert packet.payload_type == 96
    assert packet.sequence == 65535
    assert packet.timestamp == 2**32 - 1
    assert packet.ssrc == 7
    assert packet.marker is False
    assert parse_rtp(build_rtp(marker=True, payload_type=127)).marker is True
    assert parse_rtp(build_rtp(marker=True, payload_type=127)).payload_type == 127
    assert parse_rtp(build_rtp()).payload == b""


def test_parse_steps_over_csrcs_extension_and_padding() -> None:
    """CSRCs (4 bytes each), a header extension (4 bytes plus its words) and padding are not
    part of the payload; they combine."""
    assert parse_rtp(build_rtp(payload=b"xy", csrcs=[1, 2, 3])).payload == b"xy"
    assert parse_rtp(build_rtp(payload=b"xy", csrcs=range(15))).payload == b"xy"
    assert parse_rtp(build_rtp(payload=b"xy", extension=b"\x11" * 8)).payload == b"xy"
    assert parse_rtp(build_rtp(payload=b"xy", extension=b"")).payload == b"xy"
    assert parse_rtp(build_rtp(payload=b"xy", padding=1)).payload == b"xy"
    assert parse_rtp(build_rtp(payload=b"xy", padding=255)).payload == b"xy"
    every = build_rtp(payload=b"xyz", csrcs=[9], extension=b"\x22" * 4, padding=3, marker=True)
    packet = parse_rtp(every)
    assert packet.payload == b"xyz"
    assert packet.marker is True
    assert parse_rtp(build_rtp(padding=4)).payload == b""  # nothing but padding


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        build_rtp(version=0, payload=b"x"),
        build_rtp(version=1, payload=b"x"),
        build_rtp(version=3, payload=b"x"),
        build_rtp(csrcs=[1])[:15],  # the CSRC list cut off
        build_rtp(extension=b"")[:14],  # the extension header cut off
        build_rtp(extension=b"\x00" * 8)[:20],  # the extension's words cut off
        bytes([0xA0]) + build_rtp(payload=b"x")[1:] + b"\x00",  # padding of zero bytes
    ],
)
def test_parse_refuses_what_does_not_add_up(data: bytes) -> None:
    """Short, wrong version, CSRCs or extension past the end, zero padding: ``RtpError``."""
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_parse_refuses_bad_padding() -> None:
    """A padding count of zero, or more padding than the packet has after its header, is
    ``RtpError``; padding that eats exactly the payload is an empty payload."""
    packet = bytearray(build_rtp(payload=b"abcd", padding=4))
    packet[-1] = 0
    with pytest.raises(RtpError, match="zero"):
        parse_rtp(bytes(packet))
    packet[-1] = 9  # 4 payload + 4 padding bytes after the header: 9 reaches into it
    with pytest.raises(RtpError):
        parse_rtp(bytes(packet))
    packet[-1] = 255  # longer than the whole packet
    with pytest.raises(RtpError):
        parse_rtp(bytes(packet))
    packet[-1] = 8
    assert parse_rtp(bytes(packet)).payload == b""
    with_extension = bytearray(build_rtp(extension=b"\x00" * 4, padding=2))
    with_extension[-1] = 3  # the padding would reach into the extension
    with pytest.raises(RtpError):
        parse_rtp(bytes(with_extension))


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=120))
def test_parse_raises_only_rtp_error(data: bytes) -> None:
    """Arbitrary bytes, as they are and with their version forced to 2 (any flags, CSRC
    count, extension and padding), parse or raise ``RtpError``, never anything else; a
    payload is never longer than what follows the fixed header."""
    version_2 = bytes([0x80 | (data[0] & 0x3F)]) + data[1:] if data else data
    for candidate in (data, version_2):
        try:
            packet = parse_rtp(candidate)
        except RtpError:
            continue
        assert len(packet.payload) <= len(candidate) - 12
        assert 0 <= packet.payload_type < 128


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=200),
    marker=st.booleans(),
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 65535),
    timestamp=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1),
    csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    extension=st.none() | st.binary(max_size=40).map(lambda b: b[: len(b) // 4 * 4]),
    padding=st.integers(0, 255),
)
def test_parse_round_trips_built_packets(
    payload: bytes,
    marker: bool,
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    csrcs: list[int],
    extension: bytes | None,
    padding: int,
) -> None:
    """Whatever CSRC count, extension and padding a packet has, the fields and payload
    come back as built."""
    data = build_rtp(
        payload=payload,
        marker=marker,
        payload_type=payload_type,
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        csrcs=csrcs,
        extension=extension,
        padding=padding,
    )
    packet = parse_rtp(data)
    assert packet.payload == payload
    assert packet.marker == marker
    assert packet.payload_type == payload_type
    assert packet.sequence == sequence
    assert packet.timestamp == timestamp
    assert packet.ssrc == ssrc


# --- SrtpKey -------------------------------------------------------------------------------


def test_srtp_key_generate() -> None:
    """A key is 30 bytes (16 key, 14 salt), fresh each time."""
    keys = [SrtpKey.generate() for _ in range(20)]
    assert all(len(key.material) == 30 for key in keys)
    assert len({key.material for key in keys}) == 20


def test_srtp_key_sdes_round_trip() -> None:
    """``sdes()`` is the RFC 4568 inline form and ``from_sdes`` reads it back."""
    key = SrtpKey.generate()
    text = key.sdes()
    suite, params = text.split(" ")
    assert suite == "AES_CM_128_HMAC_SHA1_80"
    assert params.startswith("inline:")
    assert base64.b64decode(params[len("inline:") :]) == key.material
    assert len(params) == len("inline:") + 40
    assert SrtpKey.from_sdes(text) == key


def test_srtp_key_works_both_ways() -> None:
    """The key's outbound session protects what its inbound session unprotects; another
    key's session refuses it."""
    key = SrtpKey.generate()
    rtp = build_rtp(payload=b"hello", sequence=5)
    protected = key.session(outbound=True).protect(rtp)
    assert protected != rtp
    assert key.session().unprotect(protected) == rtp
    with pytest.raises(pylibsrtp.Error, match="auth"):
        SrtpKey.generate().session().unprotect(protected)


@pytest.mark.parametrize(
    "make",
    [
        lambda b64: f"AES_CM_128_HMAC_SHA1_32 inline:{b64}",
        lambda b64: f"AES_256_CM_HMAC_SHA1_80 inline:{b64}",
        lambda b64: f"aes_cm_128_hmac_sha1_80 inline:{b64}",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 {b64}",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80  inline:{b64}",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^20|1:4",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:4",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64[:-4]}!!!!",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64[:-1]}",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64} ",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{b64[:-2]}é=",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(b'k' * 29).decode()}",
        lambda b64: f"AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(b'k' * 31).decode()}",
        lambda b64: "AES_CM_128_HMAC_SHA1_80 inline:",
        lambda b64: "",
    ],
    ids=[
        "sha1_32",
        "aes256",
        "lowercase",
        "no-inline",
        "two-spaces",
        "lifetime",
        "lifetime-mki",
        "mki",
        "bad-base64",
        "base64-cut",
        "trailing-space",
        "non-ascii",
        "29-bytes",
        "31-bytes",
        "empty-key",
        "empty",
    ],
)
def test_srtp_key_from_sdes_refuses(make: Callable[[str], str]) -> None:
    """Other suites, key params other than one plain inline key, and keys that are not 30
    bytes of base64 are ``ValueError``; the message never carries the key."""
    b64 = SrtpKey.generate().sdes().split("inline:")[1]
    with pytest.raises(ValueError) as refused:
        SrtpKey.from_sdes(make(b64))
    assert b64[:16] not in str(refused.value)


def test_srtp_key_needs_30_bytes() -> None:
    with pytest.raises(ValueError, match="30 bytes"):
        SrtpKey(b"\x01" * 29)
    with pytest.raises(ValueError, match="30 bytes"):
        SrtpKey(b"\x01" * 31)


def test_srtp_key_repr_hides_the_key() -> None:
    """Neither repr nor str shows the material, in bytes, hex or base64."""
    key = SrtpKey(bytes(range(30)))
    b64 = base64.b64encode(key.material).decode()
    for text in (repr(key), str(key), f"{key!r}", repr([key])):
        assert b64 not in text
        assert b64[:8] not in text
        assert key.material.hex()[:16] not in text
        assert repr(key.material)[2:14] not in text
        assert "material" not in text


# --- PayloadTypes --------------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "audio"), [("pcmu", 0), ("pcma", 8)])
def test_payload_types_g711(codec: str, audio: int) -> None:
    """G.711 audio is its static type; 13 is comfort noise, 101 telephone events by default;
    nothing else, dynamic types included."""
    types = PayloadTypes.for_codec(codec)
    assert types == PayloadTypes(audio, 101)
    assert types.kind(audio) == "audio"
    assert types.kind(13) == "comfort_noise"
    assert types.kind(101) == "telephone_event"
    for other in (0, 8, 9, 18, 96, 100, 111, 127):
        if other != audio:
            assert types.kind(other) is None
    custom = PayloadTypes.for_codec(codec, telephone_event=100, opus=111)
    assert custom == PayloadTypes(audio, 100)  # opus= means nothing for G.711
    assert custom.kind(100) == "telephone_event"
    assert custom.kind(101) is None


def test_payload_types_opus_pinned() -> None:
    """A pinned Opus type is the only audio type; other dynamic types are refused."""
    types = PayloadTypes.for_codec("opus", opus=111, telephone_event=110)
    assert types == PayloadTypes(111, 110)
    assert types.kind(111) == "audio"
    assert types.kind(110) == "telephone_event"
    assert types.kind(13) == "comfort_noise"
    for other in (0, 8, 96, 101, 112, 127):
        assert types.kind(other) is None


def test_payload_types_opus_unpinned() -> None:
    """Unpinned Opus: any dynamic type (96-127) but the telephone events' is audio."""
    types = PayloadTypes.for_codec("opus")
    assert types == PayloadTypes(None, 101)
    assert [t for t in range(128) if types.kind(t) == "audio"] == [
        t for t in range(96, 128) if t != 101
    ]
    assert types.kind(101) == "telephone_event"
    assert types.kind(13) == "comfort_noise"
    for other in (0, 8, 35, 72, 95):
        assert types.kind(other) is None
    assert PayloadTypes.for_codec("opus", telephone_event=96).kind(101) == "audio"
    assert PayloadTypes.for_codec("opus", telephone_event=96).kind(96) == "telephone_event"


# --- RtpTrackReceiver: in order ------------------------------------------------------------


def test_in_order_delivery_with_exact_offsets(key: SrtpKey | None) -> None:
    """Packets in order are delivered at once, each an Audio event with its RTP sequence
    number and its offset from the timestamp: the first at 0 (the call's first packet)."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, seq=1000, timestamp=50_000)
    for i, datagram in enumerate(packets(sender, range(50))):
        events = rx.feed(datagram, T0 + i * 0.02)
        assert len(events) == 1
        event = events[0]
        assert isinstance(event, Audio)
        assert event.track == "inbound"
        assert event.sequence == 1000 + i
        assert event.offset == i * FRAME
        assert event.payload == payload(i)
        assert event.timestamp_ms is None
    assert rx.counts == {"audio": 50}
    assert rx.source() == PEER
    assert rx.last_packet_at() == T0 + 49 * 0.02
    assert rx.deadline() is None
    assert rx.timeline.origin == T0
    assert rx.drain() == []
    rx.assert_counted_once()


def test_offsets_follow_timestamps_not_arrival(key: SrtpKey | None) -> None:
    """Arrival jitter moves nothing; a timestamp gap (silence suppression) is silence."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    rx.feed(sender.packet(payload(0)), T0)
    rx.feed(sender.packet(payload(1)), T0 + 0.5)  # late arrival, on time on the timeline
    sender.timestamp += 4000  # half a second sent as nothing
    rx.feed(sender.packet(payload(2)), T0 + 0.51)
    rx.feed(sender.packet(payload(3, size=80)), T0 + 0.52)  # a 10 ms packet next
    rx.feed(sender.packet(payload(4)), T0 + 0.53)
    assert rx.audio() == [(0, 0), (160, 1), (4320, 2), (4480, 3), (4560, 4)]
    rx.assert_counted_once()


def test_sequence_wraps_at_65535(key: SrtpKey | None) -> None:
    """Sequence numbers wrap past 65535 without loss or duplication, also when the packets
    either side of the wrap swap places; a repeat after the wrap is refused."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, seq=65_530)
    datagrams = packets(sender, range(12))
    order = [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11]  # 65535 and 0 swapped
    for i in order:
        rx.feed(datagrams[i])
    rx.feed(datagrams[4])  # 65534 again, after the wrap
    audio = [e for e in rx.events if isinstance(e, Audio)]
    assert [e.sequence for e in audio] == [*range(65_530, 65_536), *range(6)]
    assert rx.audio() == [(i * FRAME, i) for i in range(12)]
    assert rx.counts == {"audio": 12, "replay" if key else "duplicate": 1}
    rx.assert_counted_once()


def test_long_stream_wraps_sequence_twice() -> None:
    """Seventy thousand-odd packets later the sequence has wrapped twice and every packet
    is still placed exactly (the extended sequence and timestamp keep counting). They
    arrive in real time: a sender ahead of the call's clock is re-anchored."""
    rx = Rx()
    sender = RtpSender(0, seq=65_000, timestamp=2**32 - 80_000)
    total = 2 * 65_536 + 10
    for i in range(total):
        rx.feed(sender.packet(payload(i, size=4), samples=FRAME), now=T0 + i * FRAME / 8000)
    offsets = [e.offset for e in rx.events if isinstance(e, Audio)]
    assert offsets == [i * FRAME for i in range(total)]
    rx.assert_counted_once()


def test_timestamp_wraps_at_2_to_32(key: SrtpKey | None) -> None:
    """The RTP timestamp wraps past 2**32 and offsets keep counting, across a lost packet
    at the wrap too."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, timestamp=2**32 - 3 * FRAME)
    datagrams = packets(sender, range(8))
    for i, datagram in enumerate(datagrams):
        if i != 3:  # the packet with timestamp 0 is lost
            rx.feed(datagram, T0 + i * 0.02)
    rx.drain()
    assert rx.audio() == [(i * FRAME, i) for i in range(8) if i != 3]
    rx.assert_counted_once()


# --- reordering and loss -------------------------------------------------------------------


def test_reordering_within_depth_is_delivered_in_order(key: SrtpKey | None) -> None:
    """Packets swapped or shuffled within the reorder depth come out in sequence order,
    each as soon as the gap before it closes."""
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(12))
    assert audio_of(rx.feed(datagrams[0])) == [(0, 0)]
    assert rx.feed(datagrams[2]) == []
    assert audio_of(rx.feed(datagrams[1])) == [(160, 1), (320, 2)]
    for i in (5, 4, 7, 6):
        assert rx.feed(datagrams[i]) == []
    assert audio_of(rx.feed(datagrams[3])) == [(FRAME * i, i) for i in range(3, 8)]
    assert rx.deadline() is None
    for i in (9, 10, 11):
        rx.feed(datagrams[i])
    assert audio_of(rx.feed(datagrams[8])) == [(FRAME * i, i) for i in range(8, 12)]
    assert rx.counts == {"audio": 12}
    rx.assert_counted_once()


def test_depth_packets_may_overtake_a_late_one(key: SrtpKey | None) -> None:
    """A packet overtaken by ``reorder_depth`` later ones is still delivered in its place."""
    rx = Rx(key=key, depth=5)
    datagrams = packets(RtpSender(0, key=key), range(7))
    rx.feed(datagrams[0])
    for i in range(2, 7):
        assert rx.feed(datagrams[i]) == []  # five wait behind the gap
    assert audio_of(rx.feed(datagrams[1])) == [(FRAME * i, i) for i in range(1, 7)]
    rx.assert_counted_once()


def test_lost_packet_given_up_by_depth(key: SrtpKey | None) -> None:
    """A lost packet's gap is given up when one more than ``reorder_depth`` packets wait
    behind it; what follows is at its own offset (the gap is silence). The lost packet
    arriving after that is ``late``; a repeat of one delivered is a duplicate (plain RTP)
    or a replay (SRTP)."""
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(12))
    rx.feed(datagrams[0])
    rx.feed(datagrams[1])
    for i in range(3, 8):
        assert rx.feed(datagrams[i]) == []
    assert rx.deadline() is not None
    assert audio_of(rx.feed(datagrams[8])) == [(FRAME * i, i) for i in range(3, 9)]
    assert rx.deadline() is None
    assert rx.feed(datagrams[2]) == []
    assert rx.feed(datagrams[5]) == []
    assert audio_of(rx.feed(datagrams[9])) == [(9 * FRAME, 9)]
    assert rx.audio() == [(FRAME * i, i) for i in range(10) if i != 2]
    assert rx.counts == {"audio": 9, "late": 1, "replay" if key else "duplicate": 1}
    rx.assert_counted_once()


def test_lost_packet_given_up_by_poll(key: SrtpKey | None) -> None:
    """A gap is given up once the oldest packet behind it has waited ``reorder_delay_s``:
    ``deadline`` says when, ``poll`` before it releases nothing, at it releases the waiting
    packets at their offsets."""
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(6))
    rx.feed(datagrams[0], T0)
    rx.feed(datagrams[1], T0 + 0.02)
    assert rx.deadline() is None
    rx.feed(datagrams[3], T0 + 0.0625)
    rx.feed(datagrams[4], T0 + 0.08)
    deadline = rx.deadline()
    assert deadline == T0 + 0.0625 + 0.06
    assert rx.poll(deadline - 0.001) == []
    assert audio_of(rx.poll(deadline)) == [(480, 3), (640, 4)]
    assert rx.deadline() is None
    assert rx.poll(deadline + 10) == []
    assert rx.feed(datagrams[2], deadline + 0.01) == []
    assert audio_of(rx.feed(datagrams[5], deadline + 0.02)) == [(800, 5)]
    assert rx.counts == {"audio": 5, "late": 1}
    rx.assert_counted_once()


def test_poll_gives_up_only_what_waited_long_enough() -> None:
    """With two gaps, a poll gives up the first (its packet waited long enough) but keeps
    waiting for the second until its own packet's deadline."""
    rx = Rx()
    datagrams = packets(RtpSender(0), range(5))
    rx.feed(datagrams[0], T0)
    rx.feed(datagrams[2], T0 + 0.0625)
    rx.feed(datagrams[4], T0 + 0.25)
    assert audio_of(rx.poll(T0 + 0.125)) == [(320, 2)]
    assert rx.deadline() == T0 + 0.25 + 0.06
    assert rx.poll(T0 + 0.30) == []
    assert audio_of(rx.feed(datagrams[3], T0 + 0.30)) == [(480, 3), (640, 4)]
    rx.assert_counted_once()


def test_drain_releases_everything_held_in_order(key: SrtpKey | None) -> None:
    """``drain`` gives up every gap and releases all that is held, in sequence order, at
    the right offsets; afterwards nothing is held."""
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(7))
    rx.feed(datagrams[0])
    for i in (2, 4, 3, 6):  # 1 and 5 lost
        assert rx.feed(datagrams[i]) == []
    assert rx.deadline() is not None
    assert audio_of(rx.drain()) == [(320, 2), (480, 3), (640, 4), (960, 6)]
    assert rx.deadline() is None
    assert rx.drain() == []
    assert rx.counts == {"audio": 5}
    rx.assert_counted_once()


# --- refused datagrams ---------------------------------------------------------------------


def test_duplicates_plain_rtp() -> None:
    """Without SRTP a repeated packet, delivered or still held, is ``duplicate`` and
    delivered once."""
    rx = Rx()
    datagrams = packets(RtpSender(0), range(4))
    rx.feed(datagrams[0])
    rx.feed(datagrams[0])
    rx.feed(datagrams[2])
    rx.feed(datagrams[2])  # held, waiting for 1
    rx.feed(datagrams[1])
    rx.feed(datagrams[3])
    rx.feed(datagrams[1])
    assert rx.audio() == [(FRAME * i, i) for i in range(4)]
    assert rx.counts == {"audio": 4, "duplicate": 3}
    rx.assert_counted_once()


def test_srtp_replays() -> None:
    """With SRTP libsrtp's replay window refuses a packet it has seen, delivered or held,
    and one far behind it: ``replay``, delivered once."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(300))
    rx.feed(datagrams[0])
    rx.feed(datagrams[0])
    rx.feed(datagrams[2])
    rx.feed(datagrams[2])
    rx.feed(datagrams[1])
    for datagram in datagrams[3:300]:
        rx.feed(datagram)
    rx.feed(datagrams[10])  # far behind libsrtp's 128-packet window
    assert rx.audio() == [(FRAME * i, i) for i in range(300)]
    assert rx.counts == {"audio": 300, "replay": 3}
    rx.assert_counted_once()


def test_wrong_key_is_auth_failed() -> None:
    """A packet protected with another key is ``auth_failed``: not delivered, and it latches
    nothing (the right key's packets from anywhere are then taken)."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    forged = RtpSender(0, key=SrtpKey.generate())
    rx.feed(forged.packet(payload(0)), T0, OTHER)
    assert rx.source() is None
    assert rx.last_packet_at() is None
    rx.feed(RtpSender(0, key=key).packet(payload(1)), T0 + 0.02, PEER)
    unprotected = RtpSender(0, key=None, seq=1001, timestamp=50_160)
    rx.feed(unprotected.packet(payload(2)), T0 + 0.04, PEER)
    assert rx.audio() == [(0, 1)]
    assert rx.source() == PEER
    assert rx.counts == {"auth_failed": 2, "audio": 1}
    assert rx.timeline.origin == T0 + 0.02
    rx.assert_counted_once()


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x80",
        b"\x80\x00" + bytes(9),
        bytes(40),  # version 0
        b"\x40" + bytes(39),  # version 1
        b"\xc0" + bytes(39),  # version 3
        b"\xff" * 40,
    ],
)
def test_garbage_is_malformed(garbage: bytes, key: SrtpKey | None) -> None:
    """Too short for a header, or not version 2: ``malformed``, before anything else."""
    rx = Rx(key=key)
    assert rx.feed(garbage) == []
    assert rx.counts == {"malformed": 1}
    assert rx.source() is None


@pytest.mark.parametrize(
    "bad",
    [
        build_rtp(csrcs=[1, 2])[:16],
        build_rtp(extension=b"")[:13],
        bytes([0xA0]) + build_rtp(payload=b"ab")[1:] + b"\x00",
        bytes([0x90]) + build_rtp()[1:] + b"\x00\x00\x00\x09",
    ],
    ids=["csrc-cut", "extension-cut", "zero-padding", "extension-too-long"],
)
def test_version_2_garbage(bad: bytes, key: SrtpKey | None) -> None:
    """Version 2 that does not parse is ``malformed`` in plain RTP; with SRTP it does not
    authenticate first (``auth_failed``)."""
    rx = Rx(key=key)
    assert rx.feed(bad) == []
    assert rx.counts == {"auth_failed" if key else "malformed": 1}
    assert rx.source() is None


@pytest.mark.parametrize("packet_type", [200, 201, 202, 203, 204, 192, 223])
def test_rtcp_is_counted_not_delivered(packet_type: int, key: SrtpKey | None) -> None:
    """RTCP multiplexed onto the RTP port (second byte 192-223: SR 200, RR 201, SDES 202,
    BYE 203, APP 204) is ``rtcp``; it latches nothing, from any address."""
    rx = Rx(key=key)
    rtcp = bytes([0x80, packet_type]) + struct.pack("!H", 6) + bytes(24)
    assert rx.feed(rtcp, T0, OTHER) == []
    assert rx.source() is None
    rx.feed(RtpSender(0, key=key).packet(payload(0)), T0, PEER)
    assert rx.feed(rtcp, T0, OTHER) == []
    assert rx.counts == {"rtcp": 2, "audio": 1}
    rx.assert_counted_once()


@pytest.mark.parametrize(
    ("codec", "types", "refused", "taken"),
    [
        ("pcmu", None, [8, 9, 18, 96, 127, 72], [0]),
        ("pcma", None, [0, 96], [8]),
        ("opus", None, [0, 8, 95, 72], [96, 111, 127]),
        ("opus", PayloadTypes.for_codec("opus", opus=111), [96, 112, 0], [111]),
    ],
    ids=["pcmu", "pcma", "opus-any", "opus-pinned"],
)
def test_unexpected_payload_type(
    codec: str,
    types: PayloadTypes | None,
    refused: list[int],
    taken: list[int],
    key: SrtpKey | None,
) -> None:
    """A payload type that is not the call's audio, comfort noise or telephone events is
    ``unexpected_payload_type`` and latches nothing."""
    rx = Rx(codec=codec, key=key, payload_types=types)
    samples = 960 if codec == "opus" else FRAME
    body = OPUS_20MS if codec == "opus" else payload(0)
    sender = RtpSender(taken[0], key=key)
    for pt in refused:
        assert rx.feed(sender.packet(body, payload_type=pt, samples=samples), T0, OTHER) == []
    assert rx.source() is None
    for pt in taken:
        rx.feed(sender.packet(body, payload_type=pt, samples=samples), T0, PEER)
    assert [e.offset for e in rx.events if isinstance(e, Audio)] == [
        i * samples for i in range(len(taken))
    ]
    assert rx.counts == {"unexpected_payload_type": len(refused), "audio": len(taken)}
    assert rx.source() == PEER
    rx.assert_counted_once()


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        bytes([0xF9]) + b"\x00" * 3,  # code 1 with an odd length
        bytes([0xFA]),  # code 2 without its length byte
        bytes([0xFB]),  # code 3 without its count
        bytes([0xFB, 0x00]),  # code 3 with zero frames
        bytes([0xFB, 0x07]),  # 7 x 20 ms: over 120 ms
    ],
)
def test_opus_bad_payload(bad: bytes, key: SrtpKey | None) -> None:
    """An Opus payload that cannot be an Opus packet is ``bad_payload``, latches nothing,
    and the stream goes on around it."""
    rx = Rx(codec="opus", key=key)
    sender = RtpSender(96, key=key)
    assert rx.feed(sender.packet(bad, samples=960), T0, OTHER) == []
    assert rx.source() is None
    rx.feed(sender.packet(OPUS_20MS, samples=960), T0 + 0.02, PEER)
    assert rx.feed(sender.packet(bad, samples=960), T0 + 0.04, PEER) == []
    rx.feed(sender.packet(OPUS_20MS, samples=960), T0 + 0.06, PEER)  # waits for the gap
    rx.drain()
    assert [e.offset for e in rx.events if isinstance(e, Audio)] == [0, 1920]
    assert rx.counts == {"audio": 2, "bad_payload": 2}
    rx.assert_counted_once()


def test_opus_packets_placed_at_48_khz(key: SrtpKey | None) -> None:
    """Opus packets of different durations are placed by their 48 kHz timestamps."""
    rx = Rx(codec="opus", key=key)
    sender = RtpSender(111, key=key, timestamp=2**32 - 960)
    sixty = bytes([0xFB, 0x03]) + b"\x01" * 6  # code 3, three 20 ms frames
    ten = bytes([0xF0]) + b"\x01" * 10  # CELT FB 10 ms
    for body, samples in ((OPUS_20MS, 960), (sixty, 2880), (ten, 480), (OPUS_20MS, 960)):
        rx.feed(sender.packet(body, samples=samples))
    assert [e.offset for e in rx.events if isinstance(e, Audio)] == [0, 960, 3840, 4320]
    assert rx.counts == {"audio": 4}


def test_comfort_noise_is_counted_and_silent(key: SrtpKey | None) -> None:
    """Comfort noise (PT 13) is counted ``comfort_noise`` and yields no event; the audio
    after it lands at its timestamp, the gap left silent."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    for i in range(3):
        rx.feed(sender.packet(payload(i)))
    assert rx.feed(sender.packet(b"\x40", payload_type=13, samples=0)) == []
    sender.timestamp += 8000  # one second of silence, not sent
    assert rx.feed(sender.packet(b"\x40", payload_type=13, samples=0)) == []
    assert audio_of(rx.feed(sender.packet(payload(3)))) == [(480 + 8000, 3)]
    assert rx.counts == {"audio": 4, "comfort_noise": 2}
    assert not [e for e in rx.events if not isinstance(e, Audio)]
    rx.assert_counted_once()


# --- telephone events ----------------------------------------------------------------------


def send_event(sender: RtpSender, code: int, *, updates: int = 3) -> list[bytes]:
    """One RFC 4733 event: its updates (first with the marker) and its end packet three
    times, all with the event's start timestamp; then the timestamp moves on."""
    start = sender.timestamp
    datagrams = [
        sender.packet(
            dtmf_payload(code, duration=160 * (i + 1)),
            payload_type=101,
            marker=i == 0,
            timestamp=start,
            samples=0,
        )
        for i in range(updates)
    ]
    datagrams += [
        sender.packet(
            dtmf_payload(code, end=True, duration=160 * (updates + 1)),
            payload_type=101,
            timestamp=start,
            samples=0,
        )
        for _ in range(3)
    ]
    sender.timestamp = (start + 160 * (updates + 2)) % 2**32
    return datagrams


def test_telephone_events_become_one_dtmf_each(key: SrtpKey | None) -> None:
    """Each RFC 4733 event, however many packets and repeated end packets it takes, is one
    ``Dtmf`` on the receiver's track: codes 0-15 are 0-9 * # A-D. Every packet is counted
    ``telephone_event``; audio around the events keeps its place."""
    rx = Rx(key=key, track="outbound")
    sender = RtpSender(0, key=key)
    rx.feed(sender.packet(payload(0)))
    for code in range(16):
        for datagram in send_event(sender, code):
            rx.feed(datagram)
    end_of_events = sender.timestamp - 50_000
    rx.feed(sender.packet(payload(1)))
    digits = [e for e in rx.events if isinstance(e, Dtmf)]
    assert digits == [Dtmf(digit=d, track="outbound") for d in DTMF]
    assert rx.audio() == [(0, 0), (end_of_events, 1)]
    assert rx.counts == {"audio": 2, "telephone_event": 16 * 6}
    rx.assert_counted_once()


def test_telephone_event_seen_only_from_its_end(key: SrtpKey | None) -> None:
    """An event whose first packets were lost still gives its digit once, from its end
    packets; the same digit pressed twice (two events) gives two."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    first = send_event(sender, 5)
    second = send_event(sender, 5)
    for datagram in [first[0], *second[3:]]:
        rx.feed(datagram)
    rx.drain()
    assert [e for e in rx.events if isinstance(e, Dtmf)] == [Dtmf("5", "inbound")] * 2
    rx.assert_counted_once()


def test_telephone_events_that_are_not_digits(key: SrtpKey | None) -> None:
    """Events past the sixteen DTMF codes (16 is flash) and payloads too short for an event
    are counted ``telephone_event`` but give no ``Dtmf``."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    for datagram in send_event(sender, 16):
        rx.feed(datagram)
    rx.feed(sender.packet(b"\x01\x80", payload_type=101, samples=0))
    rx.feed(sender.packet(dtmf_payload(255), payload_type=101, samples=0))
    assert rx.events == []
    assert rx.counts == {"telephone_event": 8}


def test_telephone_event_type_can_be_moved() -> None:
    """With telephone events announced on 96, PT 96 gives digits and 101 is refused."""
    rx = Rx(payload_types=PayloadTypes.for_codec("pcmu", telephone_event=96))
    sender = RtpSender(0)
    rx.feed(sender.packet(dtmf_payload(11), payload_type=96, samples=0))
    rx.feed(sender.packet(dtmf_payload(1), payload_type=101, samples=0))
    assert rx.events == [Dtmf("#", "inbound")]
    assert rx.counts == {"telephone_event": 1, "unexpected_payload_type": 1}


# --- sources -------------------------------------------------------------------------------


def test_plain_rtp_latches_the_first_source_for_good() -> None:
    """Plain RTP: the first packet's address is the source; another address is
    ``unexpected_source`` even after long silence (anyone could send them)."""
    rx = Rx()
    sender = RtpSender(0)
    rx.feed(sender.packet(payload(0)), T0, PEER)
    for now in (T0 + 0.02, T0 + 1.0, T0 + 30.0):
        assert rx.feed(sender.packet(payload(1)), now, OTHER) == []
    assert rx.source() == PEER
    sender.seq -= 3
    sender.timestamp -= 3 * FRAME
    assert audio_of(rx.feed(sender.packet(payload(1)), T0 + 30.0, PEER)) == [(160, 1)]
    assert rx.counts == {"audio": 2, "unexpected_source": 3}
    rx.assert_counted_once()


def test_srtp_relatches_after_a_second_of_silence() -> None:
    """SRTP: another address is ``unexpected_source`` while the latched one was heard
    within ``RELATCH_AFTER_S``; after a second of silence an authenticated packet from it
    takes over, and the old address is then the stranger."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    datagrams = packets(RtpSender(0, key=key), range(4))
    rx.feed(datagrams[0], T0, PEER)
    assert rx.feed(datagrams[1], T0 + 0.5, OTHER) == []
    assert rx.feed(datagrams[1], T0 + 0.999, OTHER) == []
    assert rx.source() == PEER
    assert audio_of(rx.feed(datagrams[1], T0 + 1.0, OTHER)) == [(160, 1)]
    assert rx.source() == OTHER
    assert rx.feed(datagrams[2], T0 + 1.5, PEER) == []
    assert audio_of(rx.feed(datagrams[2], T0 + 1.52, OTHER)) == [(320, 2)]
    assert rx.counts == {"audio": 3, "unexpected_source": 3}
    rx.assert_counted_once()


def test_srtp_relatch_needs_a_fresh_authenticated_packet() -> None:
    """After the silence, a stranger's forged packet (``auth_failed``) or replay of a
    packet already received (``replay``) does not take the source over."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    first = sender.packet(payload(0))
    rx.feed(first, T0, PEER)
    forged = RtpSender(0, key=SrtpKey.generate(), seq=sender.seq, timestamp=sender.timestamp)
    assert rx.feed(forged.packet(payload(1)), T0 + 2, OTHER) == []
    assert rx.feed(first, T0 + 2, OTHER) == []
    assert rx.source() == PEER
    assert rx.last_packet_at() == T0
    assert rx.counts == {"audio": 1, "auth_failed": 1, "replay": 1}
    assert audio_of(rx.feed(sender.packet(payload(1)), T0 + 2, PEER)) == [(160, 1)]


def test_ssrc_change_needs_two_sequential_packets(key: SrtpKey | None) -> None:
    """A new SSRC is on probation until ``MIN_SEQUENTIAL`` packets in sequence; then what
    the old source held is delivered, the new one is anchored by the call's clock (never
    before the track's end) and its probation packets are delivered and counted; the old
    SSRC is then ``stale_source`` while the new one keeps sending."""
    assert MIN_SEQUENTIAL == 2
    rx = Rx(key=key)
    old = RtpSender(0, key=key, ssrc=0xA, seq=100, timestamp=1_000)
    new = RtpSender(0, key=key, ssrc=0xB, seq=7_000, timestamp=999_999)
    for i in range(5):
        rx.feed(old.packet(payload(i)), T0 + i * 0.02)
    rx.feed(old.packet(payload(5)), T0 + 0.1)
    old.seq += 1  # 6 lost
    old.timestamp += FRAME
    rx.feed(old.packet(payload(7)), T0 + 0.125)  # held behind the gap
    assert rx.feed(new.packet(payload(100)), T0 + 0.5) == []
    assert len(rx.outcomes) == 6  # the probation packet is not counted yet
    events = rx.feed(new.packet(payload(101)), T0 + 0.5)
    assert audio_of(events) == [(7 * FRAME, 7), (4000, 100), (4160, 101)]
    assert rx.feed(old.packet(payload(8)), T0 + 0.5625) == []
    assert audio_of(rx.feed(new.packet(payload(102)), T0 + 0.5625)) == [(4320, 102)]
    assert rx.counts == {"audio": 10, "stale_source": 1}
    rx.assert_counted_once()


def test_new_source_anchored_after_what_the_track_holds() -> None:
    """A new SSRC whose arrival time is before the end of the track's audio starts at that
    end, not over it."""
    rx = Rx()
    old = RtpSender(0, ssrc=0xA)
    new = RtpSender(0, ssrc=0xB, timestamp=7)
    rx.feed(old.packet(payload(0, size=8000)), T0)  # one second in one packet
    rx.feed(new.packet(payload(1)), T0 + 0.25)
    assert audio_of(rx.feed(new.packet(payload(2)), T0 + 0.25)) == [(8000, 1), (8160, 2)]


def test_probation_restarts_on_a_gap(key: SrtpKey | None) -> None:
    """A would-be source whose packets are not in sequence starts its probation again; the
    packets it gave up are ``stale_source``; a different would-be source also resets it."""
    rx = Rx(key=key)
    current = RtpSender(0, key=key, ssrc=0xA)
    rx.feed(current.packet(payload(0)), T0)
    b = RtpSender(0, key=key, ssrc=0xB, seq=500)
    c = RtpSender(0, key=key, ssrc=0xC, seq=900)
    rx.feed(b.packet(payload(10)), T0 + 0.5)
    b.seq += 1
    b.timestamp += FRAME
    assert rx.feed(b.packet(payload(12)), T0 + 0.5) == []  # not in sequence: restart
    assert rx.feed(c.packet(payload(20)), T0 + 0.5) == []  # another would-be source
    assert rx.feed(b.packet(payload(13)), T0 + 0.5) == []  # b again, from scratch
    assert rx.counts == {"audio": 1, "stale_source": 3}
    assert audio_of(rx.feed(b.packet(payload(14)), T0 + 0.5)) == [(4000, 13), (4160, 14)]
    assert rx.counts == {"audio": 3, "stale_source": 3}
    rx.assert_counted_once()


def test_lone_probation_packet_is_counted() -> None:
    """A packet from a stray SSRC that never sends a second one is still counted once
    (``stale_source``) by the time the call ends: ``drain`` gives the candidate up."""
    rx = Rx()
    a = RtpSender(0, ssrc=0xA)
    stray = RtpSender(0, ssrc=0xB)
    rx.feed(a.packet(payload(0)), T0)
    rx.feed(stray.packet(payload(50)), T0 + 0.02)
    rx.feed(a.packet(payload(1)), T0 + 0.04)
    rx.drain()
    assert rx.audio() == [(0, 0), (160, 1)]
    assert rx.counts == {"audio": 2, "stale_source": 1}
    rx.assert_counted_once()


def test_old_ssrc_may_return_after_a_second_of_silence(key: SrtpKey | None) -> None:
    """A replaced SSRC is ``stale_source`` while the new one was heard within a second;
    once the new one has been silent for a second the old one can come back (with its own
    probation) and is re-anchored by the call's clock."""
    rx = Rx(key=key)
    a = RtpSender(0, key=key, ssrc=0xA)
    b = RtpSender(0, key=key, ssrc=0xB)
    rx.feed(a.packet(payload(0)), T0)
    rx.feed(b.packet(payload(1)), T0 + 0.25)
    rx.feed(b.packet(payload(2)), T0 + 0.25)
    assert rx.feed(a.packet(payload(3)), T0 + 1.0) == []  # b heard 0.75 s ago
    assert rx.feed(a.packet(payload(4)), T0 + 1.25) == []  # b heard 1 s ago: probation
    assert audio_of(rx.feed(a.packet(payload(5)), T0 + 1.25)) == [(10_000, 4), (10_160, 5)]
    assert rx.feed(b.packet(payload(6)), T0 + 1.5) == []  # now b is the stale one
    assert rx.audio() == [(0, 0), (2000, 1), (2160, 2), (10_000, 4), (10_160, 5)]
    assert rx.counts == {"audio": 5, "stale_source": 2}
    rx.assert_counted_once()


# --- sequence restarts and timestamp jumps ---------------------------------------------------


def test_sequence_jump_of_max_dropout_restarts_numbering(key: SrtpKey | None) -> None:
    """A sequence number 3000 or more ahead is ``out_of_sequence`` alone; the next packet in
    sequence after it shows the sender restarted its numbering: from there packets are
    delivered at their timestamps, and the old numbering is refused (``out_of_sequence``;
    with SRTP libsrtp finds it too old first: ``replay``)."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, seq=100)
    datagrams = packets(sender, range(6))
    for datagram in datagrams[:5]:
        rx.feed(datagram)
    sender.seq = 105 + 3000
    sender.timestamp -= FRAME  # where datagrams[5] was
    assert rx.feed(sender.packet(payload(5))) == []
    assert audio_of(rx.feed(sender.packet(payload(6)))) == [(960, 6)]
    assert rx.feed(datagrams[5]) == []
    # The old numbering is far behind now: out of sequence again (SRTP: too old first).
    old = {"replay": 1, "out_of_sequence": 1} if key else {"out_of_sequence": 2}
    assert rx.counts == {"audio": 6, **old}
    rx.assert_counted_once()


def test_sequence_jump_below_max_dropout_is_a_gap(key: SrtpKey | None) -> None:
    """A sequence number 2999 ahead is a gap waited for like any other."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, seq=100)
    for datagram in packets(sender, range(5)):
        rx.feed(datagram)
    sender.seq += 2999
    assert rx.feed(sender.packet(payload(5))) == []
    assert rx.deadline() == T0 + 0.06
    assert audio_of(rx.poll(T0 + 0.06)) == [(800, 5)]
    rx.assert_counted_once()


def test_a_stray_far_sequence_does_not_silence_the_stream() -> None:
    """Plain RTP: one packet of the current SSRC with a sequence number far ahead (a
    corrupted or spoofed datagram) is ``out_of_sequence``; the real stream goes on without
    losing a packet, each at its own offset."""
    rx = Rx()
    sender = RtpSender(0, seq=100)
    for datagram in packets(sender, range(5)):
        rx.feed(datagram)
    stray = RtpSender(0, seq=(sender.seq + 5000) % 65_536, timestamp=sender.timestamp + 8)
    rx.feed(stray.packet(payload(99)))
    for datagram in packets(sender, range(5, 20)):
        rx.feed(datagram)
    rx.drain()
    assert rx.audio() == [(FRAME * i, i) for i in range(20)]
    assert rx.counts == {"audio": 20, "out_of_sequence": 1}
    rx.assert_counted_once()


def test_two_packets_in_sequence_far_behind_restart_the_numbering() -> None:
    """Plain RTP: a sender that restarts its numbering far (more than ``MAX_MISORDER``)
    behind loses the first packet (``out_of_sequence``: it could be a stray old one) and is followed
    from the second on, at its timestamps; a stream half that far behind is only refused
    (a burst of old packets, not a restart)."""
    rx = Rx()
    sender = RtpSender(0, seq=1_000)
    for datagram in packets(sender, range(200)):
        rx.feed(datagram)
    sender.seq = 1_199 - MAX_MISORDER - 50  # well behind the last one delivered
    assert rx.feed(sender.packet(payload(200))) == []
    assert audio_of(rx.feed(sender.packet(payload(201)))) == [(201 * FRAME, 201)]
    assert audio_of(rx.feed(sender.packet(payload(202)))) == [(202 * FRAME, 202)]
    assert rx.counts == {"audio": 202, "out_of_sequence": 1}
    near = Rx()
    sender = RtpSender(0, seq=1_000)
    for datagram in packets(sender, range(200)):
        near.feed(datagram)
    sender.seq = 1_199 - MAX_MISORDER // 2
    for number in range(200, 210):
        assert near.feed(sender.packet(payload(number))) == []
    assert near.counts == {"audio": 200, "duplicate": 10}  # those numbers were delivered


def test_srtp_refuses_a_numbering_restart_far_behind() -> None:
    """SRTP: a sender may not restart its numbering behind under the same key; libsrtp
    finds the packets too old (``replay``) before the receiver would see a restart."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, seq=1_000)
    for datagram in packets(sender, range(200)):
        rx.feed(datagram)
    restarted = RtpSender(0, key=key, seq=1_000, timestamp=sender.timestamp)
    for number in range(200, 203):
        assert rx.feed(restarted.packet(payload(number))) == []
    assert rx.counts == {"audio": 200, "replay": 3}


@pytest.mark.parametrize(
    ("jump", "expected"),
    [
        (0, 800),
        (8_000, 8_800),  # a second of silence: exact
        (-800, 0),  # back by exactly MAX_BACKSTEP_S: placed where it says (overlap)
        (-801, 16_000),  # further back: re-anchored by the clock
        (-50_000, 16_000),
        (55_200, 56_000),  # MAX_AHEAD_S (5 s) past the call's clock (2 s): exact
        (55_201, 16_000),  # further ahead: re-anchored by the clock
        (4_800_000, 16_000),  # ten minutes ahead within a moment: re-anchored
        (2**31 - 1, 16_000),
    ],
)
def test_timestamp_jumps(jump: int, expected: int, key: SrtpKey | None) -> None:
    """A timestamp up to 0.1 s behind the track's end, or up to MAX_AHEAD_S past the call's
    clock (here 2 s in), places the packet exactly; beyond either the source is re-anchored
    by the call's clock and the packets after it follow from there."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key, timestamp=100_000)
    for i, datagram in enumerate(packets(sender, range(5))):
        rx.feed(datagram, T0 + i * 0.02)
    sender.timestamp = (sender.timestamp + jump) % 2**32
    assert audio_of(rx.feed(sender.packet(payload(5)), T0 + 2.0)) == [(expected, 5)]
    assert audio_of(rx.feed(sender.packet(payload(6)), T0 + 2.02)) == [(expected + 160, 6)]
    rx.assert_counted_once()


def test_offsets_are_never_negative() -> None:
    """A packet whose timestamp steps back a little (within ``MAX_BACKSTEP_S``) just after
    the call's first packet must not land before sample 0 of the call's timeline (it is
    re-anchored instead)."""
    rx = Rx()
    sender = RtpSender(0, timestamp=10_000)
    rx.feed(sender.packet(payload(0)), T0)
    rx.feed(sender.packet(payload(1), timestamp=10_000 - 400), T0 + 0.02)
    offsets = [offset for offset, _ in rx.audio()]
    assert len(offsets) == 2
    assert min(offsets) >= 0, offsets


def test_reanchor_never_goes_before_the_track_end() -> None:
    """A re-anchor whose clock time is before the end of the track's audio (long packets
    sent ahead of real time) starts at that end."""
    rx = Rx()
    sender = RtpSender(0)
    rx.feed(sender.packet(payload(0, size=16_000)), T0)  # 2 s of audio at once
    sender.timestamp -= 20_000  # back 2.5 s
    assert audio_of(rx.feed(sender.packet(payload(1)), T0 + 0.5)) == [(16_000, 1)]


def test_timestamps_cannot_ratchet_the_track_ahead_of_the_clock(key: SrtpKey | None) -> None:
    """Packets 20 ms apart whose timestamps each jump MAX_AHEAD_S (5 s): the first jump lands
    exactly (it is within 5 s of the call's clock), the later ones are re-anchored at the
    track's end. Found by fuzzing (tests/fuzz/rtp.py): the bound was measured from the
    track's end as well as the clock, so each packet could land 5 s past the last one and
    four packets in 60 ms made a 15-second track."""
    rx = Rx(key=key)
    sender = RtpSender(0, key=key)
    for i in range(4):
        rx.feed(sender.packet(payload(i), samples=40_000), T0 + i * 0.02)
    assert rx.audio() == [(0, 0), (40_000, 1), (40_160, 2), (40_320, 3)]
    rx.assert_counted_once()


def test_an_srtp_datagram_over_1500_bytes_is_malformed() -> None:
    """pylibsrtp unprotects at most 1500 bytes and raises ValueError for more: such a
    datagram is counted ``malformed`` and the receiver raises nothing (found by fuzzing,
    tests/fuzz/srtp.py; the glue logged a traceback for each such datagram). 1500 bytes
    still reach libsrtp, which refuses the forgery."""
    key = SrtpKey.generate()
    rx = Rx(key=key)
    rx.feed(RtpSender(0, key=key).packet(payload(0)))
    assert rx.feed(b"\x80\x00" + bytes(MAX_SRTP_PACKET - 1)) == []
    assert rx.feed(b"\x80\x00" + bytes(MAX_SRTP_PACKET - 2)) == []
    assert rx.counts == {"audio": 1, "malformed": 1, "auth_failed": 1}
    rx.assert_counted_once()


@pytest.mark.parametrize(("codec", "rate"), [("pcmu", 8_000), ("opus", 48_000)])
def test_tracks_share_the_timeline(codec: str, rate: int) -> None:
    """Two tracks on one ``Timeline``: the call's first packet is sample 0 whichever track
    it came on; the other track's first packet is anchored by its arrival time,
    ``(now - origin) * rate``; each then follows its own timestamps."""
    timeline = Timeline(rate)
    inbound = Rx(codec=codec, timeline=timeline, track="inbound")
    outbound = Rx(codec=codec, timeline=timeline, track="outbound")
    body, samples = (OPUS_20MS, 960) if codec == "opus" else (payload(0), FRAME)
    pt = 111 if codec == "opus" else 0
    a = RtpSender(pt, ssrc=1, timestamp=5)
    b = RtpSender(pt, ssrc=2, timestamp=3_000_000_000)
    inbound.feed(a.packet(body, samples=samples), T0)
    outbound.feed(b.packet(body, samples=samples), T0 + 0.25)
    inbound.feed(a.packet(body, samples=samples), T0 + 0.3)
    outbound.feed(b.packet(body, samples=samples), T0 + 0.3)
    assert timeline.origin == T0
    assert [e.offset for e in inbound.events if isinstance(e, Audio)] == [0, samples]
    assert [e.offset for e in outbound.events if isinstance(e, Audio)] == [
        rate // 4,
        rate // 4 + samples,
    ]
    assert {e.track for e in outbound.events if isinstance(e, Audio)} == {"outbound"}


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 80),
    first_seq=st.integers(0, 65_535),
    first_ts=st.integers(0, 2**32 - 1),
    srtp=st.booleans(),
    window=st.integers(0, 12),
    data=st.data(),
)
def test_reorder_duplicate_drop_property(
    count: int, first_seq: int, first_ts: int, srtp: bool, window: int, data: st.DataObject
) -> None:
    """N packets shuffled (each moved back by up to ``window`` places), some dropped, some
    repeated: offsets strictly increase and are each packet's timestamp place, no payload
    comes out twice, the outcomes add up to the datagrams fed, and when no packet can be
    overtaken by more than the reorder depth (``window <= depth + 1``: a packet overtaken
    by ``window - 1`` later ones at most) every packet not dropped comes out exactly once.
    The first packet arrives first: it sets where the sequence starts."""
    depth = 5
    key = SrtpKey.generate() if srtp else None
    sender = RtpSender(0, key=key, seq=first_seq, timestamp=first_ts)
    datagrams = [sender.packet(payload(i, size=8), samples=FRAME) for i in range(count)]
    jitter = data.draw(st.lists(st.integers(0, window), min_size=count, max_size=count))
    dropped = data.draw(st.sets(st.integers(1, max(count - 1, 1)), max_size=count // 3))
    dropped.discard(0)  # the first packet sets the sequence base: it arrives first
    kept = [i for i in range(count) if i not in dropped]
    order = sorted(kept, key=lambda i: (0 if i == 0 else i + jitter[i], i))
    repeats = data.draw(
        st.lists(st.tuples(st.sampled_from(kept), st.integers(0, count + 5)), max_size=10)
    )
    arrivals = list(order)
    for number, after in repeats:
        position = max(arrivals.index(number) + 1, min(after, len(arrivals)))
        arrivals.insert(position, number)

    rx = Rx(key=key, depth=depth)
    for number in arrivals:
        rx.feed(datagrams[number])
    rx.drain()

    delivered = rx.audio()
    numbers = [number for _, number in delivered]
    assert len(numbers) == len(set(numbers))
    assert set(numbers) <= set(kept)
    assert numbers == sorted(numbers)
    assert [offset for offset, _ in delivered] == [number * FRAME for number in numbers]
    rx.assert_counted_once()
    assert rx.counts["audio"] == len(numbers)
    refused = rx.counts - Counter(audio=len(numbers))
    assert set(refused) <= {"duplicate", "late", "replay"}
    assert sum(refused.values()) == len(arrivals) - len(numbers)
    if window <= depth + 1:
        assert numbers == kept
        if srtp:  # libsrtp refuses every repeat before the reorder buffer sees it
            assert refused == Counter(replay=len(repeats))


PACKET_TYPES = st.sampled_from([0, 0, 0, 8, 13, 101, 96, 127, 72])


@st.composite
def datagrams_of_one_ssrc(draw: st.DrawFn, key: SrtpKey | None) -> tuple[bytes, float, bool]:
    """A datagram that could arrive on a port: RTP of the one SSRC with any sequence,
    timestamp, payload type and payload (protected or forged under SRTP), RTCP, or bytes
    that are not version 2; with its arrival time step and whether it is from the peer."""
    kind = draw(st.sampled_from(["rtp", "rtp", "rtp", "rtcp", "junk", "forged"]))
    if kind == "junk":
        junk = draw(st.binary(max_size=60))
        datagram = bytes([junk[0] & 0x7F]) + junk[1:] if junk else junk
    elif kind == "rtcp":
        datagram = bytes([0x80, draw(st.integers(200, 204))]) + draw(st.binary(max_size=30))
    else:
        sender = RtpSender(
            draw(PACKET_TYPES),
            key=key if kind == "rtp" else (SrtpKey.generate() if key else None),
            ssrc=0x5EED,
            seq=draw(st.integers(0, 65_535)),
            timestamp=draw(st.integers(0, 2**32 - 1)),
        )
        datagram = sender.packet(draw(st.binary(max_size=200)), marker=draw(st.booleans()))
    return datagram, draw(st.sampled_from([0.0, 0.001, 0.02, 0.5, 1.5])), draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(srtp=st.booleans(), codec=st.sampled_from(["pcmu", "opus"]), data=st.data())
def test_receiver_never_raises_and_counts_each_datagram(
    srtp: bool, codec: str, data: st.DataObject
) -> None:
    """Whatever one SSRC (or a stranger) sends, the receiver returns events and never
    raises; every datagram is counted exactly once with a known label; no Audio starts
    more than ``MAX_BACKSTEP_S`` before the end of the one before it."""
    key = SrtpKey.generate() if srtp else None
    rx = Rx(codec=codec, key=key)
    now = T0
    for _ in range(data.draw(st.integers(0, 30))):
        datagram, step, from_peer = data.draw(datagrams_of_one_ssrc(key))
        now += step
        rx.feed(datagram, now, PEER if from_peer else OTHER)
        if data.draw(st.booleans()):
            rx.poll(now)
    rx.drain(now + 1)
    rx.assert_counted_once()
    assert all(isinstance(e, Audio | Dtmf) for e in rx.events)
    backstep = round(MAX_BACKSTEP_S * rx.timeline.rate)
    end = 0
    for event in rx.events:
        if isinstance(event, Audio):
            assert event.offset is not None
            assert event.offset >= end - backstep
            end = event.offset + CODECS[codec].frames(event.payload)
