"""Parser and encoder for Asterisk AudioSocket, the TCP protocol of ``AudioSocket()``.

Each frame is ``kind u8 | payload length u16 big-endian | payload`` (see
https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/). Asterisk sends the
UUID its dialplan gave ``AudioSocket()`` first, then 20 ms frames of signed linear 16-bit
little-endian 8 kHz mono audio, DTMF digits, and a hangup (or an error) at the end. TCP
delivers a byte stream, not frames, so :class:`AudioSocketParser` buffers partial frames
across :meth:`~AudioSocketParser.feed` calls; the asyncio server only moves bytes into it
and answers an IngestError with :func:`error_frame`.

Decisions the protocol leaves open:

* The UUID is the id the gateway minted when the call was announced, a secret: it is the
  stream's only credential. So it travels as ``StreamStart.token`` (kept out of reprs and
  logs), never as a call id; the server finds the call by it.
* A frame is judged as soon as its 3-byte header is in: an unknown kind, a frame out of
  order or a wrong length is refused without waiting for (up to 64 KiB of) payload. The
  outcome is the same wherever the TCP stream was split.
* Every frame but the UUID is refused before the UUID (``stream_not_started``), hangup and
  error included, so the server never sees a StreamStop without a StreamStart.
* A peer's 0xff error frame may carry any payload: Asterisk sends a one-byte code, our own
  :func:`error_frame` an ASCII code.
* After an IngestError the parser stays failed: every later ``feed`` raises the same
  error. A ``feed`` that raises returns none of the events of frames that came before the
  bad one in the same data; the server closes the connection on the error anyway.
"""

from __future__ import annotations

import uuid
from typing import Literal

from gateway.errors import IngestError, MalformedMessage, StreamRefused
from gateway.ingest.events import DTMF_DIGITS, Audio, Dtmf, Event, StreamStart, StreamStop

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_AUDIO = 0x10
KIND_ERROR = 0xFF

_KINDS = frozenset({KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR})
# Payload lengths of the kinds whose payload has a fixed size (0xff's does not).
_FIXED_LENGTHS = {KIND_UUID: 16, KIND_HANGUP: 0, KIND_DTMF: 1}
_HEADER = 3
_MAX_PAYLOAD = 0xFFFF


class AudioSocketParser:
    """One AudioSocket connection: fed the bytes read from it, returns complete frames' events."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state: Literal["new", "started", "stopped"] = "new"
        self._frames = 0  # complete frames parsed; the next one is self._frames + 1
        self._failed: IngestError | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes read from the socket; return the events of the frames they complete."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except IngestError as e:
            self._failed = e
            raise

    def pending(self) -> int:
        """Bytes of an incomplete frame buffered; non-zero at EOF means a truncated frame."""
        return len(self._buffer)

    def _feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        end, at = len(buffer), 0  # ``at``: where the next frame starts
        try:
            while at < end:
                if self._state == "stopped":
                    raise MalformedMessage(
                        f"data arrived after the stream ended (frame {self._frames + 1})",
                        code="stream_stopped",
                    )
                if end - at < _HEADER:
                    break
                kind, length = buffer[at], buffer[at + 1] << 8 | buffer[at + 2]
                if kind != KIND_AUDIO or length & 1 or self._state != "started":
                    self._check_header(kind, length)  # an audio frame of a started stream passes
                stop = at + _HEADER + length
                if stop > end:
                    break
                payload = bytes(buffer[at + _HEADER : stop])
                at = stop
                self._frames += 1
                if kind == KIND_AUDIO:
                    events.append(Audio("inbound", payload, None, None))
                else:
                    events.append(self._event(kind, payload))
        finally:
            # The frames taken go, once per read (cheap: CPython moves the start).
            del buffer[:at]
        return events

    def _check_header(self, kind: int, length: int) -> None:
        frame = self._frames + 1
        if kind not in _KINDS:
            raise MalformedMessage(
                f"frame type 0x{kind:02x} is not one AudioSocket defines (frame {frame})",
                code="unknown_frame_type",
            )
        if kind == KIND_UUID and self._state == "started":
            raise MalformedMessage(
                f"a second UUID frame arrived (frame {frame})", code="duplicate_start"
            )
        if kind != KIND_UUID and self._state == "new":
            raise StreamRefused(
                f"a frame of type 0x{kind:02x} arrived before the UUID frame (frame {frame})",
                code="stream_not_started",
            )
        expected = _FIXED_LENGTHS.get(kind)
        if expected is not None and length != expected:
            raise MalformedMessage(
                f"frame of type 0x{kind:02x} has a {length}-byte payload, not {expected} bytes "
                f"(frame {frame})",
                code="bad_frame_length",
            )
        if kind == KIND_AUDIO and length % 2:
            raise MalformedMessage(
                f"audio frame has an odd payload length {length}, not whole 16-bit samples "
                f"(frame {frame})",
                code="bad_frame_length",
            )

    def _event(self, kind: int, payload: bytes) -> Event:
        if kind == KIND_AUDIO:
            return Audio(track="inbound", payload=payload, timestamp_ms=None, sequence=None)
        if kind == KIND_UUID:
            self._state = "started"
            return StreamStart(
                call_id=None,
                stream_id=None,
                token=str(uuid.UUID(bytes=payload)),
                parameters={},
                codec="l16",
                sample_rate=8000,
                channels=1,
                tracks=("inbound",),
            )
        if kind == KIND_DTMF:
            digit = chr(payload[0])
            if digit not in DTMF_DIGITS:
                raise MalformedMessage(
                    f"DTMF frame carries 0x{payload[0]:02x}, not one of 0-9, *, #, A-D "
                    f"(frame {self._frames})",
                    code="bad_digit",
                )
            return Dtmf(digit=digit, track=None)
        self._state = "stopped"
        return StreamStop("hangup" if kind == KIND_HANGUP else "client_error")


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket frame. A kind outside 0..255 or a payload over 65535 bytes is a bug
    of the caller (nothing a peer sent), so it raises ValueError."""
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"frame kind {kind} does not fit in one byte")
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {_MAX_PAYLOAD} bytes")
    return bytes((kind,)) + len(payload).to_bytes(2, "big") + payload


def uuid_frame(audiosocket_id: str) -> bytes:
    """The opening frame: the call's AudioSocket id (any form ``uuid.UUID`` reads) as 16
    bytes."""
    return encode_frame(KIND_UUID, uuid.UUID(audiosocket_id).bytes)


def audio_frame(pcm: bytes) -> bytes:
    """An audio frame of signed linear 16-bit little-endian 8 kHz mono samples."""
    if len(pcm) % 2:
        raise ValueError(f"audio of {len(pcm)} bytes is not whole 16-bit samples")
    return encode_frame(KIND_AUDIO, pcm)


def dtmf_frame(digit: str) -> bytes:
    """A DTMF frame carrying one of 0-9, *, #, A-D."""
    if digit not in DTMF_DIGITS:
        raise ValueError("a DTMF digit is one of 0-9, *, #, A-D")
    return encode_frame(KIND_DTMF, digit.encode("ascii"))


def hangup_frame() -> bytes:
    """The frame that ends the stream."""
    return encode_frame(KIND_HANGUP)


def error_frame(code: str) -> bytes:
    """An 0xff error frame with our error code as ASCII payload. This is our extension:
    Asterisk reads only the frame type and hangs up, but a peer of ours can log the code."""
    return encode_frame(KIND_ERROR, code.encode("ascii"))
