"""Fuzz ``gateway.ingest.fork.ForkParser`` (mod_audio_fork, jambonz listen) with sequences
of WebSocket messages.

Contract: only ``MalformedMessage``, ``MessageTooBig`` and ``StreamRefused`` escape, with a
stable code and a short message; a refused message leaves the parser as it was; events in
order and in bounds (``tests.fuzz.twilio.StreamChecker``); a binary message's audio is the
message itself, mono, or stereo split sample by sample: interleaving the two tracks' payloads
again gives back the bytes received.
"""

from __future__ import annotations

from gateway.ingest.events import Audio, StreamStart
from gateway.ingest.fork import SAMPLE_RATES, ForkParser
from tests.fuzz.harness import check_error, messages, text_of
from tests.fuzz.twilio import REFUSALS, StreamChecker


def interleave(left: bytes, right: bytes) -> bytes:
    """Two tracks' 16-bit samples as one stereo frame (channel 0 first)."""
    out = bytearray()
    for i in range(0, len(left), 2):
        out += left[i : i + 2] + right[i : i + 2]
    return bytes(out)


def fuzz_one(data: bytes) -> None:
    parser = ForkParser()
    checker = StreamChecker("l16")
    for binary, body in messages(data):
        before = (parser._state, parser._channels)  # see tests.fuzz.twilio
        try:
            events = parser.receive_bytes(body) if binary else parser.receive_text(text_of(body))
        except REFUSALS as e:
            check_error(e)
            assert (parser._state, parser._channels) == before, "a refused message changed state"
            continue
        for event in events:
            checker.check(event)
            if isinstance(event, StreamStart):
                assert event.sample_rate in SAMPLE_RATES
                assert event.channels == len(event.tracks) in (1, 2)
        audio = [event for event in events if isinstance(event, Audio)]
        if binary:
            assert checker.start is not None
            assert len(audio) == checker.start.channels == len(events)
            if len(audio) == 1:
                assert audio[0].payload == body
            else:
                inbound, outbound = audio
                assert (inbound.track, outbound.track) == ("inbound", "outbound")
                assert len(inbound.payload) == len(outbound.payload)
                assert interleave(inbound.payload, outbound.payload) == body
        else:
            assert not audio, "audio from a text message"
