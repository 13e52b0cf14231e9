"""Finding what a tenant instructed redacted in a transcript, and taking it out.

Detection runs per track over all of the track's words in time order, not per segment:
Whisper cuts a card number read slowly into two segments as readily as it cuts a sentence,
and the digits before the cut and after it are one number. Each word keeps its timestamps
(``ai.transcript.Word``), so what is found becomes a ``Span``: the entity type, the track,
and the seconds its words took, which is what the audio redaction silences and what the
analysis lists (never the value).

A transcript is redacted by replacing each span's words, segment by segment, with the
entity's tag (``[CARD_NUMBER]``), once per span and segment; a segment's words are dropped
from the redacted transcript, so nothing downstream can read the original back out of it.
Where spans overlap (a name inside an address) they become one span of the longer's type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ai.redaction.addresses import find_addresses
from ai.redaction.detect import Found, find_emails, find_ibans, find_numbers, merge
from ai.redaction.names import PersonFinder, find_names
from ai.redaction.spoken import lex, normalise
from ai.transcript import TRACKS, Segment, Transcript, Word
from storage.redactionrules import entity_tag

_TRAILING = ",.;:!?"


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of one track that said personal data of type ``entity``."""

    entity: str
    track: str
    start: float
    end: float
    words: tuple[tuple[int, int], ...] = ()
    """``(segment index, word index)`` of each word in it, in the transcript's segments
    (none for a span read back from a stored analysis: ``from_view``)."""

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> Span:
        """A span as ``view`` lists it (the audio redaction of a retried job needs only
        its type, track and time)."""
        return cls(str(view["type"]), str(view["track"]), float(view["start"]), float(view["end"]))

    def view(self) -> dict[str, Any]:
        """As the analysis lists it: type, track and time, never the value."""
        return {
            "type": self.entity,
            "track": self.track,
            "start": round(self.start, 2),
            "end": round(self.end, 2),
        }


def segment_words(segment: Segment) -> tuple[Word, ...]:
    """The segment's timed words, or (a transcript without word timestamps) its text split
    at spaces with the segment's time shared out by characters."""
    if segment.words:
        return segment.words
    pieces = segment.text.split()
    if not pieces:
        return ()
    total = sum(len(piece) + 1 for piece in pieces)
    duration = segment.end - segment.start
    words: list[Word] = []
    position = 0
    for piece in pieces:
        start = segment.start + duration * position / total
        position += len(piece) + 1
        words.append(Word(start, segment.start + duration * position / total, " " + piece))
    return tuple(words)


class Redactor:
    """Finds the instructed entity types in transcripts. ``persons`` builds the English
    named-entity model (blocking, ~1 s), on first need."""

    def __init__(self, persons: Callable[[], PersonFinder] | None = None) -> None:
        self._build_persons = persons
        self._persons: PersonFinder | None = None

    def _english_persons(self) -> PersonFinder | None:
        if self._persons is None and self._build_persons is not None:
            self._persons = self._build_persons()
        return self._persons

    def find(self, transcript: Transcript, kinds: frozenset[str]) -> list[Span]:
        """Every span of ``kinds`` in ``transcript``, in time order."""
        spans: list[Span] = []
        for track in TRACKS:
            refs: list[tuple[int, int]] = []
            words: list[Word] = []
            for s, segment in enumerate(transcript.segments):
                if segment.track == track:
                    for w, word in enumerate(segment_words(segment)):
                        refs.append((s, w))
                        words.append(word)
            if not words:
                continue
            for found in self._find_track(words, kinds, transcript.language):
                spans.append(
                    Span(
                        found.entity,
                        track,
                        words[found.first].start,
                        words[found.last].end,
                        tuple(refs[found.first : found.last + 1]),
                    )
                )
        spans.sort(key=lambda span: (span.start, span.track))
        return spans

    def _find_track(
        self, words: Sequence[Word], kinds: frozenset[str], language: str
    ) -> list[Found]:
        surfaces = [word.text.strip() for word in words]
        glued = [i > 0 and not word.text[:1].isspace() for i, word in enumerate(words)]
        units = normalise(lex(surfaces, glued))
        found = find_numbers(units, kinds)
        if "iban" in kinds:
            found += find_ibans(units)
        if "email" in kinds:
            found += find_emails(units)
        if "person_name" in kinds:
            offsets: list[int] = []
            position = 0
            for surface in surfaces:
                offsets.append(position)
                position += len(surface) + 1
            persons = self._english_persons() if language == "en" else None
            found += find_names(units, " ".join(surfaces), offsets, persons)
        if "postal_address" in kinds:
            found += find_addresses(units)
        return merge(found)


def redact_transcript(transcript: Transcript, spans: Sequence[Span]) -> Transcript:
    """``transcript`` with each span's words replaced by its tag, and no words kept."""
    tagged: dict[tuple[int, int], int] = {}
    for index, span in enumerate(spans):
        for ref in span.words:
            tagged[ref] = index
    segments: list[Segment] = []
    for s, segment in enumerate(transcript.segments):
        words = segment_words(segment)
        if not any((s, w) in tagged for w in range(len(words))):
            segments.append(replace(segment, words=()))
            continue
        text = ""
        previous: int | None = None
        for w, word in enumerate(words):
            at = tagged.get((s, w))
            if at is None:
                text += word.text
            elif at != previous:
                lead = word.text[: len(word.text) - len(word.text.lstrip())] or " "
                text += lead + entity_tag(spans[at].entity)
            last_of_span = w + 1 >= len(words) or tagged.get((s, w + 1)) != at
            if at is not None and last_of_span:
                stripped = word.text.rstrip()
                if stripped and stripped[-1] in _TRAILING:  # the sentence goes on after it
                    text += stripped[-1]
            previous = at
        segments.append(replace(segment, text=text.strip(), words=()))
    return replace(transcript, segments=tuple(segments))
