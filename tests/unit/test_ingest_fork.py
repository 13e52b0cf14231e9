"""ForkParser: mod_audio_fork / jambonz listen frames in, ingest events out."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import IngestError, MalformedMessage, MessageTooBig, StreamRefused
from gateway.ingest.events import MAX_MESSAGE, Audio, Dtmf, StreamStart, StreamStop
from gateway.ingest.fork import ForkParser

TOKEN = "cvt_pbx_Qm3vX8rT2kL9wZ4nB7yH5sJd"


def pcm(*samples: int) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def started(**metadata: Any) -> ForkParser:
    parser = ForkParser()
    [start] = parser.receive_text(json.dumps({"call_id": "c-1", **metadata}))
    assert isinstance(start, StreamStart)
    return parser


def refused_text(parser: ForkParser, text: str, cls: type[IngestError], code: str) -> IngestError:
    with pytest.raises(cls) as failed:
        parser.receive_text(text)
    assert type(failed.value) is cls
    assert failed.value.code == code
    return failed.value


def refused_bytes(
    parser: ForkParser, data: bytes, cls: type[IngestError], code: str
) -> IngestError:
    with pytest.raises(cls) as failed:
        parser.receive_bytes(data)
    assert type(failed.value) is cls
    assert failed.value.code == code
    return failed.value


# --- good paths ---------------------------------------------------------------------------


def test_mono_session() -> None:
    parser = ForkParser()
    metadata = {
        "call_id": "c-7",
        "token": TOKEN,
        "from": "+40211234567",
        "to": "+40721234567",
        "direction": "outbound",
        "consent": "granted",
        "sample_rate": 16000,
        "channels": 1,
        "extra": {"anything": [1, 2]},
    }
    chunk = pcm(0, 1, -1, 32767, -32768, 256)
    events = [
        *parser.receive_text(json.dumps(metadata)),
        *parser.receive_bytes(chunk),
        *parser.receive_text(json.dumps({"event": "dtmf", "digit": "5"})),
        *parser.receive_bytes(b""),
        *parser.receive_text(json.dumps({"event": "stop"})),
    ]
    assert events == [
        StreamStart(
            call_id="c-7",
            stream_id=None,
            token=TOKEN,
            parameters={
                "from": "+40211234567",
                "to": "+40721234567",
                "direction": "outbound",
                "consent": "granted",
            },
            codec="l16",
            sample_rate=16000,
            channels=1,
            tracks=("inbound",),
        ),
        Audio(track="inbound", payload=chunk, timestamp_ms=None, sequence=None),
        Dtmf(digit="5", track=None),
        Audio(track="inbound", payload=b"", timestamp_ms=None, sequence=None),
        StreamStop("stop"),
    ]
    start = events[0]
    assert isinstance(start, StreamStart)
    assert "token" not in start.parameters
    assert TOKEN not in repr(start)


def test_stereo_frames_are_deinterleaved_sample_exact() -> None:
    parser = started(channels=2)
    caller = [0, 1, -1, 32767, -32768, 0x1234, -2, 7]
    callee = [100, -100, 0x7F00, -0x7F00, 0x00FF, -1, 3, 0]
    interleaved = pcm(*[s for pair in zip(caller, callee, strict=True) for s in pair])
    inbound, outbound = parser.receive_bytes(interleaved)
    assert inbound == Audio(track="inbound", payload=pcm(*caller), timestamp_ms=None, sequence=None)
    assert outbound == Audio(
        track="outbound", payload=pcm(*callee), timestamp_ms=None, sequence=None
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-32768, 32767), st.integers(-32768, 32767)), max_size=400))
def test_stereo_deinterleave_property(pairs: list[tuple[int, int]]) -> None:
    parser = started(mixType="stereo")
    interleaved = pcm(*[s for pair in pairs for s in pair])
    inbound, outbound = parser.receive_bytes(interleaved)
    assert isinstance(inbound, Audio) and isinstance(outbound, Audio)
    assert inbound.payload == pcm(*[a for a, _ in pairs])
    assert outbound.payload == pcm(*[b for _, b in pairs])


def test_stereo_frame_from_a_bytearray() -> None:
    inbound, outbound = started(channels=2).receive_bytes(bytearray(pcm(1, 2, 3, 4)))
    assert isinstance(inbound, Audio) and isinstance(outbound, Audio)
    assert (inbound.payload, outbound.payload) == (pcm(1, 3), pcm(2, 4))


@pytest.mark.parametrize(
    ("metadata", "call_id"),
    [
        ({"call_id": "a", "callSid": "b", "uuid": "c"}, "a"),
        ({"callSid": "b", "uuid": "c"}, "b"),
        ({"uuid": "c"}, "c"),
        ({"call_id": "", "uuid": "c"}, "c"),
    ],
)
def test_call_id_precedence(metadata: dict[str, str], call_id: str) -> None:
    [start] = ForkParser().receive_text(json.dumps(metadata))
    assert isinstance(start, StreamStart)
    assert start.call_id == call_id


@pytest.mark.parametrize(
    ("metadata", "channels", "tracks"),
    [
        ({}, 1, ("inbound",)),
        ({"channels": 1}, 1, ("inbound",)),
        ({"channels": "2"}, 2, ("inbound", "outbound")),
        ({"mixType": "mono"}, 1, ("inbound",)),
        ({"mixType": "mixed"}, 1, ("inbound",)),
        ({"mixType": "stereo"}, 2, ("inbound", "outbound")),
        ({"mixType": "stereo", "channels": 2}, 2, ("inbound", "outbound")),
    ],
)
def test_channels(metadata: dict[str, Any], channels: int, tracks: tuple[str, ...]) -> None:
    [start] = ForkParser().receive_text(json.dumps({"uuid": "u", **metadata}))
    assert isinstance(start, StreamStart)
    assert (start.channels, start.tracks) == (channels, tracks)


@pytest.mark.parametrize(
    ("metadata", "rate"),
    [
        ({}, 8000),
        ({"sample_rate": 16000}, 16000),
        ({"sampleRate": 24000}, 24000),
        ({"sampleRate": "48000"}, 48000),
        ({"sample_rate": 8000, "sampleRate": 8000}, 8000),
    ],
)
def test_sample_rate(metadata: dict[str, Any], rate: int) -> None:
    [start] = ForkParser().receive_text(json.dumps({"uuid": "u", **metadata}))
    assert isinstance(start, StreamStart)
    assert start.sample_rate == rate
    assert start.codec == "l16"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ({"event": "stop"}, StreamStop("stop")),
        ({"type": "stop"}, StreamStop("stop")),
        ({"event": "dtmf", "digit": "#"}, Dtmf("#", None)),
        ({"type": "dtmf", "dtmf": "9", "duration": 1600}, Dtmf("9", None)),
    ],
)
def test_control_messages(text: dict[str, Any], expected: object) -> None:
    assert started().receive_text(json.dumps(text)) == [expected]


def test_frame_of_exactly_max_size_is_accepted() -> None:
    [audio] = started().receive_bytes(bytes(MAX_MESSAGE))
    assert isinstance(audio, Audio)
    assert len(audio.payload) == MAX_MESSAGE


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [{}, {"from": "+401"}, {"call_id": ""}, {"event": "stop"}])
def test_metadata_without_call_id_is_refused(metadata: dict[str, Any]) -> None:
    refused_text(ForkParser(), json.dumps(metadata), MalformedMessage, "missing_call_id")


@pytest.mark.parametrize("text", ["", "hello", "[1, 2]", '"uuid"', "{" * 3, "[" * 3000])
def test_metadata_must_be_a_json_object(text: str) -> None:
    refused_text(ForkParser(), text, MalformedMessage, "bad_json")


def test_control_message_must_be_a_json_object() -> None:
    refused_text(started(), "stop", MalformedMessage, "bad_json")


@pytest.mark.parametrize(
    "metadata",
    [
        {"channels": 3},
        {"channels": 0},
        {"channels": "two"},
        {"channels": True},
        {"mixType": "quad"},
        {"mixType": "stereo", "channels": 1},
        {"sample_rate": 44100},
        {"sampleRate": 11025},
        {"sampleRate": 8000.0},
        {"sample_rate": 8000, "sampleRate": 16000},
    ],
)
def test_unsupported_formats_are_refused(metadata: dict[str, Any]) -> None:
    text = json.dumps({"call_id": "c", **metadata})
    refused_text(ForkParser(), text, MalformedMessage, "unsupported_format")


@pytest.mark.parametrize("data", [b"", pcm(1, 2)])
def test_audio_before_metadata_is_refused(data: bytes) -> None:
    error = refused_bytes(ForkParser(), data, StreamRefused, "stream_not_started")
    assert error.close_code == 1008


@pytest.mark.parametrize(("channels", "length"), [(1, 1), (1, 321), (2, 2), (2, 6), (2, 1)])
def test_frame_length_must_be_whole_samples(channels: int, length: int) -> None:
    parser = started(channels=channels)
    error = refused_bytes(parser, bytes(length), MalformedMessage, "bad_frame_length")
    assert f"{length} bytes" in error.message


@pytest.mark.parametrize(
    "message",
    [{"call_id": "c-2"}, {"callSid": "x", "event": "stop"}, {"uuid": "u"}],
)
def test_second_metadata_is_refused(message: dict[str, Any]) -> None:
    refused_text(started(), json.dumps(message), MalformedMessage, "duplicate_start")


@pytest.mark.parametrize(
    "message", [{}, {"event": "start"}, {"event": "media"}, {"type": 5}, {"event": None}]
)
def test_unknown_control_messages_are_refused(message: dict[str, Any]) -> None:
    refused_text(started(), json.dumps(message), MalformedMessage, "unknown_event")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"event": "dtmf"}, "bad_field"),
        ({"event": "dtmf", "digit": 5}, "bad_field"),
        ({"event": "dtmf", "digit": "55"}, "bad_digit"),
        ({"event": "dtmf", "digit": "x"}, "bad_digit"),
    ],
)
def test_dtmf_needs_one_digit(message: dict[str, Any], code: str) -> None:
    error = refused_text(started(), json.dumps(message), MalformedMessage, code)
    assert "digit" in error.message


def test_frames_after_stop_are_refused() -> None:
    parser = started()
    parser.receive_text(json.dumps({"event": "stop"}))
    refused_bytes(parser, pcm(1), MalformedMessage, "stream_stopped")
    refused_text(parser, json.dumps({"event": "stop"}), MalformedMessage, "stream_stopped")


def test_messages_over_max_size_are_too_big() -> None:
    error = refused_bytes(started(), bytes(MAX_MESSAGE + 2), MessageTooBig, "message_too_big")
    assert error.close_code == 1009
    text = json.dumps({"call_id": "c", "pad": "x" * MAX_MESSAGE})
    refused_text(ForkParser(), text, MessageTooBig, "message_too_big")


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"call_id": 42}, "call_id"),
        ({"uuid": ["u"]}, "uuid"),
        ({"call_id": "c", "token": 1234}, "token"),
        ({"call_id": "c", "from": 40211234567}, "from"),
        ({"call_id": "c", "consent": True}, "consent"),
        ({"call_id": "c", "mixType": 2}, "mixType"),
    ],
)
def test_metadata_fields_of_the_wrong_type_are_named(metadata: dict[str, Any], field: str) -> None:
    error = refused_text(ForkParser(), json.dumps(metadata), MalformedMessage, "bad_field")
    assert error.message.startswith(f"{field} is not a string")


def test_error_messages_never_carry_the_token() -> None:
    for metadata in (
        {"token": TOKEN},
        {"call_id": "c", "token": TOKEN, "channels": TOKEN},
        {"call_id": "c", "token": TOKEN, "mixType": TOKEN},
        {"call_id": "c", "token": TOKEN, "to": 1},
    ):
        with pytest.raises(IngestError) as failed:
            ForkParser().receive_text(json.dumps(metadata))
        assert TOKEN not in str(failed.value)


def test_an_error_leaves_the_parser_usable() -> None:
    parser = started(channels=2)
    refused_bytes(parser, bytes(6), MalformedMessage, "bad_frame_length")
    refused_text(parser, json.dumps({"event": "pause"}), MalformedMessage, "unknown_event")
    assert len(parser.receive_bytes(bytes(8))) == 2


# --- fuzz ---------------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
KEYS = [
    "call_id", "callSid", "uuid", "channels", "mixType", "sample_rate", "sampleRate", "token",
    "from", "to", "direction", "consent", "event", "type", "digit", "dtmf",
]  # fmt: skip
VALUES = ["stop", "dtmf", "stereo", "mono", "mixed", "5", "16000", 2, 1, 8000]
fields = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES) | json_values, max_size=4)
# Control messages: an event or type and at most a digit, so that they get past the call id
# check that most random metadata-like objects trip.
controls = st.fixed_dictionaries(
    {"event": st.sampled_from(VALUES) | json_values},
    optional={"digit": st.sampled_from(VALUES) | json_values, "dtmf": json_values},
)
fork_objects = (fields | controls).map(json.dumps)
frames = st.text(max_size=30) | fork_objects | st.binary(max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, max_size=6))
def test_fuzz_only_ingest_errors_escape(sequence: list[str | bytes]) -> None:
    for parser in (ForkParser(), started(), started(channels=2)):
        for frame in sequence:
            try:
                if isinstance(frame, bytes):
                    events = parser.receive_bytes(frame)
                else:
                    events = parser.receive_text(frame)
            except IngestError:
                continue
            assert isinstance(events, list)
