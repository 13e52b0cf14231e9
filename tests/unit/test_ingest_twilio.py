"""TwilioParser: Twilio Media Streams messages in, ingest events out, bad input refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import IngestError, MalformedMessage, MessageTooBig, StreamRefused
from gateway.ingest.events import MAX_MESSAGE, Audio, Dtmf, Mark, StreamStart, StreamStop
from gateway.ingest.twilio import TwilioParser

TOKEN = "cvt_pbx_7fJ2kQ9xZr4mVb8sLw3nTy6p"
STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA0123456789abcdef0123456789abcdef"


def dumps(value: Any) -> str:
    return json.dumps(value)


def start_msg(
    custom: Any = None, tracks: Any = ("inbound", "outbound"), **start_fields: Any
) -> str:
    start: dict[str, Any] = {
        "accountSid": "AC0123456789abcdef0123456789abcdef",
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "tracks": list(tracks) if isinstance(tracks, tuple) else tracks,
        "customParameters": {} if custom is None else custom,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(start_fields)
    return dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": STREAM_SID})


def media_msg(
    payload: bytes | Any = b"\xff\x7f", track: Any = "inbound", timestamp: Any = "5", seq: Any = "3"
) -> str:
    encoded = base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload
    media = {"track": track, "chunk": "1", "timestamp": timestamp, "payload": encoded}
    return dumps({"event": "media", "sequenceNumber": seq, "media": media, "streamSid": STREAM_SID})


def started(**kwargs: Any) -> TwilioParser:
    parser = TwilioParser()
    assert parser.receive_text(dumps({"event": "connected", "protocol": "Call"})) == []
    [start] = parser.receive_text(start_msg(**kwargs))
    assert isinstance(start, StreamStart)
    return parser


def refused(parser: TwilioParser, text: str, cls: type[IngestError], code: str) -> IngestError:
    with pytest.raises(cls) as failed:
        parser.receive_text(text)
    assert type(failed.value) is cls
    assert failed.value.code == code
    return failed.value


# --- good paths ---------------------------------------------------------------------------


def test_realistic_session_yields_the_expected_events() -> None:
    custom = {
        "call_id": "c-42",
        "token": TOKEN,
        "from": "+40211234567",
        "to": "+40721234567",
        "direction": "inbound",
        "consent": "granted",
        "crm_ticket": "T-9",
    }
    inbound, outbound = bytes(range(0, 160)), bytes(range(96, 256))
    messages = [
        dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        start_msg(custom),
        media_msg(inbound, "inbound", "0", "2"),
        media_msg(outbound, "outbound", 20, 3),
        dumps(
            {
                "event": "dtmf",
                "streamSid": STREAM_SID,
                "sequenceNumber": "4",
                "dtmf": {"track": "inbound_track", "digit": "1"},
            }
        ),  # fmt: skip
        dumps({"event": "mark", "sequenceNumber": "5", "mark": {"name": "greeting-done"}}),
        dumps(
            {
                "event": "stop",
                "sequenceNumber": "6",
                "stop": {"accountSid": "AC01", "callSid": CALL_SID},
            }
        ),  # fmt: skip
    ]
    parser = TwilioParser()
    events = [event for text in messages for event in parser.receive_text(text)]
    assert events == [
        StreamStart(
            call_id="c-42",
            stream_id=STREAM_SID,
            token=TOKEN,
            parameters={
                "from": "+40211234567",
                "to": "+40721234567",
                "direction": "inbound",
                "consent": "granted",
            },
            codec="pcmu",
            sample_rate=8000,
            channels=1,
            tracks=("inbound", "outbound"),
        ),
        Audio(track="inbound", payload=inbound, timestamp_ms=0, sequence=2),
        Audio(track="outbound", payload=outbound, timestamp_ms=20, sequence=3),
        Dtmf(digit="1", track="inbound"),
        Mark(name="greeting-done"),
        StreamStop(reason="stop"),
    ]
    start = events[0]
    assert isinstance(start, StreamStart)
    assert TOKEN not in start.parameters.values()
    assert "token" not in start.parameters
    assert TOKEN not in repr(start)


def test_start_parameters_are_read_only() -> None:
    parser = TwilioParser()
    [start] = parser.receive_text(start_msg({"from": "+401"}))
    assert isinstance(start, StreamStart)
    with pytest.raises(TypeError):
        start.parameters["from"] = "+999"  # type: ignore[index]
    assert hash(start) == hash(TwilioParser().receive_text(start_msg({"from": "+401"}))[0])


def test_payload_bytes_come_back_exactly() -> None:
    parser = started()
    every_byte = bytes(range(256)) * 2
    [audio] = parser.receive_text(media_msg(every_byte))
    assert isinstance(audio, Audio)
    assert audio.payload == every_byte


def test_empty_payload_is_zero_bytes_of_audio() -> None:
    parser = started()
    assert parser.receive_text(media_msg(b"")) == [
        Audio(track="inbound", payload=b"", timestamp_ms=5, sequence=3)
    ]


def test_missing_timestamp_and_sequence_are_none() -> None:
    parser = started()
    text = dumps({"event": "media", "media": {"track": "outbound", "payload": "AAA="}})
    assert parser.receive_text(text) == [
        Audio(track="outbound", payload=b"\0\0", timestamp_ms=None, sequence=None)
    ]


@pytest.mark.parametrize(
    ("custom", "expected"),
    [
        ({"call_id": "ours"}, "ours"),
        ({}, CALL_SID),
        ({"call_id": ""}, CALL_SID),  # an empty template variable falls through
    ],
)
def test_call_id_is_custom_parameter_else_call_sid(custom: dict[str, str], expected: str) -> None:
    [start] = TwilioParser().receive_text(start_msg(custom))
    assert isinstance(start, StreamStart)
    assert start.call_id == expected
    assert start.token is None
    assert start.parameters == {}


def test_start_without_any_call_id_is_refused() -> None:
    text = start_msg({"from": "+401"}, callSid=None)
    refused(TwilioParser(), text, MalformedMessage, "missing_call_id")


def test_start_without_custom_parameters_or_media_format_is_accepted() -> None:
    text = dumps({"event": "start", "start": {"callSid": CALL_SID}})
    assert TwilioParser().receive_text(text) == [
        StreamStart(
            call_id=CALL_SID,
            stream_id=None,
            token=None,
            parameters={},
            codec="pcmu",
            sample_rate=8000,
            channels=1,
            tracks=("inbound", "outbound"),
        )
    ]


@pytest.mark.parametrize(
    ("tracks", "expected"),
    [
        (("inbound",), ("inbound",)),
        (("outbound",), ("outbound",)),
        (("outbound", "inbound"), ("inbound", "outbound")),
        (("inbound", "inbound"), ("inbound",)),
        (None, ("inbound", "outbound")),
    ],
)
def test_start_tracks(tracks: tuple[str, ...] | None, expected: tuple[str, ...]) -> None:
    [start] = TwilioParser().receive_text(start_msg(tracks=tracks))
    assert isinstance(start, StreamStart)
    assert start.tracks == expected


def test_numbers_as_strings_and_as_ints_are_both_accepted() -> None:
    parser = started()
    [a] = parser.receive_text(media_msg(timestamp="120", seq="7"))
    [b] = parser.receive_text(media_msg(timestamp=140, seq=8))
    assert isinstance(a, Audio) and isinstance(b, Audio)
    assert (a.timestamp_ms, a.sequence, b.timestamp_ms, b.sequence) == (120, 7, 140, 8)
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": "1"}
    [start] = TwilioParser().receive_text(start_msg(mediaFormat=fmt))
    assert isinstance(start, StreamStart)


@pytest.mark.parametrize(
    ("dtmf", "expected"),
    [
        ({"track": "inbound_track", "digit": "5"}, Dtmf("5", "inbound")),
        ({"track": "outbound_track", "digit": "#"}, Dtmf("#", "outbound")),
        ({"digit": "*"}, Dtmf("*", None)),
        ({"digit": "d"}, Dtmf("D", None)),
    ],
)
def test_dtmf(dtmf: dict[str, str], expected: Dtmf) -> None:
    assert started().receive_text(dumps({"event": "dtmf", "dtmf": dtmf})) == [expected]


def test_an_error_leaves_the_parser_usable() -> None:
    # Each message is checked before any state changes, so a refused message changes nothing.
    parser = started(tracks=("inbound",))
    refused(parser, media_msg(track="outbound"), MalformedMessage, "bad_track")
    refused(parser, start_msg(), MalformedMessage, "duplicate_start")
    assert parser.receive_text(media_msg(b"\x01")) == [
        Audio(track="inbound", payload=b"\x01", timestamp_ms=5, sequence=3)
    ]


def test_message_of_exactly_max_size_is_accepted() -> None:
    text = media_msg(b"\x00")
    text += " " * (MAX_MESSAGE - len(text))  # JSON allows trailing whitespace
    assert len(text.encode()) == MAX_MESSAGE
    assert len(started().receive_text(text)) == 1


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"event": "media",}', "[]", '"start"', "42", "null", "[" * 5000],
)
def test_text_that_is_not_a_json_object_is_bad_json(text: str) -> None:
    refused(TwilioParser(), text, MalformedMessage, "bad_json")


@pytest.mark.parametrize(
    "text",
    [
        dumps({"event": "Media"}),
        dumps({"event": "clear"}),
        dumps({"event": ""}),
    ],
)
def test_unknown_event_is_refused(text: str) -> None:
    error = refused(started(), text, MalformedMessage, "unknown_event")
    assert error.close_code == 1007


@pytest.mark.parametrize("text", [dumps({"media": {}}), dumps({"event": 3})])
def test_missing_or_non_string_event_names_the_field(text: str) -> None:
    error = refused(started(), text, MalformedMessage, "bad_field")
    assert "event" in error.message


@pytest.mark.parametrize(
    "text",
    [
        media_msg(),
        dumps({"event": "dtmf", "dtmf": {"digit": "1"}}),
        dumps({"event": "mark", "mark": {"name": "m"}}),
        dumps({"event": "stop", "stop": {}}),
    ],
)
def test_events_before_start_are_refused(text: str) -> None:
    parser = TwilioParser()
    parser.receive_text(dumps({"event": "connected"}))
    error = refused(parser, text, StreamRefused, "stream_not_started")
    assert error.close_code == 1008


def test_second_start_is_refused() -> None:
    refused(started(), start_msg(), MalformedMessage, "duplicate_start")


@pytest.mark.parametrize(
    "text",
    [dumps({"event": "connected"}), media_msg(), start_msg(), dumps({"event": "stop"}), "junk"],
)
def test_anything_after_stop_is_refused(text: str) -> None:
    parser = started()
    assert parser.receive_text(dumps({"event": "stop"})) == [StreamStop("stop")]
    refused(parser, text, MalformedMessage, "stream_stopped")


def test_binary_after_stop_is_refused_as_stopped() -> None:
    parser = started()
    parser.receive_text(dumps({"event": "stop"}))
    with pytest.raises(MalformedMessage) as failed:
        parser.receive_bytes(b"\x00")
    assert failed.value.code == "stream_stopped"


@pytest.mark.parametrize("data", [b"", b"\x00\x01", b'{"event": "connected"}'])
def test_binary_messages_are_not_expected(data: bytes) -> None:
    for parser in (TwilioParser(), started()):
        with pytest.raises(MalformedMessage) as failed:
            parser.receive_bytes(data)
        assert failed.value.code == "binary_not_expected"


@pytest.mark.parametrize("track", ["inbound_track", "both", "", "INBOUND"])
def test_media_track_must_be_inbound_or_outbound(track: str) -> None:
    error = refused(started(), media_msg(track=track), MalformedMessage, "bad_track")
    assert "media.track" in error.message


def test_media_on_a_track_start_did_not_announce_is_refused() -> None:
    parser = started(tracks=("outbound",))
    refused(parser, media_msg(track="inbound"), MalformedMessage, "bad_track")


@pytest.mark.parametrize(
    "tracks", [["inbound", "sideways"], [], [1], ["inbound", None], ["inbound_track"]]
)
def test_start_tracks_must_name_inbound_or_outbound(tracks: list[Any]) -> None:
    error = refused(TwilioParser(), start_msg(tracks=tracks), MalformedMessage, "bad_track")
    assert "start.tracks" in error.message


@pytest.mark.parametrize("payload", ["AAA", "AA AA", "AA==AA==", "!!!!", "AAé=", "-_-_", "A\nAA="])
def test_payload_must_be_strict_base64(payload: str) -> None:
    parser = started()
    for _ in range(11):
        parser.receive_text(media_msg())
    error = refused(parser, media_msg(payload), MalformedMessage, "bad_base64")
    assert error.message == "media.payload is not valid base64 (frame 14)"


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": "16000", "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000.5, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": True, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": True},
    ],
)
def test_only_8khz_mono_mulaw_is_supported(media_format: dict[str, Any]) -> None:
    text = start_msg(mediaFormat=media_format)
    error = refused(TwilioParser(), text, MalformedMessage, "unsupported_format")
    assert "start.mediaFormat." in error.message


def test_message_over_max_size_is_too_big() -> None:
    text = media_msg(b"\x00")
    text += " " * (MAX_MESSAGE + 1 - len(text))
    error = refused(started(), text, MessageTooBig, "message_too_big")
    assert error.close_code == 1009


def test_size_counts_utf8_bytes_not_characters() -> None:
    # 22,000 characters, but 66,000 bytes once UTF-8 encoded.
    text = dumps({"event": "mark", "mark": {"name": "€" * 22_000}}).replace("\\u20ac", "€")
    assert len(text) < MAX_MESSAGE < len(text.encode())
    refused(started(), text, MessageTooBig, "message_too_big")


@pytest.mark.parametrize("timestamp", [-1, "-1", 1.5, "1.5", True, "abc", " 5", "5_0", "²", [], {}])
def test_timestamp_must_be_a_non_negative_integer(timestamp: Any) -> None:
    error = refused(started(), media_msg(timestamp=timestamp), MalformedMessage, "bad_timestamp")
    assert "media.timestamp" in error.message


@pytest.mark.parametrize("seq", [-3, "x", 2.0, False])
def test_sequence_number_must_be_a_non_negative_integer(seq: Any) -> None:
    error = refused(started(), media_msg(seq=seq), MalformedMessage, "bad_field")
    assert "sequenceNumber" in error.message


@pytest.mark.parametrize("digit", ["x", "12", "", "½"])
def test_dtmf_digit_must_be_a_dtmf_symbol(digit: str) -> None:
    text = dumps({"event": "dtmf", "dtmf": {"digit": digit}})
    refused(started(), text, MalformedMessage, "bad_digit")


def test_dtmf_track_must_be_a_known_track() -> None:
    text = dumps({"event": "dtmf", "dtmf": {"digit": "1", "track": "middle"}})
    refused(started(), text, MalformedMessage, "bad_track")


WRONG_TYPES = [
    (media_msg(payload=123), "media.payload"),
    (media_msg(payload=None), "media.payload"),
    (dumps({"event": "media", "media": ["track", "inbound"]}), "media"),
    (dumps({"event": "media"}), "media"),
    (media_msg(track=1), "media.track"),
    (dumps({"event": "dtmf", "dtmf": "1"}), "dtmf"),
    (dumps({"event": "dtmf", "dtmf": {"digit": 1}}), "dtmf.digit"),
    (dumps({"event": "dtmf", "dtmf": {"digit": "1", "track": 0}}), "dtmf.track"),
    (dumps({"event": "mark", "mark": {"name": 7}}), "mark.name"),
    (dumps({"event": "mark", "mark": {}}), "mark.name"),
    (dumps({"event": "mark", "mark": []}), "mark"),
]
START_WRONG_TYPES = [
    (start_msg("call_id=c1"), "start.customParameters"),
    (start_msg(tracks="inbound"), "start.tracks"),
    (start_msg({"call_id": 5}), "start.customParameters.call_id"),
    (start_msg({"token": 5}), "start.customParameters.token"),
    (start_msg({"from": ["+401"]}), "start.customParameters.from"),
    (start_msg(callSid=12), "start.callSid"),
    (start_msg(streamSid={}), "start.streamSid"),
    (start_msg(mediaFormat="audio/x-mulaw"), "start.mediaFormat"),
    (start_msg(mediaFormat={"encoding": 0}), "start.mediaFormat.encoding"),
    (dumps({"event": "start", "start": [CALL_SID]}), "start"),
    (dumps({"event": "start"}), "start"),
]


@pytest.mark.parametrize(("text", "field"), WRONG_TYPES)
def test_fields_of_the_wrong_type_are_named(text: str, field: str) -> None:
    with pytest.raises(MalformedMessage) as failed:
        started().receive_text(text)
    assert failed.value.message.startswith(f"{field} is ")
    assert failed.value.code == "bad_field"


@pytest.mark.parametrize(("text", "field"), START_WRONG_TYPES)
def test_start_fields_of_the_wrong_type_are_named(text: str, field: str) -> None:
    with pytest.raises(MalformedMessage) as failed:
        TwilioParser().receive_text(text)
    assert failed.value.message.startswith(f"{field} is ")
    assert failed.value.code == "bad_field"


def test_error_messages_never_carry_the_token() -> None:
    bad = [
        start_msg({"token": TOKEN, "call_id": 1}),
        start_msg({"token": TOKEN, "direction": 3}),
        start_msg({"token": TOKEN}, tracks=[TOKEN]),
        start_msg({"token": TOKEN}, mediaFormat={"encoding": TOKEN}),
        dumps({"event": TOKEN, "start": {"customParameters": {"token": TOKEN}}}),
    ]
    after_start = [media_msg(TOKEN), media_msg(track=TOKEN), media_msg(timestamp=TOKEN)]
    for parser, text in [(TwilioParser(), t) for t in bad] + [(started(), t) for t in after_start]:
        with pytest.raises(IngestError) as failed:
            parser.receive_text(text)
        assert TOKEN not in str(failed.value)
        assert TOKEN not in failed.value.code


# --- fuzz ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
field_values = (
    json_values
    | st.sampled_from(["inbound", "outbound", "inbound_track", "audio/x-mulaw", "8000", "1"])
    | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
)
FIELD_NAMES = [
    "track", "payload", "timestamp", "digit", "name", "callSid", "streamSid", "tracks",
    "customParameters", "mediaFormat", "encoding", "sampleRate", "channels", "call_id", "token",
]  # fmt: skip
inner = st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=5)
twilio_messages = st.builds(
    lambda event, key, body, seq: {"event": event, key: body, "sequenceNumber": seq},
    st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "other"]),
    st.sampled_from(["start", "media", "dtmf", "mark", "stop"]),
    inner | json_values,
    field_values,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40) | twilio_messages.map(dumps), max_size=6))
def test_fuzz_only_ingest_errors_escape(texts: list[str]) -> None:
    for parser in (TwilioParser(), started()):
        for text in texts:
            try:
                events = parser.receive_text(text)
            except IngestError:
                continue
            assert isinstance(events, list)
