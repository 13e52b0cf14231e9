"""Call summaries: the ``Summarizer`` interface and an extractive summarizer that needs no model.

The pipeline asks a ``Summarizer`` for a short text; ``ExtractiveSummarizer`` answers by
picking the call's most representative sentences, which is cheap, deterministic and never
invents anything. A generative summarizer (say, an OpenAI-compatible endpoint on the LAN) can
implement the same Protocol later.

``ExtractiveSummarizer`` in steps:

1. Sentences: each segment's text split at sentence ends (``ai.text.split_sentences``). A
   sentence keeps its segment's track, and a start estimated from where in the segment's
   text it begins (segment start plus that fraction of the segment's length), so sentences of
   the two tracks interleave in the right order. Repeats (same folded words, e.g. "Okay.")
   are considered once, at their first occurrence.
2. Score: the call's content words (folded, not stopwords of ``ai.text.stopwords``) are
   counted over the whole call; a sentence scores the sum of its content words' counts,
   divided by its number of words (so long sentences do not win by length) and by the
   call's highest word count (so scores lie in [0, 1]). A sentence containing an issue or
   outcome cue (``CUE_WORDS``: "cancel", "refund", "problem", "down", "resolved", ...) gets
   ``CUE_BONUS`` (0.5) on top: those sentences say why the call happened and how it ended.
3. How many: one sentence for every ``SENTENCES_PER_PICK`` (8) in the call, at least
   ``min_sentences`` and at most ``max_sentences``, never more than the call has.
4. The best by score (ties: the earlier sentence), put back in chronological order, each
   prefixed with its speaker (``ai.transcript.SPEAKERS``) and ended with a full stop if it
   had no end punctuation, joined with spaces. A call with no words gives ``""``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from ai.text import PhraseMatcher, split_sentences, stopwords, words
from ai.transcript import SPEAKERS, Transcript

CUE_WORDS: tuple[str, ...] = (
    "cancel",
    "terminate",
    "refund",
    "complaint",
    "problem",
    "issue",
    "broken",
    "error",
    "outage",
    "down",
    "not working",
    "stopped working",
    "charged",
    "invoice",
    "bill",
    "resolved",
    "fixed",
    "solved",
    "escalate",
    "technician",
    "replacement",
    "anulez",
    "anulare",
    "reziliez",
    "reziliere",
    "reclamați",
    "problemă",
    "factură",
    "rezolvat",
    "defect",
    "deranjament",
)
"""Words that mark why a call happened or how it ended (matched like tenant categories)."""

CUE_BONUS = 0.5
SENTENCES_PER_PICK = 8

_CUE_MATCHER = PhraseMatcher.build(CUE_WORDS)


class Summarizer(Protocol):
    """Turns a transcript into a short text summary. Pure and synchronous: the pipeline runs
    it in its worker, off the event loop."""

    def summarize(self, transcript: Transcript) -> str:
        """The summary of ``transcript``; ``""`` when nothing was said."""
        ...


@dataclass(frozen=True, slots=True)
class _Sentence:
    track: str
    start: float
    order: int
    text: str
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ExtractiveSummarizer:
    """Picks the call's most representative sentences (see the module docstring)."""

    max_sentences: int = 5
    min_sentences: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ValueError(
                "need 1 <= min_sentences <= max_sentences, got "
                f"{self.min_sentences} and {self.max_sentences}"
            )

    def summarize(self, transcript: Transcript) -> str:
        sentences = _sentences(transcript)
        if not sentences:
            return ""
        stop = stopwords(transcript.language)
        counts = Counter(word for s in sentences for word in s.words if word not in stop)
        top = max(counts.values(), default=0)

        def score(sentence: _Sentence) -> float:
            content = sum(counts[word] for word in sentence.words if word not in stop)
            base = content / len(sentence.words) / top if top else 0.0
            return base + (CUE_BONUS if _CUE_MATCHER.find(sentence.text) else 0.0)

        wanted = min(
            len(sentences),
            max(
                self.min_sentences,
                min(self.max_sentences, math.ceil(len(sentences) / SENTENCES_PER_PICK)),
            ),
        )
        best = sorted(sentences, key=lambda s: (-score(s), s.start, s.order))[:wanted]
        best.sort(key=lambda s: (s.start, s.order))
        return " ".join(f"{SPEAKERS.get(s.track, s.track)}: {_ended(s.text)}" for s in best)


def _sentences(transcript: Transcript) -> list[_Sentence]:
    """The call's distinct sentences, in time order (step 1 of the module docstring)."""
    sentences: list[_Sentence] = []
    seen: set[tuple[str, ...]] = set()
    ordered = sorted(transcript.segments, key=lambda segment: segment.start)
    for segment in ordered:
        length = max(1, len(segment.text))
        for offset, text in split_sentences(segment.text):
            key = tuple(words(text))
            if not key or key in seen:
                continue
            seen.add(key)
            start = segment.start + (segment.end - segment.start) * offset / length
            sentences.append(_Sentence(segment.track, start, len(sentences), text, key))
    return sentences


def _ended(text: str) -> str:
    return text if text[-1] in ".!?\u2026" else text + "."
