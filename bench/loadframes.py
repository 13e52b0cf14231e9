"""What ``bench/loadgen.py`` sends in each 20 ms frame, and the check of an export against it.

A frame's content is a function of (call, track, frame index) alone, so the load generator
holds no call's audio and the verifier regenerates any call's expected samples, vectorised:

* each (call, track) has a *base block* of 160 samples (seeded by call and track);
* frame ``k`` is the base block with a *marker* written over its first samples: a fixed
  non-silent sample, the call's number, the track and ``k``.

Two encodings: 16-bit PCM (fork, AudioSocket) and µ-law bytes (Twilio, RTP). A µ-law
marker is written as bytes whose digits are base 127 (every byte 0x00-0x7e decodes to a
distinct non-zero sample, so the marker can be read back from the decoded export).

``check_track`` compares one exported channel with what was sent: it reads the first
non-silent frame's marker to learn where frame 0 lies on the timeline (RTP tracks start
where the call's clock says, not at 0), then requires every frame sent to lie there
sample for sample, the rest silent. A missing, duplicated, misplaced or altered frame
makes frames differ, and each frame that does not lie exactly at its place is lost.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

FRAME = 160
"""Samples per 20 ms frame at 8 kHz."""
MAGIC = 0x2A5A
"""The first sample of every L16 frame (never silent)."""
MAGIC_ULAW = 0x01
"""The first byte of every µ-law frame (decodes to a loud negative sample, never silent)."""
L16_MARK = 5
ULAW_MARK = 7
BASE = 127
"""The radix of µ-law marker digits (bytes 0x00-0x7e)."""

Pcm = npt.NDArray[np.int16]


@cache
def ulaw_table() -> npt.NDArray[np.int16]:
    """G.711 µ-law byte -> 16-bit sample (the standard decoding table)."""
    byte = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign, -magnitude, magnitude).astype(np.int16)


@cache
def ulaw_inverse() -> dict[int, int]:
    """Decoded sample -> µ-law byte, for marker digits (0x00-0x7e)."""
    table = ulaw_table()
    return {int(table[b]): b for b in range(BASE)}


def base_l16(call: int, track: int) -> Pcm:
    rng = np.random.default_rng(1_000_003 * call + 2 * track + 1)
    return rng.integers(-8000, 8000, FRAME, dtype=np.int16)


def base_ulaw(call: int, track: int) -> bytes:
    rng = np.random.default_rng(1_000_003 * call + 2 * track + 1)
    return bytes(rng.integers(0, 256, FRAME, dtype=np.uint8))


def l16_marker(call: int, track: int, index: int) -> tuple[int, int, int, int, int]:
    return (MAGIC, call & 0x7FFF, track + 1, index & 0x7FFF, (index >> 15) + 1)


def ulaw_marker(call: int, track: int, index: int) -> bytes:
    return bytes((
        MAGIC_ULAW, call % BASE, call // BASE % BASE, track,
        index % BASE, index // BASE % BASE, index // (BASE * BASE) % BASE,
    ))  # fmt: skip


L16_PACK = struct.Struct(f"<{L16_MARK}h")


class L16Frames:
    """Frames of one (call, track) as 16-bit little-endian bytes: marker + the base's tail."""

    def __init__(self, call: int, track: int) -> None:
        self.call, self.track = call, track
        self.tail = base_l16(call, track)[L16_MARK:].astype("<i2").tobytes()

    def frame(self, index: int) -> bytes:
        return L16_PACK.pack(*l16_marker(self.call, self.track, index)) + self.tail


class UlawFrames:
    def __init__(self, call: int, track: int) -> None:
        self.call, self.track = call, track
        self.tail = base_ulaw(call, track)[ULAW_MARK:]

    def frame(self, index: int) -> bytes:
        return ulaw_marker(self.call, self.track, index) + self.tail


def expected(encoding: str, call: int, track: int, frames: int) -> Pcm:
    """The samples of frames ``0..frames-1`` of (call, track) as the export holds them."""
    k = np.arange(frames)
    if encoding == "l16":
        block = np.tile(base_l16(call, track), (frames, 1))
        mark = np.stack(
            [np.full(frames, MAGIC), np.full(frames, call & 0x7FFF), np.full(frames, track + 1),
             k & 0x7FFF, (k >> 15) + 1], axis=1,
        )  # fmt: skip
        block[:, :L16_MARK] = mark
        return block.reshape(-1)
    raw = np.tile(np.frombuffer(base_ulaw(call, track), np.uint8), (frames, 1))
    digits = np.stack(
        [np.full(frames, MAGIC_ULAW), np.full(frames, call % BASE),
         np.full(frames, call // BASE % BASE), np.full(frames, track),
         k % BASE, k // BASE % BASE, k // (BASE * BASE) % BASE], axis=1,
    )  # fmt: skip
    raw[:, :ULAW_MARK] = digits
    return ulaw_table()[raw.reshape(-1)]


def read_index(encoding: str, head: Pcm) -> int | None:
    """The frame index the marker at ``head`` (a frame's first samples) carries; ``None``
    when it is not a marker."""
    values = [int(v) for v in head]
    if encoding == "l16":
        if len(values) < L16_MARK or values[0] != MAGIC:
            return None
        return (values[4] - 1) << 15 | values[3]
    inverse = ulaw_inverse()
    if len(values) < ULAW_MARK or inverse.get(values[0]) != MAGIC_ULAW:
        return None
    digits = [inverse.get(v) for v in values[4:7]]
    if any(d is None for d in digits):
        return None
    low, mid, high = (int(d) for d in digits)  # type: ignore[arg-type]
    return low + BASE * mid + BASE * BASE * high


@dataclass
class TrackCheck:
    frames: int
    matched: int
    failure: str | None = None

    @property
    def lost(self) -> int:
        return self.frames - self.matched


def check_track(exported: Pcm, encoding: str, call: int, track: int, frames: int) -> TrackCheck:
    """How many of the ``frames`` sent lie in ``exported`` (one channel) at their place."""
    if not frames:
        return TrackCheck(0, 0, "audio on a track that sent nothing" if exported.any() else None)
    loud = np.flatnonzero(exported)
    if not len(loud):
        return TrackCheck(frames, 0, "the track is silent")
    first = int(loud[0])
    mark = L16_MARK if encoding == "l16" else ULAW_MARK
    index = read_index(encoding, exported[first : first + mark])
    if index is None or index >= frames:
        return TrackCheck(frames, 0, f"no frame marker at the first audio (sample {first})")
    start = first - index * FRAME
    if start < 0:
        return TrackCheck(frames, 0, f"frame {index} lies at sample {first}, before its place")
    want = expected(encoding, call, track, frames).reshape(frames, FRAME)
    window = exported[start : start + frames * FRAME]
    got = np.zeros(frames * FRAME, np.int16)
    got[: len(window)] = window
    same = (got.reshape(frames, FRAME) == want).all(axis=1)
    matched = int(same.sum())
    failure = None
    if matched < frames:
        failure = f"frame {int(np.flatnonzero(~same)[0])} is not at its place"
    if exported[start + frames * FRAME :].any():
        failure = failure or "audio after the last frame"
        matched = min(matched, frames - 1)
    return TrackCheck(frames, matched, failure)
