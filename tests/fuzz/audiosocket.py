"""Fuzz ``gateway.ingest.audiosocket.AudioSocketParser`` with a TCP byte stream.

Input: one byte that seeds where the stream is cut (``tests.fuzz.harness.chunks``), then the
stream. Contract: only ``MalformedMessage`` and ``StreamRefused`` escape, with a stable code
and a short message, and a failed parser keeps raising that error; the outcome is the same
wherever the stream was cut (the module's promise), so the cut stream is checked against the
same stream fed one frame at a time: its events are a prefix of those, and it fails with the
same error or not at all; events in order and in bounds (a UUID start, audio of whole
16-bit samples up to 65535 bytes); what stays buffered is at most one frame.
"""

from __future__ import annotations

import uuid

from crypto.errors import CallvaultError
from gateway.errors import IngestError, MalformedMessage, StreamRefused
from gateway.ingest.audiosocket import AudioSocketParser
from gateway.ingest.events import DTMF_DIGITS, Audio, Dtmf, Event, StreamStart, StreamStop
from tests.fuzz.harness import Reader, check_error, chunks

REFUSALS = (MalformedMessage, StreamRefused)
MAX_FRAME = 3 + 0xFFFF


def feed(pieces: list[bytes]) -> tuple[list[Event], IngestError | None, int]:
    """The events, the error (if any) and what stays buffered after feeding ``pieces``."""
    parser = AudioSocketParser()
    events: list[Event] = []
    for piece in pieces:
        try:
            events += parser.feed(piece)
        except REFUSALS as e:
            check_error(e)
            try:
                parser.feed(b"\x10")
            except REFUSALS as again:
                assert again is e, "a failed parser raised another error"
            else:
                raise AssertionError("a failed parser took more data")
            return events, e, parser.pending()
        assert parser.pending() < MAX_FRAME
    return events, None, parser.pending()


def frames(stream: bytes) -> list[bytes]:
    """``stream`` cut after each frame (``kind u8 | length u16 | payload``): fed so, every
    frame before a bad one comes out before the error."""
    out, pos = [], 0
    while pos < len(stream):
        end = pos + 3 + int.from_bytes(stream[pos + 1 : pos + 3].ljust(2, b"\0"), "big")
        out.append(stream[pos:end])
        pos = end
    return out


def check(events: list[Event]) -> None:
    started = stopped = False
    for event in events:
        assert not stopped, "an event after the stop"
        if isinstance(event, StreamStart):
            assert not started, "a second start"
            assert event.token is not None and str(uuid.UUID(event.token)) == event.token
            assert event.call_id is None and (event.codec, event.sample_rate) == ("l16", 8000)
            started = True
            continue
        assert started, "an event before the start"
        if isinstance(event, Audio):
            assert len(event.payload) % 2 == 0 and len(event.payload) <= 0xFFFF
        elif isinstance(event, Dtmf):
            assert event.digit in DTMF_DIGITS
        elif isinstance(event, StreamStop):
            assert event.reason in ("hangup", "client_error")
            stopped = True


def same_error(a: CallvaultError | None, b: CallvaultError | None) -> bool:
    if a is None or b is None:
        return a is b
    return (type(a), a.code, str(a)) == (type(b), b.code, str(b))


def fuzz_one(data: bytes) -> None:
    reader = Reader(data)
    seed = reader.u8()
    stream = reader.rest()
    by_frame, error, pending = feed(frames(stream))
    check(by_frame)
    cut, cut_error, cut_pending = feed(chunks(stream, seed))
    assert same_error(error, cut_error), f"cut differently, {error!r} became {cut_error!r}"
    assert by_frame[: len(cut)] == cut, "cut differently, the events differ"
    if error is None:
        assert cut == by_frame and cut_pending == pending
