"""AudioSocketParser and the frame encoders: Asterisk AudioSocket byte streams in, events out."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import IngestError, MalformedMessage, StreamRefused
from gateway.ingest.audiosocket import (
    KIND_AUDIO,
    KIND_DTMF,
    KIND_ERROR,
    KIND_HANGUP,
    KIND_UUID,
    AudioSocketParser,
    audio_frame,
    dtmf_frame,
    encode_frame,
    error_frame,
    hangup_frame,
    uuid_frame,
)
from gateway.ingest.events import Audio, Dtmf, Event, StreamStart, StreamStop

CALL = "7b6f8a4e-2c1d-4e5f-9a8b-0c1d2e3f4a5b"
"""The AudioSocket id of the call (minted by the gateway at its announcement)."""


def start_event(audiosocket_id: str = CALL) -> StreamStart:
    """The id is the stream's credential: it travels as the token, never as the call id."""
    return StreamStart(
        call_id=None,
        stream_id=None,
        token=audiosocket_id,
        parameters={},
        codec="l16",
        sample_rate=8000,
        channels=1,
        tracks=("inbound",),
    )


def audio(payload: bytes) -> Audio:
    return Audio(track="inbound", payload=payload, timestamp_ms=None, sequence=None)


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


CHUNKS = [pcm(*range(-80, 80)), pcm(32767, -32768, 0, 1), b""]
SESSION = (
    uuid_frame(CALL)
    + b"".join(audio_frame(c) for c in CHUNKS)
    + dtmf_frame("7")
    + audio_frame(pcm(5))
    + hangup_frame()
)
SESSION_EVENTS: list[Event] = [
    start_event(),
    *(audio(c) for c in CHUNKS),
    Dtmf("7", None),
    audio(pcm(5)),
    StreamStop("hangup"),
]


def refused(
    parser: AudioSocketParser, data: bytes, cls: type[IngestError], code: str
) -> IngestError:
    with pytest.raises(cls) as failed:
        parser.feed(data)
    assert type(failed.value) is cls
    assert failed.value.code == code
    return failed.value


def started() -> AudioSocketParser:
    parser = AudioSocketParser()
    assert parser.feed(uuid_frame(CALL)) == [start_event()]
    return parser


# --- good paths ---------------------------------------------------------------------------


def test_session_in_one_feed() -> None:
    parser = AudioSocketParser()
    assert parser.feed(SESSION) == SESSION_EVENTS
    assert parser.pending() == 0


def test_the_id_is_the_start_events_token_and_stays_out_of_its_repr() -> None:
    (start,) = AudioSocketParser().feed(uuid_frame(CALL))
    assert isinstance(start, StreamStart)
    assert (start.call_id, start.token) == (None, CALL)
    assert CALL not in repr(start)


def test_session_split_at_every_byte_boundary_parses_the_same() -> None:
    for cut in range(len(SESSION) + 1):
        parser = AudioSocketParser()
        events = parser.feed(SESSION[:cut]) + parser.feed(SESSION[cut:])
        assert events == SESSION_EVENTS, cut
        assert parser.pending() == 0


def test_session_fed_byte_by_byte_parses_the_same() -> None:
    parser = AudioSocketParser()
    events = [e for i in range(len(SESSION)) for e in parser.feed(SESSION[i : i + 1])]
    assert events == SESSION_EVENTS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(SESSION)), max_size=12))
def test_session_split_anywhere_parses_the_same(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SESSION)]
    parser = AudioSocketParser()
    events = [
        e for a, b in zip(bounds, bounds[1:], strict=False) for e in parser.feed(SESSION[a:b])
    ]
    assert events == SESSION_EVENTS


def test_pending_counts_the_bytes_of_an_incomplete_frame() -> None:
    parser = started()
    frame = audio_frame(pcm(1, 2, 3))
    assert parser.feed(frame[:2]) == []
    assert parser.pending() == 2
    assert parser.feed(frame[2:5]) == []
    assert parser.pending() == 5
    assert parser.feed(frame[5:] + frame[:1]) == [audio(pcm(1, 2, 3))]
    assert parser.pending() == 1


def test_peer_error_frame_stops_the_stream() -> None:
    parser = started()
    assert parser.feed(encode_frame(KIND_ERROR, b"\x02")) == [StreamStop("client_error")]
    assert parser.pending() == 0


def test_peer_error_frame_without_payload() -> None:
    assert started().feed(encode_frame(KIND_ERROR)) == [StreamStop("client_error")]


def test_biggest_audio_frame_is_accepted() -> None:
    payload = bytes(range(256)) * 255 + bytes(254)  # 65534 bytes: even and < 2**16
    assert started().feed(audio_frame(payload)) == [audio(payload)]


# --- encoders -----------------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    assert encode_frame(KIND_AUDIO, b"\x01\x02") == b"\x10\x00\x02\x01\x02"
    assert encode_frame(KIND_HANGUP) == b"\x00\x00\x00"
    assert hangup_frame() == b"\x00\x00\x00"
    assert uuid_frame(CALL) == b"\x01\x00\x10" + uuid.UUID(CALL).bytes
    assert dtmf_frame("#") == b"\x03\x00\x01#"
    assert error_frame("bad_frame_length") == b"\xff\x00\x10bad_frame_length"
    assert len(encode_frame(KIND_AUDIO, bytes(300))) == 303
    assert encode_frame(KIND_AUDIO, bytes(300))[1:3] == b"\x01\x2c"  # big-endian length


def test_encoders_round_trip_through_the_parser() -> None:
    call = uuid.uuid4()
    parser = AudioSocketParser()
    # Any spelling uuid.UUID reads comes back in the canonical form.
    stream = uuid_frame(call.hex.upper()) + audio_frame(pcm(-1, 1)) + dtmf_frame("D")
    assert parser.feed(stream) == [start_event(str(call)), audio(pcm(-1, 1)), Dtmf("D", None)]
    assert parser.feed(error_frame("stream_refused")) == [StreamStop("client_error")]


@settings(max_examples=100, deadline=None)
@given(st.uuids(), st.lists(st.binary(max_size=400).map(lambda b: b[: len(b) // 2 * 2])))
def test_encoders_round_trip_property(call: uuid.UUID, chunks: list[bytes]) -> None:
    parser = AudioSocketParser()
    stream = uuid_frame(str(call)) + b"".join(map(audio_frame, chunks)) + hangup_frame()
    assert parser.feed(stream) == [
        start_event(str(call)),
        *map(audio, chunks),
        StreamStop("hangup"),
    ]


@pytest.mark.parametrize(
    "encode",
    [
        lambda: encode_frame(256),
        lambda: encode_frame(-1),
        lambda: encode_frame(KIND_AUDIO, bytes(65536)),
        lambda: audio_frame(b"\x00"),
        lambda: uuid_frame("not-a-uuid"),
        lambda: dtmf_frame("x"),
        lambda: error_frame("é"),
    ],
)
def test_encoders_refuse_what_cannot_be_framed(encode: object) -> None:
    with pytest.raises(ValueError):
        encode()  # type: ignore[operator]


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        audio_frame(pcm(1)),
        dtmf_frame("1"),
        hangup_frame(),
        error_frame("x"),
        audio_frame(pcm(1))[:3],  # the header alone is enough to refuse
    ],
)
def test_frames_before_the_uuid_are_refused(frame: bytes) -> None:
    error = refused(AudioSocketParser(), frame, StreamRefused, "stream_not_started")
    assert error.close_code == 1008


def test_second_uuid_is_refused() -> None:
    refused(started(), uuid_frame(CALL), MalformedMessage, "duplicate_start")


@pytest.mark.parametrize("length", [0, 15, 17, 36])
def test_uuid_payload_must_be_16_bytes(length: int) -> None:
    frame = encode_frame(KIND_UUID, bytes(length))
    error = refused(AudioSocketParser(), frame, MalformedMessage, "bad_frame_length")
    assert f"{length}-byte payload, not 16 bytes" in error.message


def test_uuid_as_text_is_refused() -> None:
    frame = encode_frame(KIND_UUID, CALL.encode())
    refused(AudioSocketParser(), frame, MalformedMessage, "bad_frame_length")


@pytest.mark.parametrize("length", [1, 3, 321, 65535])
def test_audio_of_odd_length_is_refused_from_its_header(length: int) -> None:
    header = encode_frame(KIND_AUDIO, bytes(length))[:3]
    error = refused(started(), header, MalformedMessage, "bad_frame_length")
    assert "odd payload length" in error.message


@pytest.mark.parametrize(
    ("kind", "payload"),
    [(KIND_HANGUP, b"\x00"), (KIND_DTMF, b""), (KIND_DTMF, b"12")],
)
def test_fixed_size_frames_must_have_their_size(kind: int, payload: bytes) -> None:
    refused(started(), encode_frame(kind, payload), MalformedMessage, "bad_frame_length")


@pytest.mark.parametrize("digit", [b"x", b"\x00", b"\xff", b"a"])
def test_dtmf_must_be_a_dtmf_symbol(digit: bytes) -> None:
    refused(started(), encode_frame(KIND_DTMF, digit), MalformedMessage, "bad_digit")


@pytest.mark.parametrize("kind", [0x02, 0x04, 0x11, 0x12, 0x7F, 0xFE])
def test_unknown_frame_types_are_refused(kind: int) -> None:
    for parser in (AudioSocketParser(), started()):
        error = refused(parser, bytes((kind, 0, 0)), MalformedMessage, "unknown_frame_type")
        assert f"0x{kind:02x}" in error.message


@pytest.mark.parametrize("stop", [hangup_frame(), error_frame("x")])
def test_anything_after_the_stream_ended_is_refused(stop: bytes) -> None:
    parser = started()
    assert len(parser.feed(stop)) == 1
    assert parser.feed(b"") == []
    refused(parser, b"\x10", MalformedMessage, "stream_stopped")


def test_data_after_hangup_in_the_same_feed_is_refused() -> None:
    refused(AudioSocketParser(), SESSION + audio_frame(pcm(1)), MalformedMessage, "stream_stopped")


def test_error_messages_number_the_frame() -> None:
    error = refused(
        started(), audio_frame(pcm(1)) + b"\x02\x00\x00", MalformedMessage, "unknown_frame_type"
    )
    assert error.message.endswith("(frame 3)")


def test_a_failed_parser_keeps_failing() -> None:
    parser = started()
    first = refused(parser, b"\x42\x00\x00", MalformedMessage, "unknown_frame_type")
    with pytest.raises(MalformedMessage) as again:
        parser.feed(audio_frame(pcm(1)))
    assert again.value is first
    with pytest.raises(MalformedMessage):
        parser.feed(b"")


# --- fuzz ---------------------------------------------------------------------------------

frames = st.one_of(
    st.binary(max_size=6).map(lambda b: b[: len(b) // 2 * 2]).map(audio_frame),
    st.sampled_from("0123456789*#ABCD").map(dtmf_frame),
    st.just(hangup_frame()),
    st.binary(max_size=3).map(lambda b: encode_frame(KIND_ERROR, b)),
    st.uuids().map(lambda u: uuid_frame(str(u))),
    st.tuples(
        st.sampled_from([KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR])
        | st.integers(0, 255),
        st.binary(max_size=20),
    ).map(lambda t: encode_frame(*t)),
    st.binary(max_size=5),
)


def outcome(parser: AudioSocketParser, pieces: list[bytes]) -> tuple[list[Event], str | None]:
    events: list[Event] = []
    for piece in pieces:
        try:
            events += parser.feed(piece)
        except IngestError as e:
            return events, e.code
    return events, None


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.lists(frames, max_size=8),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_fuzz_only_ingest_errors_and_split_does_not_matter(
    open_with_uuid: bool, parts: list[bytes], cuts: list[int]
) -> None:
    stream = (uuid_frame(CALL) if open_with_uuid else b"") + b"".join(parts)
    whole = AudioSocketParser()
    events, code = outcome(whole, [stream])
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    split = AudioSocketParser()
    split_events, split_code = outcome(
        split, [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    )
    # Byte by byte, every frame before a bad one is delivered: the reference for the events.
    bytewise_events, bytewise_code = outcome(AudioSocketParser(), [bytes((b,)) for b in stream])
    assert split_code == code == bytewise_code
    if code is None:
        assert split_events == events == bytewise_events
        assert split.pending() == whole.pending()
    else:
        # A feed that raises returns nothing, so the whole-stream feed lost its events; the
        # split one delivered a prefix of the same events before the error.
        assert events == []
        assert split_events == bytewise_events[: len(split_events)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=6))
def test_fuzz_random_bytes_raise_only_ingest_errors(pieces: list[bytes]) -> None:
    for parser in (AudioSocketParser(), started()):
        outcome(parser, pieces)
