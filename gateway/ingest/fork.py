"""Parser for mod_audio_fork (FreeSWITCH) and jambonz ``listen`` WebSocket streams.

Both send one JSON text frame of call metadata first, then binary frames of raw L16
little-endian audio: mono, or stereo with the caller (channel 0) and the callee (channel 1)
interleaved sample by sample. Later text frames are control messages (stop, DTMF).
:class:`ForkParser` is fed the frames and returns events; stereo frames are split into one
Audio event per track, which is byte shuffling, not transcoding.

Decisions the protocol leaves open:

* The call id is taken from ``call_id`` (ours), else ``callSid`` (jambonz), else ``uuid``
  (mod_audio_fork); an empty string counts as absent.
* ``channels`` and jambonz's ``mixType`` may both be given, as may ``sample_rate`` and
  ``sampleRate``; if they disagree the metadata is refused (``unsupported_format``) rather
  than one silently winning.
* A text frame after the metadata that carries a call id key is a second metadata frame
  (``duplicate_start``), even if it also carries an event.
* A frame is checked completely before the parser's state changes.
"""

from __future__ import annotations

from array import array

from gateway.errors import MalformedMessage, StreamRefused
from gateway.ingest.events import (
    DTMF_DIGITS,
    Audio,
    Dtmf,
    Event,
    JsonObject,
    StreamStart,
    StreamStop,
    Track,
    WebSocketParser,
    check_bytes_size,
    first_string,
    get_call_facts,
    get_string,
    get_unsigned,
)

SAMPLE_RATES = frozenset({8000, 16000, 24000, 48000})
"""Sample rates a fork stream may declare (those mod_audio_fork and jambonz offer)."""

_CALL_ID_KEYS = ("call_id", "callSid", "uuid")
_MIX_TYPES = {"mono": 1, "stereo": 2, "mixed": 1}
_TRACKS: dict[int, tuple[Track, ...]] = {1: ("inbound",), 2: ("inbound", "outbound")}


class ForkParser(WebSocketParser):
    """One mod_audio_fork / jambonz listen connection: fed its frames, returns events."""

    unit = "frame"

    def __init__(self) -> None:
        super().__init__()
        self._channels = 1

    def receive_text(self, text: str) -> list[Event]:
        """Parse a text frame: the metadata first, control messages after it."""
        msg, frame = self._next_json(text)
        if self._state == "new":
            return [self._metadata(msg, frame)]
        if any(key in msg for key in _CALL_ID_KEYS):
            raise MalformedMessage(
                f"a second metadata frame (with a call id) arrived (frame {frame})",
                code="duplicate_start",
            )
        # mod_audio_fork users send {"event": ...}; some jambonz apps {"type": ...}.
        kind = msg["event"] if "event" in msg else msg.get("type")
        if kind == "stop":
            self._state = "stopped"
            return [StreamStop("stop")]
        if kind == "dtmf":
            return [_dtmf(msg, frame)]
        raise MalformedMessage(
            f"the text frame is not a stop or dtmf event (frame {frame})", code="unknown_event"
        )

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Parse a binary frame of L16 little-endian audio (interleaved when stereo)."""
        frame = self._next_frame()
        check_bytes_size(data, frame)
        if self._state == "new":
            raise StreamRefused(
                f"audio arrived before the metadata text frame (frame {frame})",
                code="stream_not_started",
            )
        if len(data) % (2 * self._channels):
            raise MalformedMessage(
                f"binary frame of {len(data)} bytes is not a whole number of "
                f"{self._channels}-channel 16-bit samples (frame {frame})",
                code="bad_frame_length",
            )
        if self._channels == 1:
            return [Audio("inbound", bytes(data), None, None)]
        # Read the frame as 16-bit units and take every other one: the bytes of each sample
        # move unchanged (still little-endian), whatever the machine's byte order. An array
        # copies the frame once and slices in C (twice as fast as a cast memoryview's).
        if data.__class__ is bytes:
            samples = array("H", data)
        else:  # a memoryview would be read item by item: any other buffer by its bytes
            samples = array("H")
            samples.frombytes(data)
        return [
            Audio("inbound", samples[0::2].tobytes(), None, None),
            Audio("outbound", samples[1::2].tobytes(), None, None),
        ]

    def _metadata(self, msg: JsonObject, frame: int) -> StreamStart:
        call_id = first_string(msg, _CALL_ID_KEYS, "", frame)
        if call_id is None:
            raise MalformedMessage(
                f"the metadata carries none of call_id, callSid, uuid (frame {frame})",
                code="missing_call_id",
            )
        channels = _channels(msg, frame)
        sample_rate = _sample_rate(msg, frame)
        token = get_string(msg, "token", "token", frame) or None
        parameters = get_call_facts(msg, "", frame)
        self._state = "started"
        self._channels = channels
        return StreamStart(
            call_id=call_id,
            stream_id=None,
            token=token,
            parameters=parameters,
            codec="l16",
            sample_rate=sample_rate,
            channels=channels,
            tracks=_TRACKS[channels],
        )


def _unsupported(message: str, frame: int) -> MalformedMessage:
    return MalformedMessage(f"{message} (frame {frame})", code="unsupported_format")


def _channels(msg: JsonObject, frame: int) -> int:
    channels = get_unsigned(msg, "channels", "channels", frame, "unsupported_format")
    if channels is not None and channels not in _TRACKS:
        raise _unsupported("channels is not 1 or 2", frame)
    mix_type = get_string(msg, "mixType", "mixType", frame)
    mixed = None if mix_type is None else _MIX_TYPES.get(mix_type)
    if mix_type is not None and mixed is None:
        raise _unsupported("mixType is not mono, stereo or mixed", frame)
    if channels is not None and mixed is not None and channels != mixed:
        raise _unsupported("channels and mixType disagree", frame)
    return channels or mixed or 1


def _sample_rate(msg: JsonObject, frame: int) -> int:
    rates = set()
    for key in ("sample_rate", "sampleRate"):
        rate = get_unsigned(msg, key, key, frame, "unsupported_format")
        if rate is not None and rate not in SAMPLE_RATES:
            raise _unsupported(f"{key} is not one of 8000, 16000, 24000, 48000", frame)
        if rate is not None:
            rates.add(rate)
    if len(rates) > 1:
        raise _unsupported("sample_rate and sampleRate disagree", frame)
    return rates.pop() if rates else 8000


def _dtmf(msg: JsonObject, frame: int) -> Dtmf:
    # The brief's shape is {"event": "dtmf", "digit": "5"}; jambonz names the field "dtmf".
    key = "digit" if "digit" in msg else "dtmf"
    digit = get_string(msg, key, key, frame)
    if digit is None:
        raise MalformedMessage(f"the dtmf event has no digit (frame {frame})", code="bad_field")
    if digit.upper() not in DTMF_DIGITS:
        raise MalformedMessage(
            f"{key} is not one of 0-9, *, #, A-D (frame {frame})", code="bad_digit"
        )
    return Dtmf(digit=digit.upper(), track=None)
