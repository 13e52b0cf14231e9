"""A track analysed in windows (``ai.pipeline``): speech found once over the whole track,
Whisper's windows cut only in silence, every timestamp on the call's timeline, and memory
that does not grow with the track's length. The model is the ``ScriptedTranscriber``
double (each loud burst is a "word"), fed by the real decoder from µ-law records."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from ai.pipeline import WINDOW, Analyzer
from ai.transcript import TRACKS
from storage.media.codecs import codec
from tests.ai import ScriptedTranscriber, sample_call, ulaw_source

RATE = 8000
FEATURES = ("summary", "sentiment", "talk_listen", "topics")


def bursts(seconds: int, words: list[tuple[float, float]]) -> bytes:
    """µ-law of ``seconds`` of silence with a 300 Hz tone over each (start, end) in s."""
    pcm = np.zeros(seconds * RATE, dtype=np.int16)
    for start, end in words:
        t = np.arange(int(start * RATE), int(end * RATE))
        pcm[t] = (np.sin(2 * np.pi * 300 * t / RATE) * 8000).astype(np.int16)
    return codec("pcmu").encode(pcm)


async def analyse(tracks: dict[str, bytes], window: int, model: Any = None) -> Any:
    analyzer = Analyzer(lambda: model or ScriptedTranscriber(), window=window)
    try:
        return await analyzer.analyse(
            [ulaw_source(track, audio) for track, audio in tracks.items()],
            features=FEATURES,
            language="en",
            categories={},
            duration_s=len(next(iter(tracks.values()))) / RATE,
        )
    finally:
        await analyzer.close()


def spans(analysis: Any) -> list[tuple[str, float, float]]:
    return [(s.track, s.start, s.end) for s in analysis.transcript.segments]


async def test_a_word_across_a_would_be_cut_is_not_cut_and_times_are_the_calls() -> None:
    # Words of 1.3 s every 4 s (pauses of 2.7 s: Whisper chunks of their own) for two
    # minutes, and one across 10.0 s, where a cut every 10 s would fall.
    words = [(at + 0.5, at + 1.8) for at in range(0, 120, 4) if not 8 <= at < 12]
    words += [(9.5, 10.8)]
    words.sort()
    tracks = {"inbound": bursts(120, words), "outbound": bursts(120, [])}
    model = ScriptedTranscriber()
    windowed = await analyse(tracks, 10 * 16000, model)
    whole = await analyse(tracks, 10**9)
    # Each word is one utterance at its place on the call's timeline, in both runs.
    assert [track for track, _, _ in spans(windowed)] == ["inbound"] * len(words)
    found = [(start, end) for _, start, end in spans(windowed)]
    assert np.allclose(found, words, atol=0.021)
    assert spans(windowed) == spans(whole)
    assert windowed.transcript.view() == whole.transcript.view()
    assert windowed.transcript.speech == whole.transcript.speech
    assert windowed.document == whole.document
    # Several windows, and none of their edges inside a word.
    assert len(model.windows) > 5
    edges = [chunk[i] / 16000 for window in model.windows for chunk in window for i in (0, 1)]
    assert not [e for e in edges for start, end in words if start < e < end]


async def test_a_sample_call_in_small_windows_gives_the_whole_track_results() -> None:
    call = sample_call("support")
    tracks = {"inbound": call.inbound, "outbound": call.outbound}
    model = ScriptedTranscriber()
    windowed = await analyse(tracks, 5 * 16000, model)
    whole = await analyse(tracks, 10**9)
    assert len(model.windows) > 4  # cut into windows of at most 5 s of speech
    assert windowed.transcript.view() == whole.transcript.view()
    assert windowed.transcript.speech == whole.transcript.speech
    assert windowed.document == whole.document
    # The default window holds each sample call whole: one read, one Whisper run a track.
    assert 2 * len(call.inbound) <= WINDOW
    default = await analyse(tracks, WINDOW)
    assert default.transcript.view() == whole.transcript.view()
    assert default.working_copy_bytes == whole.working_copy_bytes == 2 * 2 * len(call.inbound) * 4


async def peak_bytes(seconds: int, window: int) -> int:
    """tracemalloc's peak (numpy's buffers included) over one analysis of a sparse call of
    ``seconds``: two words, five times, evenly spread, on each track (the same speech
    whatever the length, so that only the length differs)."""
    every = seconds // 5
    words = [(at + 1.0, at + 2.2) for at in range(0, seconds, every)]
    words += [(at + 4.0, at + 4.6) for at in range(0, seconds, every)]
    tracks = {track: bursts(seconds, sorted(words)) for track in TRACKS}
    tracemalloc.start()
    try:
        analysis = await analyse(tracks, window)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(analysis.transcript.segments) == 2 * 2 * 5
    return peak


async def test_memory_does_not_grow_with_the_length_of_the_call() -> None:
    # Windows of 10 s of speech: both calls fill their windows alike.
    window = 10 * 16000
    short = await peak_bytes(300, window)
    hour = await peak_bytes(3600, window)
    # An hour costs what five minutes cost (the test's µ-law tracks are made before tracing
    # starts, as the vault's objects live outside the worker), within 50 %: when the garbage
    # collector runs moves the peak by some hundred KB (1.05-1.27x measured); anything that
    # grew with the length would be 12x.
    assert hour < 1.5 * short
    hour_of_audio = 3600 * 16000 * 4  # one track at 16 kHz, float32: 230 MB
    assert hour < hour_of_audio / 20
    # The measure sees whole tracks: held whole (one window), five minutes cost more than
    # both tracks' audio.
    assert await peak_bytes(300, 10**9) > 2 * 300 * 16000 * 4


class Multilingual(ScriptedTranscriber):
    """The double as a multilingual model: it records what the language is heard on."""

    multilingual = True

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[np.ndarray] = []

    def detect_language(self, voiced: Any) -> list[tuple[str, float]]:
        self.heard.append(voiced.copy())
        return [("ro", 0.9), ("en", 0.1)]


@pytest.mark.parametrize("window", [10**9, 10 * 16000], ids=["held", "streamed"])
async def test_the_language_is_heard_on_the_first_30_s_of_each_tracks_speech(window: int) -> None:
    # Words of 2 s every 3 s for two minutes: 80 s of speech, more than the 30 s heard.
    words = [(at + 0.5, at + 2.5) for at in range(0, 120, 3)]
    audio = bursts(120, words)
    model = Multilingual()
    analyzer = Analyzer(lambda: model, window=window)
    try:
        analysis = await analyzer.analyse(
            [ulaw_source("inbound", audio), ulaw_source("outbound", bursts(120, []))],
            features=(), language="auto", categories={}, duration_s=120.0,
        )  # fmt: skip
    finally:
        await analyzer.close()
    assert analysis.transcript.language == "ro"
    (heard,) = model.heard  # the silent track has no speech to hear
    # What faster-whisper's detect_language looks at when given all of the track's speech:
    # its chunks back to back, cut at 30 s.
    from ai.audio import resample
    from ai.transcribe import whisper_chunks

    track = resample(codec("pcmu").decode(audio), RATE)
    chunks = whisper_chunks(analysis.transcript.speech["inbound"], len(track))
    voiced = np.concatenate([track[c["start"] : c["end"]] for c in chunks])
    assert np.array_equal(heard, voiced[: 30 * 16000])


async def test_a_failure_part_way_overwrites_every_window_of_speech(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The model fails on the second window: the window it heard, the one that failed, and
    # the one collected with them (from the same block) but not yet handed to it are all
    # overwritten.
    import ai.windows

    collected: list[np.ndarray] = []
    feed = ai.windows.VoicedCollector.feed

    def keep(self: Any, block: Any) -> Any:
        ready = feed(self, block)
        collected.extend(voiced for _, voiced in ready)
        return ready

    monkeypatch.setattr(ai.windows.VoicedCollector, "feed", keep)
    words = [(at + 0.5, at + 1.5) for at in range(0, 60, 3)]

    class FailsThird(ScriptedTranscriber):
        def transcribe(self, voiced: Any, chunks: Any, language: str) -> tuple[Any, ...]:
            if len(self.windows) == 1:
                raise RuntimeError("scripted failure")
            return super().transcribe(voiced, chunks, language)

    with pytest.raises(RuntimeError, match="scripted failure"):
        await analyse({"inbound": bursts(60, words)}, 2 * 16000, FailsThird())
    assert len(collected) == 3  # a 10 s block: three words of their own windows
    assert not any(voiced.any() for voiced in collected)


@pytest.mark.parametrize("window", [10**9, 10 * 16000], ids=["held", "streamed"])
async def test_a_track_failing_part_way_leaves_no_audio_in_the_vad(window: int) -> None:
    # The track's records fail after 30 s (a corrupt segment, a store error, a shredded
    # object): the real Silero VAD had been fed those 30 s (its batch holds up to 320 s),
    # and they are overwritten, as is the last frame's context.
    from ai.audio import TrackSource
    from ai.vad import SileroSpeech
    from storage.media.tracks import TrackRecord

    audio = bursts(60, [(at + 0.5, at + 1.5) for at in range(0, 60, 3)])
    detectors: list[SileroSpeech] = []

    class Silero(ScriptedTranscriber):
        def speech_detector(self) -> Any:
            detectors.append(SileroSpeech(min_silence_ms=500))
            return detectors[-1]

    async def records() -> Any:
        async def each() -> Any:
            for offset in range(0, 30 * RATE, 16000):
                yield TrackRecord(offset, audio[offset : offset + 16000])
            raise OSError("scripted store error")

        return each()

    source = TrackSource(track="inbound", codec=codec("pcmu"), rate=RATE, frames=len(audio),
                         records=records)  # fmt: skip
    analyzer = Analyzer(Silero, window=window)
    try:
        with pytest.raises(OSError, match="scripted store error"):
            await analyzer.analyse(
                [source], features=FEATURES, language="en", categories={}, duration_s=60.0
            )
    finally:
        await analyzer.close()
    (detector,) = detectors
    assert detector._length >= 10 * 16000  # it had been fed (whole blocks of) the 30 s
    assert not detector._batch.any()
    assert not detector._context.any()


async def test_with_auto_language_a_long_track_is_read_a_third_time_up_to_its_language_window() -> (
    None
):
    # A track longer than a window: read for its speech, then for Whisper's windows; with
    # language auto (a multilingual model) once more in between, as far as the end of its
    # first 30 s of speech. ``working_copy_bytes`` counts the decoded audio of every read.
    words = [(at + 0.5, at + 2.5) for at in range(0, 120, 3)]
    tracks = [("inbound", bursts(120, words)), ("outbound", bursts(120, []))]
    wiped = {}
    for language in ("ro", "auto"):
        analyzer = Analyzer(Multilingual, window=10 * 16000)
        try:
            analysis = await analyzer.analyse(
                [ulaw_source(track, audio) for track, audio in tracks],
                features=(), language=language, categories={}, duration_s=120.0,
            )  # fmt: skip
        finally:
            await analyzer.close()
        assert analysis.transcript.language == "ro"
        wiped[language] = analysis.working_copy_bytes
    track = 120 * 16000 * 4
    # Speech pass: both tracks whole; Whisper's pass: the talking track up to its last word.
    assert 3 * track * 0.95 < wiped["ro"] <= 3 * track
    # The language pass: 30 s of Whisper's chunks (words and the pauses inside a chunk),
    # read in whole blocks, then it stops: 40 s here, a third of the track.
    extra = wiped["auto"] - wiped["ro"]
    assert 30 * 16000 * 4 <= extra <= 60 * 16000 * 4
