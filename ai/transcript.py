"""The values the AI pipeline passes between its steps.

Transcription produces a ``Transcript`` (segments per track, with the speech intervals the
VAD found); the features (talk/listen, sentiment, topics, summary) are pure functions of it.
Tracks are the call's own: ``inbound`` is the caller, ``outbound`` the agent, so speaker
attribution needs no diarization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRACKS: tuple[str, ...] = ("inbound", "outbound")
SPEAKERS: dict[str, str] = {"inbound": "Caller", "outbound": "Agent"}
"""How a summary labels each track's speaker."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A stretch of a track's timeline, in seconds from the start of the call."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Word:
    """One word as Whisper wrote it (with its leading space), on the call's timeline."""

    start: float
    end: float
    text: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One transcribed utterance of one track, and its words where Whisper timed them
    (redaction maps what it finds to the timeline through them; never stored)."""

    track: str
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()

    def view(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "start": round(self.start, 2),
            "end": round(self.end, 2),
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class Transcript:
    """A call's transcript: every track's segments in time order, and each track's speech
    intervals as the VAD found them (the talk/listen metrics' input)."""

    language: str
    model: str
    duration_s: float
    segments: tuple[Segment, ...]
    speech: dict[str, tuple[Interval, ...]] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        """The API's transcript document."""
        return {
            "language": self.language,
            "model": self.model,
            "duration_s": round(self.duration_s, 3),
            "segments": [segment.view() for segment in self.segments],
        }
