"""Parser for Twilio Media Streams: the JSON messages of a ``<Stream>`` WebSocket.

Twilio sends text messages only (``connected``, ``start``, ``media``, ``dtmf``, ``mark``,
``stop``; see https://www.twilio.com/docs/voice/media-streams/websocket-messages) with
numbers as strings. :class:`TwilioParser` is fed each message and returns the events it
carries; the aiohttp handler moves messages, authenticates, and maps the IngestError it may
raise to a close code.

Decisions the protocol leaves open:

* A message is checked completely before the parser's state changes, so an error leaves the
  parser as it was (the handler closes the socket anyway).
* ``stop`` before ``start`` is refused like media before start: a stream that never started
  has nothing to stop, and the handler then never sees a StreamStop without a StreamStart.
* Media on a track that ``start.tracks`` did not announce is refused (``bad_track``).
* A missing field or a field of the wrong JSON type is ``bad_field``; a field of the right
  type with a bad value has its own code (``bad_track``, ``bad_base64``, ...). Numeric fields
  are judged by value only: anything but a non-negative integer (int or digit string) is
  refused with the field's code (``bad_timestamp``, or ``bad_field`` for sequenceNumber).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from gateway.errors import MalformedMessage, StreamRefused
from gateway.ingest.events import (
    DTMF_DIGITS,
    Audio,
    Dtmf,
    Event,
    JsonObject,
    Mark,
    StreamStart,
    StreamStop,
    Track,
    WebSocketParser,
    check_text_size,
    decode_json_object,
    first_string,
    get_call_facts,
    get_object,
    get_string,
    get_unsigned,
)

try:
    from gateway.ingest._twilio import media as _c_media  # type: ignore[import-not-found]
except ImportError:  # not built (no C compiler at install): the general path reads all
    _c_media = None

C_MEDIA: Callable[[str], tuple[Track, str, int, int] | None] | None = _c_media
"""``gateway/ingest/_twilio.c``: a media message's fields without building its JSON, for the
common shape only (``None`` for anything else, which is then parsed the general way); the
tests compare both paths message by message (tests/unit/test_ingest_fast_paths.py)."""

_BOTH_TRACKS: tuple[Track, ...] = ("inbound", "outbound")
# start.tracks and media.track say "inbound"/"outbound", and only that is accepted there;
# dtmf.track says "inbound_track"/"outbound_track" (the short form is accepted too).
_TRACK_NAMES: dict[str, Track] = {"inbound": "inbound", "outbound": "outbound"}
_DTMF_TRACK_NAMES: dict[str, Track] = {
    **_TRACK_NAMES,
    "inbound_track": "inbound",
    "outbound_track": "outbound",
}
_EVENTS = "connected, start, media, dtmf, mark, stop"


class TwilioParser(WebSocketParser):
    """One Twilio Media Streams connection: fed its messages, returns their events."""

    def __init__(self) -> None:
        super().__init__()
        self._tracks: tuple[Track, ...] = ()

    def receive_text(self, text: str) -> list[Event]:
        """Parse one text message; raises an IngestError subclass if it is not acceptable."""
        if self._state == "started" and C_MEDIA is not None:
            fields = C_MEDIA(text)  # the message of every 20 ms, read in C: see _twilio.c
            if fields is not None:
                frame = self._next_frame()
                check_text_size(text, frame)
                audio = self._common_media(*fields)
                if audio is not None:
                    return [audio]
                return [self._checked_media(decode_json_object(text, frame), frame)]
        msg, frame = self._next_json(text)
        if self._state == "started" and msg.get("event") == "media":
            # The message of every 20 ms: the checks below would all pass to get here.
            return [self._media(msg, frame)]
        event = get_string(msg, "event", "event", frame)
        if event is None:
            raise MalformedMessage(f"event is missing (frame {frame})", code="bad_field")
        if event == "connected":
            return []
        if event == "start":
            return [self._start(msg, frame)]
        if event not in ("media", "dtmf", "mark", "stop"):
            raise MalformedMessage(
                f"event is not one Twilio sends ({_EVENTS}) (frame {frame})", code="unknown_event"
            )
        if self._state != "started":
            raise StreamRefused(
                f"a {event} event arrived before the start event (frame {frame})",
                code="stream_not_started",
            )
        if event == "media":
            return [self._media(msg, frame)]
        if event == "dtmf":
            return [self._dtmf(msg, frame)]
        if event == "mark":
            return [self._mark(msg, frame)]
        self._state = "stopped"
        return [StreamStop("stop")]

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Twilio never sends binary messages: one is refused (code ``binary_not_expected``)."""
        frame = self._next_frame()
        raise MalformedMessage(
            f"a binary message arrived; Twilio Media Streams sends text only (frame {frame})",
            code="binary_not_expected",
        )

    def _start(self, msg: JsonObject, frame: int) -> StreamStart:
        if self._state == "started":
            raise MalformedMessage(
                f"a second start event arrived (frame {frame})", code="duplicate_start"
            )
        start = _require_object(msg, "start", "start", frame)
        custom = get_object(start, "customParameters", "start.customParameters", frame) or {}
        prefix = "start.customParameters."
        # Our own call id (from the announcement) wins over Twilio's callSid, so a PBX that
        # announced the call can point the stream at it.
        call_id = first_string(custom, ("call_id",), prefix, frame) or first_string(
            start, ("callSid",), "start.", frame
        )
        if call_id is None:
            raise MalformedMessage(
                f"start carries neither start.customParameters.call_id nor start.callSid "
                f"(frame {frame})",
                code="missing_call_id",
            )
        token = get_string(custom, "token", f"{prefix}token", frame) or None
        parameters = get_call_facts(custom, prefix, frame)
        stream_id = get_string(start, "streamSid", "start.streamSid", frame) or get_string(
            msg, "streamSid", "streamSid", frame
        )
        tracks = _start_tracks(start, frame)
        _check_media_format(start, frame)
        self._state = "started"
        self._tracks = tracks
        return StreamStart(
            call_id=call_id,
            stream_id=stream_id or None,
            token=token,
            parameters=parameters,
            codec="pcmu",
            sample_rate=8000,
            channels=1,
            tracks=tracks,
        )

    def _media(self, msg: JsonObject, frame: int) -> Audio:
        """A media message's audio. Its common shape (every field present, numbers as
        digit strings, valid base64) is taken in one pass; anything else goes through
        :meth:`_checked_media`, which refuses what is wrong with the same code and
        message as ever."""
        media = msg.get("media")
        if media.__class__ is dict:
            name = media.get("track")
            encoded = media.get("payload")
            stamp = media.get("timestamp")
            number = msg.get("sequenceNumber")
            track = _TRACK_NAMES.get(name) if name.__class__ is str else None
            if (
                track is not None
                and encoded.__class__ is str
                and stamp.__class__ is str
                and number.__class__ is str
                and _is_digits(stamp)
                and _is_digits(number)
            ):
                audio = self._common_media(track, encoded, int(stamp), int(number))
                if audio is not None:
                    return audio
        return self._checked_media(msg, frame)

    def _common_media(self, track: Track, encoded: str, stamp: int, number: int) -> Audio | None:
        """The audio of a media message of the common shape (read by :meth:`_media` or
        ``C_MEDIA``: its track a track name, its numbers checked), if its track was
        announced and its payload is valid base64; ``None`` otherwise, for
        :meth:`_checked_media` to refuse."""
        if track not in self._tracks:
            return None
        try:
            # strict_mode is what base64.b64decode(validate=True) runs, minus its wrapper;
            # a non-ASCII str raises ValueError there too.
            payload = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        return Audio(track, payload, stamp, number)

    def _checked_media(self, msg: JsonObject, frame: int) -> Audio:
        media = _require_object(msg, "media", "media", frame)
        track = _TRACK_NAMES.get(_require_string(media, "track", "media.track", frame))
        if track is None or track not in self._tracks:
            raise MalformedMessage(
                f"media.track is not one of the tracks start announced "
                f"({', '.join(self._tracks)}) (frame {frame})",
                code="bad_track",
            )
        encoded = _require_string(media, "payload", "media.payload", frame)
        try:
            # validate=True: refuse characters outside the alphabet instead of skipping them.
            # A non-ASCII str raises ValueError, of which binascii.Error is a subclass.
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage(
                f"media.payload is not valid base64 (frame {frame})", code="bad_base64"
            ) from None
        timestamp = get_unsigned(media, "timestamp", "media.timestamp", frame, "bad_timestamp")
        sequence = get_unsigned(msg, "sequenceNumber", "sequenceNumber", frame, "bad_field")
        return Audio(track=track, payload=payload, timestamp_ms=timestamp, sequence=sequence)

    def _dtmf(self, msg: JsonObject, frame: int) -> Dtmf:
        dtmf = _require_object(msg, "dtmf", "dtmf", frame)
        digit = _require_string(dtmf, "digit", "dtmf.digit", frame).upper()
        if digit not in DTMF_DIGITS:
            raise MalformedMessage(
                f"dtmf.digit is not one of 0-9, *, #, A-D (frame {frame})", code="bad_digit"
            )
        name = get_string(dtmf, "track", "dtmf.track", frame)
        track = None if name is None else _DTMF_TRACK_NAMES.get(name)
        if name is not None and track is None:
            raise MalformedMessage(
                f"dtmf.track is not inbound_track or outbound_track (frame {frame})",
                code="bad_track",
            )
        return Dtmf(digit=digit, track=track)

    def _mark(self, msg: JsonObject, frame: int) -> Mark:
        mark = _require_object(msg, "mark", "mark", frame)
        return Mark(_require_string(mark, "name", "mark.name", frame))


def _is_digits(value: str) -> bool:
    """One to eighteen ASCII digits: what ``get_unsigned`` takes from a string."""
    return 0 < len(value) <= 18 and value.isascii() and value.isdigit()


def _require_object(obj: JsonObject, key: str, name: str, frame: int) -> JsonObject:
    value = get_object(obj, key, name, frame)
    if value is None:
        raise MalformedMessage(f"{name} is missing (frame {frame})", code="bad_field")
    return value


def _require_string(obj: JsonObject, key: str, name: str, frame: int) -> str:
    value = get_string(obj, key, name, frame)
    if value is None:
        raise MalformedMessage(f"{name} is missing (frame {frame})", code="bad_field")
    return value


def _start_tracks(start: JsonObject, frame: int) -> tuple[Track, ...]:
    """start.tracks as a tuple in ("inbound", "outbound") order; both when absent."""
    raw = start.get("tracks")
    if raw is None:
        return _BOTH_TRACKS
    if not isinstance(raw, list):
        raise MalformedMessage(f"start.tracks is not a list (frame {frame})", code="bad_field")
    named: set[Track] = set()
    for i, item in enumerate(raw):
        track = _TRACK_NAMES.get(item) if isinstance(item, str) else None
        if track is None:
            raise MalformedMessage(
                f"start.tracks[{i}] is not inbound or outbound (frame {frame})", code="bad_track"
            )
        named.add(track)
    if not named:
        raise MalformedMessage(f"start.tracks is empty (frame {frame})", code="bad_track")
    return tuple(t for t in _BOTH_TRACKS if t in named)


def _check_media_format(start: JsonObject, frame: int) -> None:
    """Refuse anything but 8 kHz mono µ-law (the only format Twilio streams today); a
    missing mediaFormat, or a missing field of it, is taken to be that format."""
    fmt = get_object(start, "mediaFormat", "start.mediaFormat", frame)
    if fmt is None:
        return
    unsupported = "unsupported_format"
    encoding = get_string(fmt, "encoding", "start.mediaFormat.encoding", frame)
    rate = get_unsigned(fmt, "sampleRate", "start.mediaFormat.sampleRate", frame, unsupported)
    channels = get_unsigned(fmt, "channels", "start.mediaFormat.channels", frame, unsupported)
    for name, ok in (
        ("encoding", encoding in (None, "audio/x-mulaw")),
        ("sampleRate", rate in (None, 8000)),
        ("channels", channels in (None, 1)),
    ):
        if not ok:
            raise MalformedMessage(
                f"start.mediaFormat.{name} is not that of 8 kHz mono audio/x-mulaw (frame {frame})",
                code=unsupported,
            )
