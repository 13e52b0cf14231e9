"""Where a track is cut for Whisper (``ai.windows``): only in silence, with every chunk of
speech in exactly one window, and each window's speech collected from the track's blocks
on the call's timeline."""

from __future__ import annotations

import numpy as np
import pytest

from ai.transcribe import whisper_chunks
from ai.transcript import Interval
from ai.windows import LANGUAGE_SAMPLES, VoicedCollector, Window, language_window, plan_windows

RATE = 16000


def talk(seed: int, seconds: float) -> tuple[Interval, ...]:
    """Tight speech intervals of 0.3-4 s, with pauses of 0.5-5 s, over ``seconds``."""
    draw = np.random.default_rng(seed)
    intervals, at = [], float(draw.uniform(0, 2))
    while True:
        end = at + float(draw.uniform(0.3, 4))
        if end > seconds:
            return tuple(intervals)
        intervals.append(Interval(round(at, 3), round(end, 3)))
        at = end + float(draw.uniform(0.5, 5))


def inside(point: int, speech: tuple[Interval, ...]) -> bool:
    """Whether ``point`` (samples) falls strictly inside a speech interval."""
    return any(i.start * RATE < point < i.end * RATE for i in speech)


@pytest.mark.parametrize("seed", range(5))
def test_windows_are_whole_chunks_and_end_only_in_pauses(seed: int) -> None:
    speech = talk(seed, 300)
    length = 300 * RATE
    windows = plan_windows(speech, length, 20 * RATE)
    assert len(windows) > 5
    chunks = [(c["start"], c["end"]) for c in whisper_chunks(speech, length)]
    # Every chunk of speech in exactly one window, in order, none cut (no chunk is longer
    # than a window here): so the windows end between chunks, in pauses of 2 s or more.
    assert [chunk for window in windows for chunk in window.chunks] == chunks
    for window in windows:
        assert window.voiced <= 20 * RATE
    for before, after in zip(windows, windows[1:], strict=False):
        assert not inside(before.end, speech) and not inside(after.start, speech)
        silence = [i for i in speech if before.end / RATE < i.end and i.start < after.start / RATE]
        assert silence == []
        # The pause between the two windows' speech is a Whisper pause (>= 2 s).
        last = max(i.end for i in speech if i.end * RATE <= before.end)
        first = min(i.start for i in speech if i.start * RATE >= after.start)
        assert first - last >= 2.0


def test_a_chunk_longer_than_a_window_is_cut_in_the_middle_of_its_pauses() -> None:
    # One minute of talk with pauses of 0.6 s (too short to end a Whisper chunk): one chunk.
    speech = tuple(Interval(round(t * 3.6, 3), round(t * 3.6 + 3.0, 3)) for t in range(17))
    windows = plan_windows(speech, 70 * RATE, 10 * RATE)
    pieces = [chunk for window in windows for chunk in window.chunks]
    assert len(whisper_chunks(speech, 70 * RATE)) == 1
    assert len(pieces) > 5
    for (_, end), (start, _) in zip(pieces, pieces[1:], strict=False):
        assert end == start  # contiguous: nothing of the chunk is lost
        assert not inside(end, speech)  # ... and cut in a pause
        assert any(abs(end / RATE - (i.end + 0.3)) < 0.001 for i in speech)  # its middle
    assert all(end - start <= 10 * RATE for start, end in pieces)


def test_speech_without_any_pause_is_cut_at_the_window() -> None:
    # 25 s with no pause at all (noise, music): the only case in which a cut is in speech.
    windows = plan_windows((Interval(1.0, 26.0),), 30 * RATE, 10 * RATE)
    assert [w.chunks for w in windows] == [
        ((int(0.6 * RATE), int(10.6 * RATE)),),
        ((int(10.6 * RATE), int(20.6 * RATE)),),
        ((int(20.6 * RATE), int(26.4 * RATE)),),
    ]


def test_no_speech_is_no_window_and_a_window_must_be_positive() -> None:
    assert plan_windows((), 10 * RATE, RATE) == []
    assert language_window([]) is None
    with pytest.raises(ValueError, match="window"):
        plan_windows((), 10, 0)


def test_the_language_is_heard_on_the_first_30_s_of_speech() -> None:
    speech = talk(7, 300)
    windows = plan_windows(speech, 300 * RATE, 20 * RATE)
    window = language_window(windows)
    assert window is not None
    assert window.voiced == LANGUAGE_SAMPLES
    chunks = [chunk for w in windows for chunk in w.chunks]
    assert window.chunks[:-1] == tuple(chunks[: len(window.chunks) - 1])
    assert window.chunks[-1][0] == chunks[len(window.chunks) - 1][0]


def test_each_windows_speech_is_collected_from_the_blocks_as_soon_as_it_is_complete() -> None:
    length = 120 * RATE
    track = np.random.default_rng(3).uniform(-1, 1, length).astype(np.float32)
    windows = plan_windows(talk(3, 120), length, 15 * RATE)
    collector = VoicedCollector(windows)
    got: list[tuple[Window, np.ndarray]] = []
    position = 0
    for size in np.random.default_rng(4).integers(1, 8 * RATE, 1000):
        block = track[position : position + int(size)].copy()
        position += len(block)
        ready = collector.feed(block)
        for window, _ in ready:
            assert window.end <= position  # complete, and handed back at once:
            assert window.end > position - len(block)  # in the block that completed it
        got += ready
        if position >= length:
            break
    assert collector.done
    assert [window for window, _ in got] == windows
    for window, voiced in got:
        expected = np.concatenate([track[start:end] for start, end in window.chunks])
        assert np.array_equal(voiced, expected)
