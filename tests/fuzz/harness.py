"""What the harnesses share: reading structured input from the fuzzer's bytes, splitting a
byte stream into chunks, and the framing of a sequence of WebSocket messages.

Everything is deterministic in ``data``: a crash input replays the same on any machine.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence

from crypto.errors import CallvaultError

_CODE = re.compile(r"[a-z][a-z0-9_]*")
MAX_ERROR_MESSAGE = 300
"""Characters; an error message that names the field and frame fits. A longer one is likely
echoing what the peer sent, which may be a token (messages must never echo values)."""


class Reader:
    """Consumes ``data`` from the front; once it is used up every read returns zeros (or
    nothing), so any input is a valid input."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def uint(self, size: int) -> int:
        """The next ``size`` bytes as a big-endian unsigned integer."""
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def take(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining())


def chunks(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at places drawn from ``seed`` (1 to 64 bytes, or all of it at once when
    ``seed`` is 0): the same stream as a socket may deliver it."""
    if seed == 0:
        return [data]
    draw = random.Random(seed)  # noqa: S311 - places to cut, not secrets
    out, pos = [], 0
    while pos < len(data):
        size = draw.randint(1, 64)
        out.append(data[pos : pos + size])
        pos += size
    return out


def messages(data: bytes) -> Iterator[tuple[bool, bytes]]:
    """The WebSocket messages framed in ``data``: ``kind u8 | length u16 | body`` each, an
    odd kind a binary message, an even one a text message (whose body is UTF-8)."""
    reader = Reader(data)
    while reader.remaining():
        kind = reader.u8()
        yield bool(kind & 1), reader.take(reader.u16())


def frame_messages(items: Sequence[str | bytes]) -> bytes:
    """The inverse of :func:`messages`, for writing seeds: ``str`` items are text messages."""
    out = bytearray()
    for item in items:
        body = item.encode() if isinstance(item, str) else item
        out += bytes((0 if isinstance(item, str) else 1,)) + len(body).to_bytes(2, "big") + body
    return bytes(out)


def text_of(body: bytes) -> str:
    """A text message's body as the parser gets it. Invalid UTF-8 becomes lone surrogates
    rather than being refused, so the parser meets strings aiohttp would not hand it too."""
    return body.decode("utf-8", "surrogateescape")


def check_error(error: CallvaultError) -> None:
    """A refusal has a stable code and a short message (never an echo of the input)."""
    assert _CODE.fullmatch(error.code), f"error code {error.code!r} is not a stable code"
    message = str(error)
    assert message, "an error without a message"
    assert len(message) <= MAX_ERROR_MESSAGE, f"an error message of {len(message)} characters"
