"""From a call's sealed tracks to its transcript and analysis, in windows.

The steps, per call: find each track's speech (Silero VAD), settle the call's language
(the instructions' language, or for ``auto`` the language both tracks' speech most likely
is, weighted by how long each track talks: one track of a short "yes" must not pick the
call's language), transcribe each track, then compute the instructed features. Inbound is
the caller and outbound the agent, so every segment is attributed by its track: no
diarization.

Why windows: a track decoded whole at 16 kHz costs 230 MB an hour, and the whole-track run
(the VAD's framing, Whisper's features) several times that; a call's timeline is as long as
its timestamps say, so a node running the worker could be made to run out of memory by
one call (issue 15). So nothing here holds a long track: it is read as a stream of blocks
(``ai.audio``) twice, or three times when the language is detected. The first pass feeds
the VAD, which carries its state from block to
block and finds exactly the speech of a whole-track run (``ai.vad``). From that speech
Whisper's chunks and the windows are planned (``ai.windows``: at most ``WINDOW`` samples of
speech each, cut only in pauses); the second pass collects each window's speech as its
blocks go by and transcribes it, then forgets it; timestamps are on the call's timeline.
The language, when it is to be detected (``auto`` on a multilingual model), is heard on the
first 30 s of a track's speech, which is all faster-whisper's detection looks at: collected
by a pass of its own between the two, which stops once it has them (every track's language
is needed before any track is transcribed, and keeping each track's first window for it
would hold up to 20 MB a track longer). The second and third passes stop after the last
block they need. A track no longer than one window (every
sample call) is read once, held, and is one window: its results are the whole-track run's.
Longer ones differ from a whole-track run only in Whisper's text near window boundaries
(each window is a separate Whisper run); the speech, so the talk/listen figures but words
per minute, are identical (``tests/integration/test_ai_windows.py``).

All model work runs in the analyzer's one inference thread (CTranslate2 and ONNX Runtime
block, and one thread per worker process was measured fastest); the model is built there
on first use and lives as long as the analyzer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ai.audio import TrackSource
from ai.redaction.redact import Redactor, Span, redact_transcript
from ai.sentiment import sentiment
from ai.summary import ExtractiveSummarizer, Summarizer
from ai.talk import talk_listen
from ai.topics import topics
from ai.transcribe import Transcriber, Utterance
from ai.transcript import Interval, Segment, Transcript
from ai.vad import VAD_BATCH
from ai.windows import VoicedCollector, Window, language_window, plan_windows
from storage.categoryrules import CategoryDefinition
from storage.redactionrules import RedactionRule

T = TypeVar("T")

WINDOW = VAD_BATCH
"""Samples at 16 kHz (320 s) of one window: a track at most this long is decoded once and
held whole; a longer one is read twice (speech first, then Whisper's windows; with the
language detected, a third time in between, up to its first 30 s of speech) and Whisper
hears at most this much speech at a time. 320 s is one batch of the VAD (faster-whisper's
``encoder_batch_size`` of 10,000 frames), so the VAD is fed the batches the library
would make of the whole track, one at a time; the sample calls (9-33 s) are one window
each, so their results are the whole-track run's by construction. Memory per window: ~20 MB
of audio, the VAD's batch (~23 MB framed) and Whisper's features of its speech (~100 MB of
FFT at the peak, for 320 s of speech). ``bench/transcribe.py --long`` measures the whole
worker."""

ANALYSIS_FEATURES: tuple[str, ...] = ("summary", "sentiment", "talk_listen", "topics")
"""The features whose results go into the analysis document (the transcript has its own)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """A call's results: the transcript, and the analysis document of the instructed
    features only (keys of the others absent)."""

    transcript: Transcript
    document: dict[str, Any]
    working_copy_bytes: int = 0
    """Bytes of decoded audio overwritten (``_Reads``): of every pass, so a long track's
    are counted up to three times."""
    redacted: tuple[Span, ...] = ()
    """What the instructed redaction found (the transcript is already redacted when the
    instructions said so; the audio is the worker's to redact)."""
    original: Transcript | None = None
    """The unredacted transcript, only when the instructions keep it."""


def redaction_view(redaction: RedactionRule, spans: Sequence[Span]) -> dict[str, Any]:
    """What the analysis says of the redaction: what was redacted where, never the value."""
    return {
        "transcript": redaction.transcript,
        "audio": redaction.audio,
        "entities": [span.view() for span in spans],
    }


def _english_persons() -> Callable[[str], list[tuple[int, int]]]:
    from ai.redaction.ner import EnglishPersons

    return EnglishPersons().find


def call_language(votes: Mapping[str, tuple[float, list[tuple[str, float]]]]) -> str:
    """The language of the call: each track's language probabilities weighted by its
    seconds of speech; ``en`` when nobody spoke."""
    scores: dict[str, float] = {}
    for seconds, probabilities in votes.values():
        for language, probability in probabilities:
            scores[language] = scores.get(language, 0.0) + seconds * probability
    if not scores:
        return "en"
    return max(sorted(scores), key=lambda language: scores[language])


class Analyzer:
    """Runs transcription and the features for one call at a time."""

    def __init__(
        self,
        load: Callable[[], Transcriber],
        *,
        summarizer: Summarizer | None = None,
        window: int = WINDOW,
        redactor: Redactor | None = None,
    ) -> None:
        """``redactor``: finds what ``ai.redaction`` instructs (by default with the
        packaged English named-entity model, loaded on first need)."""
        self._load = load
        self._redactor = redactor or Redactor(_english_persons)
        self._window = window
        self._transcriber: Transcriber | None = None
        self._summarizer = summarizer or ExtractiveSummarizer()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callvault-ai")

    def _model(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = self._load()
        return self._transcriber

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def load(self) -> str:
        """Load the model now (else on the first call); returns its name."""
        return await self._run(lambda: self._model().model_name)

    def shutdown(self) -> None:
        """Wait for the inference thread to finish its work and stop it."""
        self._executor.shutdown()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)

    def _features(
        self,
        transcript: Transcript,
        features: Sequence[str],
        categories: Mapping[str, CategoryDefinition],
    ) -> dict[str, Any]:
        document: dict[str, Any] = {}
        if "summary" in features:
            document["summary"] = self._summarizer.summarize(transcript)
        if "sentiment" in features:
            document["sentiment"] = sentiment(transcript.segments, transcript.language)
        if "talk_listen" in features:
            document["talk_listen"] = talk_listen(transcript)
        if "topics" in features:
            document["topics"] = topics(transcript, categories)
        return document

    async def analyse(
        self,
        tracks: Sequence[TrackSource],
        *,
        features: Sequence[str],
        language: str,
        categories: Mapping[str, CategoryDefinition],
        duration_s: float,
        redaction: RedactionRule | None = None,
    ) -> Analysis:
        """Transcribe ``tracks`` and compute ``features`` (the instructed ones), on the
        transcript redacted as ``redaction`` instructs."""
        model = await self._run(self._model)
        speech: dict[str, tuple[Interval, ...]] = {}
        plans: dict[str, list[Window]] = {}
        reads = _Reads()
        try:
            for track in tracks:
                speech[track.track] = await self._detect(model, track, reads)
                plans[track.track] = plan_windows(speech[track.track], track.length, self._window)
            if language == "auto" and model.multilingual:
                votes = {
                    track.track: (
                        sum(i.duration for i in speech[track.track]),
                        await self._language(model, track, plans[track.track], reads),
                    )
                    for track in tracks
                }
                language = call_language(votes)
            elif language == "auto" or not model.multilingual:
                language = "en"
            segments: list[Segment] = []
            for track in tracks:
                utterances = await self._transcribe(
                    model, track, plans[track.track], reads, language
                )
                segments += [
                    Segment(track.track, u.start, u.end, u.text, u.words) for u in utterances
                ]
        finally:  # also when a track fails part-way (a corrupt segment, a store error)
            await asyncio.to_thread(reads.wipe_held)  # off the loop: ~25 ms an hour
        segments.sort(key=lambda s: (s.start, s.track))
        transcript = Transcript(
            language=language,
            model=model.model_name,
            duration_s=duration_s,
            segments=tuple(segments),
            speech=speech,
        )
        spans: tuple[Span, ...] = ()
        original: Transcript | None = None
        if redaction is not None and redaction.enabled:
            found = await self._run(self._redactor.find, transcript, redaction.kinds())
            spans = tuple(found)
            if redaction.transcript:
                original = transcript if redaction.keep_original else None
                transcript = redact_transcript(transcript, spans)
        # Pure Python, up to ~0.1 s for an hour of call: in the inference thread too, so
        # that the event loop (ingest, in ``serve``) never waits for it.
        document = await self._run(self._features, transcript, features, categories)
        if redaction is not None and redaction.enabled:
            document["redaction"] = redaction_view(redaction, spans)
        return Analysis(
            transcript=transcript,
            document=document,
            working_copy_bytes=reads.wiped,
            redacted=spans,
            original=original,
        )

    async def _detect(
        self, model: Transcriber, track: TrackSource, reads: _Reads
    ) -> tuple[Interval, ...]:
        """The first pass over a track: its speech. A track of one window is decoded into
        an array that the next steps cut from (``reads.held``) instead of reading it again."""
        detector = await self._run(model.speech_detector)  # may load Silero: off the loop
        into = None
        if track.length <= self._window:
            into = reads.hold(track.track, track.length)
        try:
            async with contextlib.aclosing(track.blocks(into=into)) as blocks:
                async for block in blocks:
                    await self._run(detector.feed, block)
                    if into is None:
                        reads.wiped += block.nbytes  # overwritten by ``decode_blocks``
            return await self._run(detector.finish)
        finally:  # also when the track fails part-way: the VAD holds up to 320 s of audio
            await self._run(detector.wipe)

    async def _voiced(
        self, track: TrackSource, windows: list[Window], reads: _Reads
    ) -> AsyncGenerator[tuple[Window, npt.NDArray[np.float32]], None]:
        """Each of ``windows`` with its speech, in order: cut from the held track (one
        window long), or from a new pass over the track that stops after the last window.
        The caller wipes each window's speech; a window left half-filled is wiped here."""
        collector = VoicedCollector(windows)
        ready: list[tuple[Window, npt.NDArray[np.float32]]] = []
        try:
            held = reads.held.get(track.track)
            if held is not None:
                ready = collector.feed(held)
                while ready:
                    yield ready.pop(0)
                return
            async with contextlib.aclosing(track.blocks()) as blocks:
                async for block in blocks:
                    reads.wiped += block.nbytes
                    ready = collector.feed(block)
                    while ready:
                        yield ready.pop(0)
                    if collector.done:
                        break
        finally:  # also the windows not handed out when the caller stopped or failed
            for _, voiced in ready:
                voiced.fill(0.0)
            collector.wipe()

    async def _language(
        self, model: Transcriber, track: TrackSource, windows: list[Window], reads: _Reads
    ) -> list[tuple[str, float]]:
        """The track's language probabilities, from its first 30 s of speech."""
        window = language_window(windows)
        if window is None:
            return []
        async with contextlib.aclosing(self._voiced(track, [window], reads)) as pieces:
            async for _, voiced in pieces:
                try:
                    return await self._run(model.detect_language, voiced)
                finally:
                    voiced.fill(0.0)
        return []

    async def _transcribe(
        self,
        model: Transcriber,
        track: TrackSource,
        windows: list[Window],
        reads: _Reads,
        language: str,
    ) -> list[Utterance]:
        """The track's utterances, window by window, on the track's timeline."""
        utterances: list[Utterance] = []
        if not windows:
            return utterances
        async with contextlib.aclosing(self._voiced(track, windows, reads)) as pieces:
            async for window, voiced in pieces:
                try:
                    utterances += await self._run(model.transcribe, voiced, window.chunks, language)
                finally:
                    voiced.fill(0.0)
        return utterances


class _Reads:
    """What one analysis decoded: the tracks it holds whole (those of one window), and
    the bytes of decoded audio overwritten so far (the purge's ``working_copy_bytes``: the
    16 kHz float32 audio of every pass over a track, each pass counted: a held track once,
    a longer one for its speech, its language if detected, and Whisper's windows, the last
    two as far as they read)."""

    def __init__(self) -> None:
        self.held: dict[str, npt.NDArray[np.float32]] = {}
        self.wiped = 0

    def hold(self, track: str, length: int) -> npt.NDArray[np.float32]:
        self.held[track] = np.zeros(length, dtype=np.float32)
        return self.held[track]

    def wipe_held(self) -> None:
        for samples in self.held.values():
            samples.fill(0.0)
            self.wiped += int(samples.nbytes)
        self.held.clear()
