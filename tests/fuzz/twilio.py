"""Fuzz ``gateway.ingest.twilio.TwilioParser`` with sequences of WebSocket messages.

Contract: only ``MalformedMessage``, ``MessageTooBig`` and ``StreamRefused`` escape, each
with a stable code and a short message; a refused message leaves the parser as it was
(the module's promise); the events come in order (one start, then audio, DTMF and marks on
the tracks the start announced, then at most one stop) and carry values in their bounds;
and where the C reader of the media message answers, its fields are orjson's.
"""

from __future__ import annotations

import orjson

from gateway.errors import MalformedMessage, MessageTooBig, StreamRefused
from gateway.ingest import twilio
from gateway.ingest.events import (
    CALL_FACTS,
    DTMF_DIGITS,
    MAX_MESSAGE,
    Audio,
    Dtmf,
    Event,
    Mark,
    StreamStart,
    StreamStop,
)
from gateway.ingest.twilio import TwilioParser
from tests.fuzz.harness import check_error, messages, text_of

REFUSALS = (MalformedMessage, MessageTooBig, StreamRefused)
MAX_NUMBER = 10**18
"""Numeric fields are at most eighteen digits."""


class StreamChecker:
    """The order and bounds every WebSocket parser's events keep (Twilio and fork)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.start: StreamStart | None = None
        self.stopped = False

    def check(self, event: Event) -> None:
        if isinstance(event, StreamStart):
            assert self.start is None and not self.stopped, "a second StreamStart"
            assert event.call_id, "a start without a call id"
            assert event.codec == self.codec
            assert event.tracks and set(event.tracks) <= {"inbound", "outbound"}
            assert list(event.tracks) == sorted(event.tracks), "tracks out of order"
            assert set(event.parameters) <= set(CALL_FACTS)
            assert all(isinstance(v, str) and v for v in event.parameters.values())
            assert "token=" not in repr(event), "the token shows in the event's repr"
            self.start = event
            return
        assert self.start is not None, f"{type(event).__name__} before the start"
        assert not self.stopped, f"{type(event).__name__} after the stop"
        if isinstance(event, Audio):
            assert event.track in self.start.tracks, "audio on a track the start did not name"
            assert isinstance(event.payload, bytes) and len(event.payload) <= MAX_MESSAGE
            for number in (event.timestamp_ms, event.sequence):
                assert number is None or 0 <= number < MAX_NUMBER, "a number out of bounds"
        elif isinstance(event, Dtmf):
            assert event.digit in DTMF_DIGITS
            assert event.track in (None, "inbound", "outbound")
        elif isinstance(event, Mark):
            assert isinstance(event.name, str)
        elif isinstance(event, StreamStop):
            assert event.reason == "stop"
            self.stopped = True


def check_c_media(text: str) -> None:
    """Where the C reader of the media message (``gateway/ingest/_twilio.c``) answers, orjson
    reads the same fields from the text: the C path never accepts what the general one
    would read otherwise."""
    if twilio.C_MEDIA is None:
        return
    fields = twilio.C_MEDIA(text)
    if fields is None:
        return
    msg = orjson.loads(text)
    media = msg["media"]
    assert msg["event"] == "media"
    expected = (media["track"], media["payload"], media["timestamp"], msg["sequenceNumber"])
    assert fields == (*expected[:2], int(expected[2]), int(expected[3])), "C read otherwise"


def fuzz_one(data: bytes) -> None:
    parser = TwilioParser()
    checker = StreamChecker("pcmu")
    for binary, body in messages(data):
        if not binary:
            check_c_media(text_of(body))
        # The parser's own state, read only to hold it to "an error leaves the parser as
        # it was".
        before = (parser._state, parser._tracks)
        try:
            events = parser.receive_bytes(body) if binary else parser.receive_text(text_of(body))
        except REFUSALS as e:
            check_error(e)
            assert (parser._state, parser._tracks) == before, "a refused message changed state"
            continue
        for event in events:
            checker.check(event)
