"""From a call's decoded tracks to its transcript and analysis.

The steps, per call: find each track's speech (Silero VAD), settle the call's language
(the instructions' language, or for ``auto`` the language both tracks' speech most likely
is, weighted by how long each track talks: one track of a short "yes" must not pick the
call's language), transcribe each track, then compute the instructed features. Inbound is
the caller and outbound the agent, so every segment is attributed by its track: no
diarization.

All model work runs in the analyzer's one inference thread (CTranslate2 and ONNX Runtime
block, and one thread per worker process was measured fastest); the model is built there
on first use and lives as long as the analyzer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ai.audio import TrackAudio
from ai.sentiment import sentiment
from ai.summary import ExtractiveSummarizer, Summarizer
from ai.talk import talk_listen
from ai.topics import topics
from ai.transcribe import Transcriber
from ai.transcript import Interval, Segment, Transcript

T = TypeVar("T")

ANALYSIS_FEATURES: tuple[str, ...] = ("summary", "sentiment", "talk_listen", "topics")
"""The features whose results go into the analysis document (the transcript has its own)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """A call's results: the transcript, and the analysis document of the instructed
    features only (keys of the others absent)."""

    transcript: Transcript
    document: dict[str, Any]


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
    ) -> None:
        self._load = load
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

    def _speech_and_language(
        self, tracks: Sequence[TrackAudio], language: str
    ) -> tuple[dict[str, tuple[Interval, ...]], str]:
        model = self._model()
        speech = {track.track: model.detect_speech(track.samples) for track in tracks}
        if language == "auto" and model.multilingual:
            votes = {
                track.track: (
                    sum(i.duration for i in speech[track.track]),
                    model.detect_language(track.samples, speech[track.track]),
                )
                for track in tracks
            }
            language = call_language(votes)
        elif language == "auto" or not model.multilingual:
            language = "en"
        return speech, language

    def _transcribe(
        self, tracks: Sequence[TrackAudio], speech: dict[str, tuple[Interval, ...]], language: str
    ) -> list[Segment]:
        model = self._model()
        segments = [
            Segment(track.track, utterance.start, utterance.end, utterance.text)
            for track in tracks
            for utterance in model.transcribe(track.samples, speech[track.track], language)
        ]
        segments.sort(key=lambda s: (s.start, s.track))
        return segments

    def _features(
        self,
        transcript: Transcript,
        features: Sequence[str],
        categories: Mapping[str, Sequence[str]],
    ) -> dict[str, Any]:
        document: dict[str, Any] = {}
        if "summary" in features:
            document["summary"] = self._summarizer.summarize(transcript)
        if "sentiment" in features:
            document["sentiment"] = sentiment(transcript.segments, transcript.language)
        if "talk_listen" in features:
            document["talk_listen"] = talk_listen(transcript)
        if "topics" in features:
            document["topics"] = topics(transcript.segments, categories, transcript.language)
        return document

    async def analyse(
        self,
        tracks: Sequence[TrackAudio],
        *,
        features: Sequence[str],
        language: str,
        categories: Mapping[str, Sequence[str]],
        duration_s: float,
    ) -> Analysis:
        """Transcribe ``tracks`` and compute ``features`` (the instructed ones)."""
        speech, language = await self._run(self._speech_and_language, tracks, language)
        segments = await self._run(self._transcribe, tracks, speech, language)
        transcript = Transcript(
            language=language,
            model=self._model().model_name,
            duration_s=duration_s,
            segments=tuple(segments),
            speech=speech,
        )
        # Pure Python, up to ~0.1 s for an hour of call: in the inference thread too, so
        # that the event loop (ingest, in ``serve``) never waits for it.
        document = await self._run(self._features, transcript, features, categories)
        return Analysis(transcript=transcript, document=document)
