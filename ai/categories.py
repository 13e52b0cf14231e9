"""Which of the tenant's categories a call is in, and why: every rule of a category, checked
on the call's transcript.

A category (``storage.categoryrules``) is a list of phrases or a set of rules, and a call is
in it when all of its rules match; each match comes with its evidence, so that a tenant who
asks "why is this call in *churn_risk*?" is shown the utterance, the silence or the score.
Definitions (times in seconds from the start of the call):

* The call ends at ``duration_s`` or at its last segment's end, whichever is later. A window
  ``{"first_s": N}`` is ``[0, N]``, ``{"last_s": N}`` is ``[end - N, end]``, both cut to the
  call; no window is the whole call.
* A segment is in a window when any part of it is (it starts before the window ends and ends
  after it starts). Segments carry no word times, so a phrase in a segment that straddles the
  window's edge counts.
* ``phrase``: the rule's phrases found with ``ai.text.PhraseMatcher`` in the segments of the
  rule's track (``either``: both) in the window, as the keyword categories always matched
  (word boundaries, case- and diacritics-insensitive, the last word's inflections).
  Negation is not special: "I don't want to cancel" says "cancel". ``present``: at least one
  match; ``present: false``: none.
* ``non_talk``: the stretches where neither track talks (``ai.talk.silences``, from the VAD's
  speech intervals, so a pause inside a segment counts), each cut to the window; one of at
  least ``min_s`` matches.
* ``interruptions``: the track's interruptions of the other as ``ai.talk`` defines them
  (``either``: both tracks' counted together); at least ``min_count`` match.
* ``sentiment``: each segment scored as ``ai.sentiment`` scores it (intent cues included);
  the score of the track's segments in the window is the mean of those that carry sentiment
  (score not 0), as the sentiment document's aggregates are, or 0 when none does. ``below``
  matches a score strictly below the value, ``above`` strictly above.

A matched category is listed with the keyword categories' fields, so readers of those keep
working: ``count`` is the number of matches of its present-phrase rules (0 when it has none),
``phrases`` the phrases that matched in order of first match, ``tracks`` the matches per
track, ``first_at`` the start of the first segment with a match (without one, the earliest
start of its evidence). ``evidence`` has one entry per rule, in the rules' order, each with
``rule`` (its index), ``type``, ``track``, ``start`` and ``end``:

* a present phrase: the first segment with a match (its track, times and ``text``) and the
  ``phrase`` found; an absent phrase: the window checked, ``value`` 0;
* non-talk: the first long enough stretch (cut to the window), ``track`` null, ``value`` its
  length;
* interruptions: the whole call, ``value`` the count, ``at`` when each interruption began;
* sentiment: the window, ``value`` the score (3 decimals).

Categories are listed by ``count`` descending, then name, as the keyword categories were.
Times are rounded to 2 decimals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from ai.sentiment import score_text
from ai.talk import Span, interruptions_made, silences
from ai.text import PhraseMatcher, fold
from ai.transcript import TRACKS, Transcript
from storage.categoryrules import (
    CategoryRules,
    InterruptionsRule,
    NonTalkRule,
    PhraseRule,
    Rule,
    SentimentRule,
    Window,
    category_rules,
)

_EPSILON = 1e-9
"""Slack for comparing sums of float seconds: a 4.0 s pause may measure 3.9999999999."""


def match_categories(
    transcript: Transcript,
    categories: Mapping[str, Sequence[str] | CategoryRules],
    language: str,
) -> list[dict[str, Any]]:
    """The categories ``transcript`` is in, with their evidence (see the module docstring).
    ``categories`` maps names to either form of ``storage.categoryrules``;
    ``language`` is the one sentiment rules score the segments in."""
    call = _Call(transcript, language)
    found: list[dict[str, Any]] = []
    for name, definition in categories.items():
        outcomes: list[_Outcome] = []
        for index, rule in enumerate(category_rules(definition)):
            outcome = _check(call, index, rule)
            if outcome is None:
                break
            outcomes.append(outcome)
        else:
            found.append(_document(call, name, outcomes))
    found.sort(key=lambda item: (-item["count"], item["name"]))
    return found


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A rule that matched: its evidence, and for a present phrase its matches."""

    evidence: dict[str, Any]
    hits: tuple[tuple[int, str], ...] = ()
    """``(segment index, phrase)`` per match, in the transcript's order."""


class _Call:
    """What the rules read of one call, each part worked out once, when a rule first needs
    it (a call whose categories are all phrases never scores its sentiment)."""

    def __init__(self, transcript: Transcript, language: str) -> None:
        self.transcript = transcript
        self.language = language
        self.end = max([transcript.duration_s, *(s.end for s in transcript.segments)])
        self.folded = [fold(segment.text) for segment in transcript.segments]

    @cached_property
    def scores(self) -> list[float]:
        return [
            score_text(s.text, self.language, track=s.track)[0] for s in self.transcript.segments
        ]

    @cached_property
    def silences(self) -> list[Span]:
        return silences(self.transcript)

    @cached_property
    def interruptions(self) -> dict[str, list[Span]]:
        return interruptions_made(self.transcript)

    def bounds(self, window: Window | None) -> Span:
        """The window's ``(start, end)`` on this call's timeline."""
        if window is None:
            return 0.0, self.end
        if window.first_s is not None:
            return 0.0, min(window.first_s, self.end)
        return max(0.0, self.end - (window.last_s or 0.0)), self.end

    def segments_in(self, track: str, window: Window | None) -> list[int]:
        """The indexes of ``track``'s segments (``either``: all) in ``window``."""
        start, end = self.bounds(window)
        return [
            index
            for index, segment in enumerate(self.transcript.segments)
            if (track == "either" or segment.track == track)
            # No window: every segment, even one a short duration_s would leave out.
            and (window is None or (segment.start < end and segment.end > start))
        ]


@lru_cache(maxsize=1024)
def _matcher(phrases: tuple[str, ...]) -> PhraseMatcher:
    # A tenant's phrases are the same call after call; building the pattern is most of the
    # cost of a small category.
    return PhraseMatcher.build(phrases)


def _check(call: _Call, index: int, rule: Rule) -> _Outcome | None:
    """``rule``'s outcome on ``call``, or None when it does not match."""
    if isinstance(rule, PhraseRule):
        return _check_phrase(call, index, rule)
    if isinstance(rule, NonTalkRule):
        return _check_non_talk(call, index, rule)
    if isinstance(rule, InterruptionsRule):
        return _check_interruptions(call, index, rule)
    return _check_sentiment(call, index, rule)


def _check_phrase(call: _Call, index: int, rule: PhraseRule) -> _Outcome | None:
    matcher = _matcher(rule.phrases)
    segments = call.transcript.segments
    hits = tuple(
        (i, phrase)
        for i in call.segments_in(rule.track, rule.window)
        for phrase in matcher.find_folded(call.folded[i])
    )
    if not rule.present:
        if hits:
            return None
        start, end = call.bounds(rule.window)
        return _Outcome(_evidence(index, rule.type, rule.track, start, end, value=0))
    if not hits:
        return None
    first_index, phrase = min(hits, key=lambda hit: segments[hit[0]].start)
    first = segments[first_index]
    evidence = _evidence(
        index, rule.type, first.track, first.start, first.end, text=first.text, phrase=phrase
    )
    return _Outcome(evidence, hits)


def _check_non_talk(call: _Call, index: int, rule: NonTalkRule) -> _Outcome | None:
    window_start, window_end = call.bounds(rule.window)
    for start, end in call.silences:
        start, end = max(start, window_start), min(end, window_end)
        if end - start >= rule.min_s - _EPSILON:
            return _Outcome(
                _evidence(index, rule.type, None, start, end, value=round(end - start, 2))
            )
    return None


def _check_interruptions(call: _Call, index: int, rule: InterruptionsRule) -> _Outcome | None:
    tracks = TRACKS if rule.track == "either" else (rule.track,)
    made = sorted(span for track in tracks for span in call.interruptions.get(track, []))
    if len(made) < rule.min_count:
        return None
    at = [round(start, 2) for start, _ in made]
    return _Outcome(_evidence(index, rule.type, rule.track, 0.0, call.end, value=len(made), at=at))


def _check_sentiment(call: _Call, index: int, rule: SentimentRule) -> _Outcome | None:
    carrying = [
        score
        for score in (call.scores[i] for i in call.segments_in(rule.track, rule.window))
        if score != 0.0
    ]
    score = sum(carrying) / len(carrying) if carrying else 0.0
    if rule.below is not None and not score < rule.below:
        return None
    if rule.above is not None and not score > rule.above:
        return None
    start, end = call.bounds(rule.window)
    return _Outcome(_evidence(index, rule.type, rule.track, start, end, value=round(score, 3)))


def _evidence(
    index: int, kind: str, track: str | None, start: float, end: float, **details: Any
) -> dict[str, Any]:
    return {
        "rule": index,
        "type": kind,
        "track": track,
        "start": round(start, 2),
        "end": round(end, 2),
        **details,
    }


def _document(call: _Call, name: str, outcomes: Sequence[_Outcome]) -> dict[str, Any]:
    """A matched category's entry (see the module docstring)."""
    # In the transcript's order, so phrases read in order of first match as the keyword
    # matcher's did (sorted() is stable: a segment's matches keep their order in its text).
    hits = sorted((hit for outcome in outcomes for hit in outcome.hits), key=lambda h: h[0])
    matched = [call.transcript.segments[index] for index, _ in hits]
    tracks = dict.fromkeys(TRACKS, 0)
    for segment in matched:
        tracks[segment.track] = tracks.get(segment.track, 0) + 1
    evidence = [outcome.evidence for outcome in outcomes]
    first_at = min((s.start for s in matched), default=min(e["start"] for e in evidence))
    return {
        "name": name,
        "count": len(hits),
        "phrases": list(dict.fromkeys(phrase for _, phrase in hits)),
        "tracks": tracks,
        "first_at": round(float(first_at), 2),
        "evidence": evidence,
    }
