"""What ``bench/loadgen.py`` sends in each 20 ms frame, and the check of an export against it.

A frame's content is a function of (call, track, frame index) alone, so the load generator
holds no call's audio and the verifier regenerates any call's expected samples, vectorised:

* each (call, track) has a *base block* of 160 samples (seeded by call and track);
* frame ``k`` is the base block with a *marker* written over its first samples: ``k``
  first (never silent), then a fixed sample, the call's number and the track.

Two encodings: 16-bit PCM (fork, AudioSocket) and µ-law bytes (Twilio, RTP). A µ-law
marker is written as bytes whose digits are base 127 (every byte 0x00-0x7e decodes to a
distinct non-zero sample, so the marker can be read back from the decoded export). What
depends on ``k`` comes first and is cached per index for all calls (``IndexCache``), what
depends on the call is one constant per call, so a sender builds a frame with one
concatenation (and a Twilio payload's base64 likewise: ``k``'s 3 µ-law bytes are one base64
group).

``check_track`` compares one exported channel with what was sent: it reads the first
non-silent frame's marker to learn where frame 0 lies on the timeline (RTP tracks start
where the call's clock says, not at 0), then requires every frame sent to lie there
sample for sample, the rest silent. A missing, duplicated, misplaced or altered frame
makes frames differ, and each frame that does not lie exactly at its place is lost.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

FRAME = 160
"""Samples per 20 ms frame at 8 kHz."""
MAGIC = 0x2A5A
"""An L16 marker's third sample."""
MAGIC_ULAW = 0x01
"""A µ-law marker's fourth byte."""
L16_MARK = 5
ULAW_MARK = 7
BASE = 127
"""The radix of µ-law marker digits (bytes 0x00-0x7e, all of which decode non-silent)."""
L16_BASE = 32767

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


# Markers put what depends on the frame index first and what depends on the call after it,
# so that a frame is a per-index piece (cached once for every call) plus a per-call constant.


def l16_marker(call: int, track: int, index: int) -> tuple[int, int, int, int, int]:
    """Samples 0-4 of an L16 frame; sample 0 is never 0 (the first audio is a frame's)."""
    return (index % L16_BASE + 1, index // L16_BASE + 1, MAGIC, call & 0x7FFF, track + 1)


def ulaw_marker(call: int, track: int, index: int) -> bytes:
    """Bytes 0-6 of a µ-law frame: three index digits (one base64 group), then the rest."""
    return bytes((
        index % BASE, index // BASE % BASE, index // (BASE * BASE) % BASE,
        MAGIC_ULAW, call % BASE, call // BASE % BASE, track,
    ))  # fmt: skip


class IndexCache:
    """``piece(index)`` for every index so far, grown in blocks: each index's bytes are
    built once, whichever calls send that index."""

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self.piece = piece
        self.items: list[bytes] = []

    def upto(self, count: int) -> list[bytes]:
        """The list, holding at least ``count`` indexes (the list itself: index it)."""
        items = self.items
        if len(items) < count:
            items.extend(self.piece(i) for i in range(len(items), count + 4096))
        return items


_L16_INDEX = struct.Struct("<2h")
_FORK_INDEX = struct.Struct("<4h")
L16_INDEX = IndexCache(lambda i: _L16_INDEX.pack(*l16_marker(0, 0, i)[:2]))
"""An L16 frame's first 2 samples."""
FORK_INDEX = IndexCache(
    lambda i: _FORK_INDEX.pack(*(v for v in l16_marker(0, 0, i)[:2] for _ in (0, 1)))
)
"""A stereo fork frame's first 8 bytes (both tracks' first 2 samples, interleaved)."""
ULAW_INDEX = IndexCache(lambda i: ulaw_marker(0, 0, i)[:3])
"""A µ-law frame's first 3 bytes."""
ULAW_INDEX_B64 = IndexCache(lambda i: base64.b64encode(ulaw_marker(0, 0, i)[:3]))
"""The base64 of those 3 bytes (a whole base64 group)."""


def l16_rest(call: int, track: int) -> bytes:
    """An L16 frame of (call, track) after its first 2 samples (the same in every frame)."""
    pcm = base_l16(call, track)
    pcm[2:L16_MARK] = l16_marker(call, track, 0)[2:]
    return pcm[2:].astype("<i2").tobytes()


def fork_rest(call: int) -> bytes:
    """A stereo frame of ``call`` after its first 8 bytes, both tracks interleaved."""
    stereo = np.empty((FRAME - 2, 2), "<i2")
    for track in (0, 1):
        stereo[:, track] = np.frombuffer(l16_rest(call, track), "<i2")
    return stereo.tobytes()


def ulaw_rest(call: int, track: int) -> bytes:
    """A µ-law frame of (call, track) after its first 3 bytes."""
    return ulaw_marker(call, track, 0)[3:] + base_ulaw(call, track)[ULAW_MARK:]


class L16Frames:
    """Frames of one (call, track) as 16-bit little-endian bytes (for tests and reference)."""

    def __init__(self, call: int, track: int) -> None:
        self.rest = l16_rest(call, track)

    def frame(self, index: int) -> bytes:
        return L16_INDEX.upto(index + 1)[index] + self.rest


class UlawFrames:
    def __init__(self, call: int, track: int) -> None:
        self.rest = ulaw_rest(call, track)

    def frame(self, index: int) -> bytes:
        return ULAW_INDEX.upto(index + 1)[index] + self.rest


def expected(encoding: str, call: int, track: int, frames: int) -> Pcm:
    """The samples of frames ``0..frames-1`` of (call, track) as the export holds them."""
    k = np.arange(frames)
    full = np.full
    if encoding == "l16":
        block = np.tile(base_l16(call, track), (frames, 1))
        mark = np.stack(
            [k % L16_BASE + 1, k // L16_BASE + 1, full(frames, MAGIC),
             full(frames, call & 0x7FFF), full(frames, track + 1)], axis=1,
        )  # fmt: skip
        block[:, :L16_MARK] = mark
        return block.reshape(-1)
    raw = np.tile(np.frombuffer(base_ulaw(call, track), np.uint8), (frames, 1))
    digits = np.stack(
        [k % BASE, k // BASE % BASE, k // (BASE * BASE) % BASE, full(frames, MAGIC_ULAW),
         full(frames, call % BASE), full(frames, call // BASE % BASE), full(frames, track)],
        axis=1,
    )  # fmt: skip
    raw[:, :ULAW_MARK] = digits
    return ulaw_table()[raw.reshape(-1)]


def read_index(encoding: str, head: Pcm) -> int | None:
    """The frame index the marker at ``head`` (a frame's first samples) carries; ``None``
    when it is not a marker."""
    values = [int(v) for v in head]
    if encoding == "l16":
        if len(values) < L16_MARK or values[2] != MAGIC or values[0] < 1 or values[1] < 1:
            return None
        return (values[1] - 1) * L16_BASE + values[0] - 1
    inverse = ulaw_inverse()
    if len(values) < ULAW_MARK or inverse.get(values[3]) != MAGIC_ULAW:
        return None
    digits = [inverse.get(v) for v in values[:3]]
    if any(d is None for d in digits):
        return None
    low, mid, high = (int(d) for d in digits)  # type: ignore[arg-type]
    return low + BASE * mid + BASE * BASE * high


@dataclass
class TrackCheck:
    frames: int
    matched: int
    failure: str | None = None
    start: int | None = None
    """The sample where the track's frame 0 lies (its frames are checked relative to it;
    where it lies is for the caller to judge: ``aligned``)."""

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
        bad = np.flatnonzero(~same)
        silent = int((~got.reshape(frames, FRAME)[bad].any(axis=1)).sum())
        failure = (
            f"{len(bad)} frames not at their place, {int(bad[0])}..{int(bad[-1])} "
            f"({silent} of them silent there)"
        )
    if exported[start + frames * FRAME :].any():
        failure = failure or "audio after the last frame"
        matched = min(matched, frames - 1)
    return TrackCheck(frames, matched, failure, start)


def aligned(transport: str, checks: list[TrackCheck]) -> str | None:
    """Where each track's frame 0 lies, judged: a WebSocket or AudioSocket call's first
    stream starts its timeline at 0, so every track's frame 0 must lie at sample 0; an RTP
    track starts where the call's clock says its first packet arrived, and a call's two
    tracks, sent in the same tick, within one frame of each other. ``None``: in line."""
    starts = [c.start for c in checks if c.start is not None]
    if not starts:
        return None
    if transport in ("srtp", "rtp"):
        if max(starts) - min(starts) > FRAME:
            return f"tracks out of line: frame 0 at samples {starts}"
        return None
    if any(start != 0 for start in starts):
        return f"frame 0 not at the call's start: at samples {starts}"
    return None
