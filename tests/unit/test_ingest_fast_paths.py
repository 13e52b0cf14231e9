"""The per-frame fast paths of the ingest transports give what the checked paths give.

Twilio's media messages are taken in one pass when they have their usual shape (and read
in C by ``gateway/ingest/_twilio.c`` where it was built: compared with the general path on
hand-picked JSON edges and 20,000 seeded mutations of the common message), fork's
stereo frames are split through an array, AudioSocket's frames are taken in one pass per
read, and ``CallSession.receive`` places a frame without taking the session's lock when
nothing holds or awaits it. Each is compared here with the
path it shortcuts, on the same input: the same events, the same refusals (code and
message), the same records stored on each track.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from gateway.errors import IngestError, MalformedMessage, StreamRefused
from gateway.ingest import twilio
from gateway.ingest.audiosocket import (
    KIND_AUDIO,
    KIND_DTMF,
    KIND_ERROR,
    AudioSocketParser,
    audio_frame,
    dtmf_frame,
    encode_frame,
    hangup_frame,
    uuid_frame,
)
from gateway.ingest.events import Audio, Event, Track
from gateway.ingest.fork import ForkParser
from gateway.ingest.twilio import TwilioParser
from gateway.session import MAX_HELD_FLUSHES, CallSession, SessionLimits
from storage.media.tracks import RecordParser, TrackRecord
from tests.unit.test_session import NOW, FakeUpload, session

PAYLOAD = base64.b64encode(bytes(range(160))).decode()


def started_twilio(tracks: list[str] | None = None) -> TwilioParser:
    parser = TwilioParser()
    start: dict[str, Any] = {"callSid": "CA1", "streamSid": "MZ1"}
    if tracks is not None:
        start["tracks"] = tracks
    parser.receive_text(json.dumps({"event": "start", "start": start}))
    return parser


def media(**changes: Any) -> dict[str, Any]:
    """A media message; a change of ``None`` removes the field, ``media.x`` its inner one."""
    msg: dict[str, Any] = {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": PAYLOAD},
        "streamSid": "MZ1",
    }
    for key, value in changes.items():
        target, name = (msg["media"], key[6:]) if key.startswith("media_") else (msg, key)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return msg


VARIANTS: list[dict[str, Any]] = [
    media(),
    media(media_track="outbound"),
    media(media_track="inbound_track"),
    media(media_track=""),
    media(media_track=1),
    media(media_track=["inbound"]),
    media(media_track=None),
    media(media_payload=None),
    media(media_payload=""),
    media(media_payload=7),
    media(media_payload="AAA"),
    media(media_payload="AA=="),
    media(media_payload="AA=A"),
    media(media_payload="=AAA"),
    media(media_payload="AAAA===="),
    media(media_payload="AA AA"),
    media(media_payload="AAAA\n"),
    media(media_payload="AAé="),
    media(media_payload="A-_A"),
    media(media_timestamp=None),
    media(media_timestamp=40),
    media(media_timestamp=-1),
    media(media_timestamp=1.5),
    media(media_timestamp=True),
    media(media_timestamp=""),
    media(media_timestamp="0040"),
    media(media_timestamp=" 40"),
    media(media_timestamp="4_0"),
    media(media_timestamp="²"),
    media(media_timestamp="٤٠"),
    media(media_timestamp="9" * 18),
    media(media_timestamp="9" * 19),
    media(sequenceNumber=None),
    media(sequenceNumber=3),
    media(sequenceNumber="-3"),
    media(sequenceNumber="x"),
    media(sequenceNumber="1" * 19),
    media(media=None),
    media(media="inbound"),
    media(media=[1]),
]


def outcome(call: Callable[..., Any], *args: Any) -> Any:
    """What ``call(*args)`` returns, or the class, code and message of its refusal."""
    try:
        return call(*args)
    except IngestError as e:
        return (type(e), e.code, e.message)


@pytest.mark.parametrize("msg", VARIANTS, ids=lambda m: json.dumps(m, ensure_ascii=True)[:70])
@pytest.mark.parametrize("tracks", [None, ["inbound"]])
def test_twilio_media_in_one_pass_matches_the_checked_path(
    msg: dict[str, Any], tracks: list[str] | None
) -> None:
    fast, checked = started_twilio(tracks), started_twilio(tracks)
    text = json.dumps(msg)
    assert outcome(lambda: fast.receive_text(text)) == outcome(
        lambda: [checked._checked_media(json.loads(text), 2)]
    )


def test_twilio_base64_is_decoded_and_refused_as_b64decode_validates() -> None:
    """The fast path calls binascii's strict decoder itself: whatever string a PBX sends,
    it accepts exactly what ``base64.b64decode(validate=True)`` accepts, with its bytes."""
    rng = random.Random(17)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    noise = "=\n -_.é\x00"
    for _ in range(20000):
        size = rng.randrange(0, 12)
        text = "".join(
            rng.choice(noise) if rng.random() < 0.15 else rng.choice(alphabet) for _ in range(size)
        )
        parser = started_twilio()
        got = outcome(parser.receive_text, json.dumps(media(media_payload=text)))
        try:
            want = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            assert isinstance(got, tuple) and got[1] == "bad_base64", text
        else:
            assert got == [Audio("inbound", want, 20, 3)], text


def test_twilio_messages_other_than_started_media_go_through_every_check() -> None:
    parser = started_twilio()
    assert outcome(lambda: parser.receive_text('{"event": "mark", "mark": {}}')) == (
        MalformedMessage,
        "bad_field",
        "mark.name is missing (frame 2)",
    )
    assert outcome(lambda: TwilioParser().receive_text(json.dumps(media()))) == (
        StreamRefused,
        "stream_not_started",
        "a media event arrived before the start event (frame 1)",
    )
    parser.receive_text('{"event": "stop"}')
    assert outcome(lambda: parser.receive_text(json.dumps(media()))) == (
        MalformedMessage,
        "stream_stopped",
        "a message arrived after the stop event (frame 4)",
    )


def deinterleaved(data: bytes) -> tuple[bytes, bytes]:
    """The split as it was: a memoryview of 16-bit units, every other one."""
    samples = memoryview(bytes(data)).cast("B").cast("H")
    return samples[0::2].tobytes(), samples[1::2].tobytes()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_fork_stereo_frames_split_as_the_sample_view_did(kind: Any) -> None:
    rng = random.Random(5)
    parser = ForkParser()
    parser.receive_text(json.dumps({"call_id": "c", "channels": 2}))
    for size in (0, 4, 8, 640, 1280, 4 * 1001):
        data = rng.randbytes(size)
        inbound, outbound = deinterleaved(data)
        assert parser.receive_bytes(kind(data)) == [
            Audio("inbound", inbound, None, None),
            Audio("outbound", outbound, None, None),
        ]


# --- CallSession.receive without the lock: the same records -----------------------------


class YieldingUpload(FakeUpload):
    """A fake upload whose writes and flushes yield to the loop, as the spool's do: a
    flush holds the session's lock across them."""

    async def write(self, data: bytes) -> None:
        await asyncio.sleep(0)
        await super().write(data)

    async def flush(self) -> None:
        await asyncio.sleep(0)
        await super().flush()


class TrackVault:
    """A vault whose objects are fake uploads, one per track and object."""

    def __init__(self) -> None:
        self.uploads: list[tuple[str, FakeUpload]] = []

    async def create_object(self, *, track: str, **_: Any) -> FakeUpload:
        upload = YieldingUpload()
        self.uploads.append((track, upload))
        return upload

    def records(self) -> dict[str, list[TrackRecord]]:
        found: dict[str, list[TrackRecord]] = {}
        for track, upload in self.uploads:
            parser = RecordParser()
            found.setdefault(track, []).extend(parser.feed(bytes(upload.plaintext)))
            parser.finish()
        return found


def recording_session(codec: str) -> tuple[CallSession, TrackVault]:
    vault = TrackVault()
    live = session(codec, max_duration_s=600)
    live._vault = vault  # type: ignore[assignment]
    live._limits = SessionLimits(
        flush_interval=timedelta(milliseconds=90),
        flush_bytes=1000,
        max_duration=live._limits.max_duration,
    )
    return live, vault


async def locked_receive(live: CallSession, audio: Audio, now: datetime) -> None:
    """``CallSession.receive`` as it was: every frame placed under the lock."""
    async with live._lock:
        if live.place(audio, now):
            await live._flush(now, hold=MAX_HELD_FLUSHES * live._limits.flush_bytes)


async def current_receive(live: CallSession, audio: Audio, now: datetime) -> None:
    await live.receive(audio, now)


def frames(codec: str) -> list[Audio]:
    """Two tracks' frames as Twilio (timestamped, with a gap) or fork sends them."""
    rng = random.Random(3)
    out: list[Audio] = []
    tracks: tuple[Track, Track] = ("inbound", "outbound")
    for index in range(300):
        for track in tracks:
            if codec == "pcmu":
                stamp = index * 20 + (400 if index > 150 else 0)
                out.append(Audio(track, rng.randbytes(160), stamp, index))
            else:
                out.append(Audio(track, rng.randbytes(320), None, None))
    return out


async def stream(
    codec: str, receive: Callable[[CallSession, Audio, datetime], Awaitable[None]]
) -> tuple[dict[str, list[TrackRecord]], Counter[str]]:
    """The frames of ``frames(codec)`` 10 ms apart through ``receive``, with the ticker's
    forced flushes and a pause and resume starting beside some of them; the records each
    track stored, and in what state each frame found the session's lock."""
    live, vault = recording_session(codec)
    lock = live._lock
    found: Counter[str] = Counter()
    pending: list[asyncio.Future[None]] = []
    for index, audio in enumerate(frames(codec)):
        now = NOW + timedelta(milliseconds=10 * index)
        if index % 7 == 0:
            pending.append(asyncio.ensure_future(live.flush_if_due(now, force=True)))
            if index % 2:
                await asyncio.sleep(0)  # the ticker takes the lock before the frame comes
        if index % 53 == 0:
            pending.append(asyncio.ensure_future(live.pause()))
            pending.append(asyncio.ensure_future(live.resume()))
        found["held" if lock.locked() else "awaited" if lock._waiters else "free"] += 1
        await receive(live, audio, now)
    await asyncio.gather(*pending)
    await live._commit_tracks(NOW, NOW, 0, "committed")
    return vault.records(), found


@pytest.mark.parametrize("codec", ["pcmu", "l16"])
async def test_frames_placed_without_the_lock_are_stored_as_under_it(codec: str) -> None:
    """The same frames at the same instants, some meeting the lock free, some held by a
    flush, some promised to a waiter (a flush or a pause): every track holds the same
    records, at the same offsets, as when every frame took the lock."""
    stored, found = await stream(codec, current_receive)
    before, found_before = await stream(codec, locked_receive)
    assert stored == before
    assert found == found_before
    assert set(found) == {"free", "held", "awaited"}  # every path was taken
    assert sorted(stored) == ["inbound", "outbound"]
    assert all(len(records) > 20 for records in stored.values())  # flushes cut records


# --- AudioSocket: frames taken in one pass per read ----------------------------------------


class ByFrameParser(AudioSocketParser):
    """The parser as it was: each frame checked by ``_check_header``, copied out of the
    buffer, deleted from its front and made an event by ``_event``."""

    def _feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        while buffer:
            if self._state == "stopped":
                raise MalformedMessage(
                    f"data arrived after the stream ended (frame {self._frames + 1})",
                    code="stream_stopped",
                )
            if len(buffer) < 3:
                break
            kind, length = buffer[0], int.from_bytes(buffer[1:3], "big")
            self._check_header(kind, length)
            if len(buffer) < 3 + length:
                break
            payload = bytes(buffer[3 : 3 + length])
            del buffer[: 3 + length]
            self._frames += 1
            events.append(self._event(kind, payload))
        return events


def audiosocket_streams() -> list[bytes]:
    """Streams of good frames, and of good frames with one bad frame or stray byte in them."""
    rng = random.Random(11)
    good = [audio_frame(rng.randbytes(320)) for _ in range(6)]
    head = uuid_frame(str(uuid.UUID(int=7)))
    extras = [
        dtmf_frame("5"),
        encode_frame(KIND_DTMF, b"x"),
        encode_frame(KIND_AUDIO, b"odd"),
        encode_frame(0x42, b""),
        head,
        hangup_frame(),
        encode_frame(KIND_ERROR, b"\x01"),
        b"\x10",
    ]
    streams = [head + b"".join(good), b"".join(good), head + b"".join(good) + hangup_frame()]
    for extra in extras:
        for at in (0, 2, 6):
            streams.append(head + b"".join(good[:at]) + extra + b"".join(good[at:]))
    return streams


@pytest.mark.parametrize("stream", audiosocket_streams(), ids=lambda s: f"{len(s)}b")
def test_audiosocket_frames_taken_per_read_as_frame_by_frame(stream: bytes) -> None:
    """However TCP splits the stream, both parsers give the same events, the same refusal
    (code and message) and leave the same bytes pending."""
    rng = random.Random(len(stream))
    for _ in range(40):
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randrange(6))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        fast, before = AudioSocketParser(), ByFrameParser()
        for piece in pieces:
            got, want = outcome(fast.feed, piece), outcome(before.feed, piece)
            assert got == want
            assert fast.pending() == before.pending()


# --- the Twilio media message read in C (gateway/ingest/_twilio.c) ---------------------------

needs_c_media = pytest.mark.skipif(twilio.C_MEDIA is None, reason="_twilio.c was not built")


def test_the_c_media_reader_is_built_where_the_parts_are_required() -> None:
    """CI (``CALLVAULT_TEST_REQUIRE_PARTS=1``) has gcc and the Python headers: a silent
    fallback there would leave the compiled path untested."""
    if os.environ.get("CALLVAULT_TEST_REQUIRE_PARTS") != "1":
        pytest.skip("only where every part is required (CI)")
    assert twilio.C_MEDIA is not None


CANONICAL = json.dumps(media(), separators=(",", ":"))


def shapes() -> list[str]:
    """Texts around the common shape: every variant above written several ways, and the
    edges of JSON a hand-written reader could get wrong."""
    texts = []
    for msg in VARIANTS:
        texts.append(json.dumps(msg))
        texts.append(json.dumps(msg, separators=(",", ":")))
        texts.append(json.dumps(msg, indent="\t", sort_keys=True))
        texts.append(json.dumps(msg, ensure_ascii=False))
        texts.append(json.dumps(dict(reversed(list(msg.items())))))
    inner = '"track":"inbound","timestamp":"20","payload":"' + PAYLOAD + '"'
    texts += [
        CANONICAL,
        " \r\n\t" + CANONICAL + " \r\n\t",
        CANONICAL + "x",
        CANONICAL + "}",
        CANONICAL[:-1],
        CANONICAL.replace(":", " : ").replace(",", " , "),
        CANONICAL.replace('"media"', '"medi\\u0061"', 1),  # an escaped key: "media"
        CANONICAL.replace('"inbound"', '"in\\u0062ound"'),
        CANONICAL.replace(PAYLOAD, PAYLOAD[:8] + "\\/" + PAYLOAD[10:]),
        CANONICAL.replace('"MZ1"', '"MZ\\"1"'),
        CANONICAL.replace('"MZ1"', '"MZ\\u0000"'),
        CANONICAL.replace('"MZ1"', '"MZ\x01"'),
        CANONICAL.replace('"MZ1"', '"MZ\x7f"'),
        CANONICAL.replace('"MZ1"', '"MZ\u2028é"'),
        CANONICAL.replace('"MZ1"', "1"),
        CANONICAL.replace('"MZ1"', "-0.5e3"),
        CANONICAL.replace('"MZ1"', "01"),
        CANONICAL.replace('"MZ1"', "NaN"),
        CANONICAL.replace('"MZ1"', "null"),
        CANONICAL.replace('"MZ1"', "[1, {}]"),
        CANONICAL.replace('"MZ1"', '{"a": "b"}'),
        CANONICAL.replace('"chunk":"2"', '"chunk":2'),
        CANONICAL.replace('"chunk":"2"', '"chunk":{"x":"y"}'),
        CANONICAL.replace('"chunk":"2"', '"track":"outbound"'),
        CANONICAL.replace('"chunk":"2"', '"payload":"AAAA"'),
        CANONICAL.replace('"chunk":"2"', '"chunk":"2",'),
        CANONICAL.replace('"streamSid":"MZ1"', '"event":"media"'),
        CANONICAL.replace('"streamSid":"MZ1"', '"event":"mark"'),
        CANONICAL.replace('"streamSid":"MZ1"', '"sequenceNumber":"4"'),
        CANONICAL.replace('"streamSid":"MZ1"', '"media":{' + inner + "}"),
        CANONICAL.replace('"streamSid":"MZ1"', '"streamSid":"MZ1","streamSid":"MZ2"'),
        CANONICAL.replace('"streamSid":"MZ1"', '"Event":"mark"'),
        CANONICAL.replace('{"track"', '{ }, "x": {"track"'),
        '{"event":"media","sequenceNumber":"3","media":{}}',
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "}}",
        '{"sequenceNumber":"3","media":{' + inner + '},"event":"media"}',
        '{"event":"media","media":{' + inner + "}}",
        '{"event":"media","sequenceNumber":"3"}',
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "},}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner + ",}}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "}}}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "} {}}",
        '{"event":"media""sequenceNumber":"3","media":{' + inner + "}}",
        '{"event":"media",,"sequenceNumber":"3","media":{' + inner + "}}",
        '{"event":"media","sequenceNumber":"3","media":[{' + inner + "}]}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner + "}}\x00",
        '\ufeff{"event":"media","sequenceNumber":"3","media":{' + inner + "}}",
        '{"event":"media","sequenceNumber":"3","media":{' + inner.replace('"', "'") + "}}",
        "{'event':'media'}",
        "[]",
        "{}",
        "",
        "\ud800",
        CANONICAL.replace('"MZ1"', '"\ud800"'),
    ]
    return texts


def mutations(count: int) -> list[str]:
    """The common message with a few characters JSON cares about inserted, removed or
    replaced at random places (seeded)."""
    rng = random.Random(29)
    alphabet = '{}[]":, \t\n\\u0aé1-.e'
    texts = []
    for _ in range(count):
        text = CANONICAL
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text) + 1)
            what = rng.choice(alphabet)
            op = rng.randrange(3)
            if op == 0:
                text = text[:at] + what + text[at:]
            elif op == 1:
                text = text[:at] + text[at + 1 :]
            else:
                text = text[:at] + what + text[at + 1 :]
        texts.append(text)
    return texts


def general_outcome(monkeypatch: pytest.MonkeyPatch, text: str, tracks: list[str] | None) -> Any:
    with monkeypatch.context() as patched:
        patched.setattr(twilio, "C_MEDIA", None)
        parser = started_twilio(tracks)
        return outcome(parser.receive_text, text), parser.messages


@needs_c_media
@pytest.mark.parametrize("tracks", [None, ["outbound"]])
def test_twilio_messages_read_in_c_are_what_the_general_path_makes_of_them(
    monkeypatch: pytest.MonkeyPatch, tracks: list[str] | None
) -> None:
    """Every text, taken by the C reader or not: the same events or the same refusal (class,
    code, message), the same count of messages, as the general path."""
    texts = shapes() + mutations(20000)
    taken = 0
    for text in texts:
        parser = started_twilio(tracks)
        got = outcome(parser.receive_text, text), parser.messages
        assert got == general_outcome(monkeypatch, text, tracks), text
        taken += twilio.C_MEDIA(text) is not None  # type: ignore[misc]
    assert taken > 100  # the C path was taken, not only fallen back from


@needs_c_media
def test_the_c_reader_gives_what_orjson_reads_or_nothing() -> None:
    """Where it answers, a JSON object that orjson reads to the same fields; the common
    message written in any key order and whitespace is answered."""
    read = twilio.C_MEDIA
    assert read is not None
    for text in shapes() + mutations(20000):
        fields = read(text)
        if fields is None:
            continue
        msg = orjson.loads(text)
        media_ = msg["media"]
        assert msg["event"] == "media"
        assert fields == (
            media_["track"],
            media_["payload"],
            int(media_["timestamp"]),
            int(msg["sequenceNumber"]),
        ), text
    common = media()
    assert read(json.dumps(common)) == ("inbound", PAYLOAD, 20, 3)
    assert read(json.dumps(common, indent=2, sort_keys=True)) == ("inbound", PAYLOAD, 20, 3)
    assert read(json.dumps(dict(reversed(list(common.items()))))) == ("inbound", PAYLOAD, 20, 3)
    with pytest.raises(TypeError):
        read(CANONICAL.encode())
