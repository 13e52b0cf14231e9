"""The values every ingest parser returns, and the checks the JSON transports share.

The glue (aiohttp handlers, the AudioSocket server) must not care which transport a call
came in on: it sees one :class:`StreamStart`, then :class:`Audio`, :class:`Dtmf` and
:class:`Mark` events, then one :class:`StreamStop`. The parsers never transcode: ``Audio``
carries the transport's own codec bytes, and ``StreamStart`` says which codec that is.

The helpers at the end (size limit, JSON object decoding, typed field access) are used by
both WebSocket parsers (Twilio and fork), so that both refuse the same bad input with the
same codes and messages. Messages name the offending field and the frame number but never
echo a value the peer sent: a value may be a token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import orjson

from gateway.errors import MalformedMessage, MessageTooBig

MAX_MESSAGE = 64 * 1024
"""Bytes; larger WebSocket messages and AudioSocket payloads are refused."""

Track = Literal["inbound", "outbound"]

DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""The sixteen DTMF symbols; anything else in a DTMF event is refused (code ``bad_digit``)."""

CALL_FACTS = ("from", "to", "direction", "consent")
"""Call facts a stream may carry for a call that was never announced (StreamStart.parameters)."""


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The stream's first event: which call it carries and how its audio is encoded."""

    call_id: str | None
    """The call this stream carries (``None``: the transport has none)."""
    stream_id: str | None
    """Twilio's ``streamSid``; ``None`` for the other transports."""
    # repr=False: events end up in logs and test failure output; a token must not.
    token: str | None = field(repr=False)
    """The stream's credential: a pbx token carried inside it (Twilio
    ``customParameters.token``, fork ``token``), or AudioSocket's id (its UUID frame)."""
    # hash=False: a mapping is not hashable; leaving it out keeps the event hashable.
    parameters: Mapping[str, str] = field(hash=False)
    """Call facts carried in the stream (``from``, ``to``, ``direction``, ``consent`` when
    present), for calls that were not announced. Never contains the token."""
    codec: str
    """``"pcmu"`` (Twilio) or ``"l16"`` (fork, AudioSocket)."""
    sample_rate: int
    """8000 for Twilio and AudioSocket; fork: from its metadata, default 8000."""
    channels: int
    """1, or 2 for fork stereo (interleaved on the wire, split into two tracks here)."""
    tracks: tuple[Track, ...]
    """The tracks this stream's Audio events will carry, in ("inbound", "outbound") order."""

    def __post_init__(self) -> None:
        # A read-only view, so that a frozen event cannot be changed through its mapping.
        # mappingproxy compares equal to a dict with the same items, so tests stay simple.
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))


@dataclass(slots=True, unsafe_hash=True)  # not frozen: its __init__ costs 0.4 µs more a frame
class Audio:
    """A chunk of one track's audio, in the codec StreamStart named, untouched. Not changed
    after it is made (not frozen only for the cost of making one)."""

    track: Track
    payload: bytes
    """Raw codec bytes: µ-law for Twilio, L16 little-endian for fork and AudioSocket, the
    RTP payload (G.711 bytes or one Opus packet) for RTP."""
    timestamp_ms: int | None
    """Twilio ``media.timestamp`` (ms since the stream started); ``None`` elsewhere."""
    sequence: int | None
    """Twilio ``sequenceNumber``, the RTP sequence number; ``None`` elsewhere."""
    offset: int | None = None
    """Where the audio starts on the call's timeline in samples, when the transport knows it
    exactly (RTP: from the packet's timestamp); ``None`` elsewhere."""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A DTMF digit the PBX detected (one of ``0-9 * # A-D``)."""

    digit: str
    track: Track | None


@dataclass(frozen=True, slots=True)
class Mark:
    """A Twilio mark: a named point in the stream (echoed for audio sent back to Twilio)."""

    name: str


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The stream's last event; the parser refuses anything after it."""

    reason: str
    """``"stop"`` (Twilio or fork stop), ``"hangup"`` (AudioSocket 0x00) or
    ``"client_error"`` (an AudioSocket 0xff frame from the peer)."""


Event = StreamStart | Audio | Dtmf | Mark | StreamStop


# --- helpers shared by the JSON (WebSocket) parsers ---------------------------------------

JsonObject = dict[str, object]

# ASCII digits only: str.isdigit() accepts "²" and int() accepts " 5" and "5_0". Eighteen
# digits keep every value far below int()'s digit limit and inside 64 bits.
_UNSIGNED = re.compile(r"[0-9]{1,18}")


def check_text_size(text: str, frame: int) -> None:
    """Refuse a text message whose UTF-8 encoding is over :data:`MAX_MESSAGE` bytes."""
    # Every character is at least one byte, and at most four: only the middle band needs
    # the encoding. surrogatepass: a lone surrogate must count, not raise.
    if len(text) > MAX_MESSAGE or (
        len(text) * 4 > MAX_MESSAGE and len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE
    ):
        raise MessageTooBig(
            f"text message is over {MAX_MESSAGE} bytes (frame {frame})", code="message_too_big"
        )


def check_bytes_size(data: bytes, frame: int) -> None:
    """Refuse a binary message over :data:`MAX_MESSAGE` bytes."""
    if len(data) > MAX_MESSAGE:
        raise MessageTooBig(
            f"binary message of {len(data)} bytes is over {MAX_MESSAGE} bytes (frame {frame})",
            code="message_too_big",
        )


def decode_json_object(text: str, frame: int) -> JsonObject:
    """Decode a text message that must be one JSON object (code ``bad_json`` otherwise)."""
    # orjson rather than json: it refuses nesting deeper than 1024 with a ValueError where
    # json would hit RecursionError, and has no int() digit limit to trip over.
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise MalformedMessage(
            f"text message is not valid JSON (frame {frame})", code="bad_json"
        ) from None
    if not isinstance(value, dict):
        raise MalformedMessage(
            f"text message is JSON but not an object (frame {frame})", code="bad_json"
        )
    return value


class WebSocketParser:
    """What every WebSocket ingest parser does before it reads a message: number it (error
    messages name the frame), refuse anything after the stop, check its size and, for text,
    decode its JSON object."""

    unit = "message"
    """What the protocol calls one message, in error messages."""

    def __init__(self) -> None:
        self._state: Literal["new", "started", "stopped"] = "new"
        self._frame = 0  # messages received, 1-based in error messages

    @property
    def messages(self) -> int:
        """The messages this parser was fed."""
        return self._frame

    def _next_frame(self) -> int:
        self._frame += 1
        if self._state == "stopped":
            raise MalformedMessage(
                f"a {self.unit} arrived after the stop event (frame {self._frame})",
                code="stream_stopped",
            )
        return self._frame

    def _next_json(self, text: str) -> tuple[JsonObject, int]:
        frame = self._next_frame()
        check_text_size(text, frame)
        return decode_json_object(text, frame), frame


def get_object(obj: JsonObject, key: str, name: str, frame: int) -> JsonObject | None:
    """``obj[key]`` if it is a JSON object, ``None`` if absent; ``name`` is its dotted path."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedMessage(f"{name} is not a JSON object (frame {frame})", code="bad_field")
    return value


def get_string(obj: JsonObject, key: str, name: str, frame: int) -> str | None:
    """``obj[key]`` if it is a string, ``None`` if absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedMessage(f"{name} is not a string (frame {frame})", code="bad_field")
    return value


def get_unsigned(obj: JsonObject, key: str, name: str, frame: int, code: str) -> int | None:
    """``obj[key]`` as a non-negative integer: an int, or a string of ASCII digits (Twilio
    sends numbers as strings). ``None`` if absent or null; any other value (a float, a
    negative number, ``true``, ``"abc"``) is refused with ``code``."""
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int subclass: true must not pass as 1.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _UNSIGNED.fullmatch(value):
        return int(value)
    raise MalformedMessage(f"{name} is not a non-negative integer (frame {frame})", code=code)


def get_call_facts(obj: JsonObject, prefix: str, frame: int) -> dict[str, str]:
    """The :data:`CALL_FACTS` present in ``obj`` (strings; empty ones are left out)."""
    facts: dict[str, str] = {}
    for key in CALL_FACTS:
        value = get_string(obj, key, f"{prefix}{key}", frame)
        if value:
            facts[key] = value
    return facts


def first_string(obj: JsonObject, keys: tuple[str, ...], prefix: str, frame: int) -> str | None:
    """The first of ``keys`` present in ``obj`` as a non-empty string (an empty string counts
    as absent: a PBX template with an empty variable should fall through to the next key)."""
    for key in keys:
        value = get_string(obj, key, f"{prefix}{key}", frame)
        if value:
            return value
    return None
