"""Where a track is cut for Whisper: windows of its speech, cut only in silence.

Why this module exists: Whisper is given the speech of a track back to back (faster-whisper's
``collect_chunks``), and what it holds for that, the audio and the features computed from
it (log-mel frames, and the FFT they come from), grows with the speech it is given. So a
long track is transcribed in windows of at most ``window`` samples of speech each. A window
is a run of consecutive chunks of the track's speech (faster-whisper's own chunks,
``ai.transcribe.whisper_chunks``): it ends between two chunks, so in a pause of 2 s or more
where nobody on this track talks, and no word is cut. Only a chunk longer than a window on
its own (minutes of speech without a 2 s pause) is cut inside, at the middle of one of the
pauses of 0.5 s or more that the VAD found in it (the latest that keeps the piece within
the window); a piece of ``window`` samples with no such pause at all is cut where it ends,
the one case in which a word can be cut (then it is noise, music or a monologue of minutes
without a breath, and the cut is at most once per window).

Everything here is sans-I/O (STYLE.md §1): ``plan_windows`` is a pure function of the speech
intervals, and ``VoicedCollector`` is fed the track's consecutive blocks and hands back each
window's speech as soon as its last sample has been fed, holding only the window being
filled. Positions are samples at ``MODEL_RATE`` on the track's (the call's) timeline, so
every timestamp Whisper's output is mapped back to is global, whatever the window.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ai.audio import MODEL_RATE
from ai.transcribe import whisper_chunks
from ai.transcript import Interval

Chunk = tuple[int, int]
"""[start, end) in samples at ``MODEL_RATE`` on the track's timeline."""

LANGUAGE_SAMPLES = 30 * MODEL_RATE
"""What faster-whisper's ``detect_language`` looks at: the first 30 s of what it is given."""


@dataclass(frozen=True, slots=True)
class Window:
    """Chunks of one track that Whisper hears in one run, back to back."""

    chunks: tuple[Chunk, ...]

    @property
    def start(self) -> int:
        return self.chunks[0][0]

    @property
    def end(self) -> int:
        return self.chunks[-1][1]

    @property
    def voiced(self) -> int:
        """Samples of speech: the length of what Whisper hears."""
        return sum(end - start for start, end in self.chunks)


def plan_windows(speech: tuple[Interval, ...], length: int, window: int) -> list[Window]:
    """The track's Whisper chunks (from its tight ``speech`` intervals, over ``length``
    samples) grouped into windows of at most ``window`` samples of speech, in order."""
    if window < 1:
        raise ValueError(f"window must be positive, not {window}")
    windows: list[Window] = []
    current: list[Chunk] = []
    voiced = 0
    gaps = _pause_midpoints(speech)
    for chunk in whisper_chunks(speech, length):
        for piece in _pieces((chunk["start"], chunk["end"]), gaps, window):
            size = piece[1] - piece[0]
            if current and voiced + size > window:
                windows.append(Window(tuple(current)))
                current, voiced = [], 0
            current.append(piece)
            voiced += size
    if current:
        windows.append(Window(tuple(current)))
    return windows


def language_window(windows: list[Window]) -> Window | None:
    """The speech faster-whisper's ``detect_language`` hears of a track given all of it:
    its first ``LANGUAGE_SAMPLES`` of chunks, back to back (``None``: no speech)."""
    chunks: list[Chunk] = []
    left = LANGUAGE_SAMPLES
    for window in windows:
        for start, end in window.chunks:
            if left <= 0:
                break
            chunks.append((start, min(end, start + left)))
            left -= chunks[-1][1] - start
    return Window(tuple(chunks)) if chunks else None


def _pause_midpoints(speech: tuple[Interval, ...]) -> list[int]:
    """The middle of each pause between two tight speech intervals, in samples, sorted."""
    return [
        round((before.end + after.start) / 2 * MODEL_RATE)
        for before, after in zip(speech, speech[1:], strict=False)
    ]


def _pieces(chunk: Chunk, pauses: list[int], window: int) -> list[Chunk]:
    """``chunk`` cut into pieces of at most ``window`` samples, at pauses where it can."""
    start, end = chunk
    pieces: list[Chunk] = []
    while end - start > window:
        limit = start + window
        # The latest pause in (start, limit]: the longest piece that is cut in silence.
        index = bisect.bisect_right(pauses, limit) - 1
        cut = pauses[index] if index >= 0 and pauses[index] > start else limit
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


class VoicedCollector:
    """Fed a track's consecutive blocks from sample 0, returns each window with its speech
    (the window's chunks back to back) once the window's last sample has been fed.

    Holds only the window being filled. The caller owns (and wipes) what is returned; ``wipe``
    overwrites a window left half-filled when the track fails part-way."""

    def __init__(self, windows: list[Window]) -> None:
        self._windows = windows
        self._index = 0
        self._position = 0
        self._buffer: npt.NDArray[np.float32] | None = None

    @property
    def done(self) -> bool:
        """Whether every window has been handed back (the rest of the track is not needed)."""
        return self._index == len(self._windows)

    def feed(self, block: npt.NDArray[np.float32]) -> list[tuple[Window, npt.NDArray[np.float32]]]:
        start, end = self._position, self._position + len(block)
        self._position = end
        ready: list[tuple[Window, npt.NDArray[np.float32]]] = []
        while self._index < len(self._windows):
            window = self._windows[self._index]
            if window.start >= end:
                break
            if self._buffer is None:
                self._buffer = np.zeros(window.voiced, dtype=np.float32)
            at = 0
            for chunk_start, chunk_end in window.chunks:
                lo, hi = max(chunk_start, start), min(chunk_end, end)
                if lo < hi:
                    self._buffer[at + lo - chunk_start : at + hi - chunk_start] = block[
                        lo - start : hi - start
                    ]
                at += chunk_end - chunk_start
            if window.end > end:
                break
            ready.append((window, self._buffer))
            self._buffer = None
            self._index += 1
        return ready

    def wipe(self) -> None:
        if self._buffer is not None:
            self._buffer.fill(0.0)
            self._buffer = None
