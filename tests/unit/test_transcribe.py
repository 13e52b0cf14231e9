"""The transcription step's own logic: faster-whisper's VAD chunks, reproduced from the tight
speech intervals (one VAD pass serves both the talk metrics and Whisper), segments cut at
pauses, and the call's language vote. Silero VAD is faster-whisper's bundled ONNX model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from ai.audio import resample
from ai.pipeline import call_language
from ai.transcribe import (
    TIGHT_MIN_SILENCE_MS,
    WHISPER_MIN_SILENCE_MS,
    WHISPER_PAD_MS,
    Utterance,
    _split_at_pauses,
    whisper_chunks,
)
from ai.transcript import Interval, Word
from storage.media.codecs import codec
from tests.ai import CALLS, sample_call


def test_the_whisper_vad_constants_are_faster_whispers_defaults() -> None:
    defaults = VadOptions()
    assert defaults.min_silence_duration_ms == WHISPER_MIN_SILENCE_MS
    assert defaults.speech_pad_ms == WHISPER_PAD_MS


@pytest.mark.parametrize(
    ("name", "track"),
    [(path.name.split(".")[0], path.name.split(".")[1]) for path in sorted(CALLS.glob("*.ulaw"))],
)
def test_chunks_from_tight_speech_equal_faster_whispers_own(name: str, track: str) -> None:
    call = sample_call(name)
    audio = resample(codec("pcmu").decode(getattr(call, track)), 8000)
    tight = get_speech_timestamps(
        audio, min_silence_duration_ms=TIGHT_MIN_SILENCE_MS, speech_pad_ms=0
    )
    speech = tuple(Interval(c["start"] / 16000, c["end"] / 16000) for c in tight)
    assert whisper_chunks(speech, len(audio)) == get_speech_timestamps(audio, VadOptions())
    # And the tight intervals measure the talk time the script says, within 5 %.
    talk = sum(interval.duration for interval in speech)
    assert talk == pytest.approx(call.talk_s[track], rel=0.05)


def test_chunks_merge_short_pauses_and_pad_like_the_library() -> None:
    speech = (Interval(1.0, 2.0), Interval(3.0, 4.0), Interval(8.0, 9.0), Interval(9.5, 9.9))
    assert whisper_chunks(speech, 16000 * 10) == [
        {"start": 16000 * 1 - 6400, "end": 16000 * 4 + 6400},  # 1 s pause merged
        {"start": 16000 * 8 - 6400, "end": 16000 * 10},  # padding stops at the end
    ]
    # A pause of 2 s or more splits; both sides get the full padding.
    assert whisper_chunks((Interval(1.0, 2.0), Interval(4.5, 5.0)), 16000 * 6) == [
        {"start": 16000 - 6400, "end": 32000 + 6400},
        {"start": 72000 - 6400, "end": 80000 + 6400},
    ]
    assert whisper_chunks((), 100) == []


def word(start: float, end: float, text: str) -> SimpleNamespace:
    return SimpleNamespace(start=start, end=end, word=text)


def test_a_segment_is_cut_where_its_words_cross_into_the_next_chunk() -> None:
    words = [word(1.0, 1.4, " Hello"), word(1.4, 1.9, " there."), word(6.1, 6.5, " Yes")]
    # Each piece keeps its words with their times (redaction maps finds through them).
    assert _split_at_pauses(words, [0.6, 5.8]) == [
        Utterance(1.0, 1.9, "Hello there.", (Word(1.0, 1.4, " Hello"), Word(1.4, 1.9, " there."))),
        Utterance(6.1, 6.5, "Yes", (Word(6.1, 6.5, " Yes"),)),
    ]
    assert _split_at_pauses([], [0.0]) == []


def test_the_call_language_is_weighted_by_talk_time() -> None:
    # A long Romanian caller outweighs a short, uncertain agent.
    votes = {
        "inbound": (20.0, [("ro", 0.7), ("it", 0.2)]),
        "outbound": (2.0, [("en", 0.9), ("ro", 0.05)]),
    }
    assert call_language(votes) == "ro"
    assert call_language({}) == "en"
    assert call_language({"inbound": (0.0, [])}) == "en"
