"""What a call is about: its key phrases (RAKE) and the tenant's categories it touches.

Key phrases need no vocabulary: RAKE (Rose et al., 2010, "Automatic keyword extraction from
individual documents") takes the runs of content words between stopwords and punctuation as
candidates, which suits short, unpunctuated-in-places ASR text in two languages. Categories
are the tenant's own vocabulary ("cancellation": ["cancel", "terminate"]) so that calls can be
counted and searched by what the business cares about.

Key phrases:

* Candidates: within each sentence clause (split at punctuation), the maximal runs of words
  that are not stopwords (``ai.text.stopwords(language)``). A run longer than
  ``MAX_PHRASE_WORDS`` (3) is cut into consecutive pieces of at most 3 words from its start.
  Candidates made only of numbers are dropped ("2024", "14"), numbers inside a phrase stay.
* Words are counted in folded form (``factură`` and ``factura`` are one word); a phrase is
  shown in the lower-cased spelling it had most often (ties: the smallest string).
* Word score: ``degree(w) / frequency(w)``, where ``frequency`` counts the word's
  occurrences in candidates and ``degree`` sums the lengths (in words) of the candidates it
  occurs in. Phrase score: the sum of its words' scores (rounded to 2 decimals).
* The top ``MAX_KEY_PHRASES`` (10) distinct phrases by score, then count, then the phrase
  text (so ties are broken the same way every time).

Categories are the tenant's rules, checked by ``ai.categories``, which also gives each match's
evidence. ``match_categories`` here is the keyword matcher categories were before they had
rules, kept as the baseline ``bench/categories.py`` measures them against; a list of phrases
means the same to both. Its phrases are found with ``ai.text.PhraseMatcher``: on word
boundaries, case- and diacritics-insensitively (``ș``/``ş``/``s``, ``ț``/``ţ``/``t``,
``ă``/``â``/``a``, ``î``/``i``); a phrase whose last word has at least 4 letters also matches
any word that word begins, which covers simple inflections (``cancel``: ``cancels``,
``cancelled``, ``cancelling``, ``cancellation``) at the price of the odd unrelated word that
shares the prefix (``cancel`` also matches ``cancellara``). Shorter last words match exactly
(``can`` never matches ``scan`` or ``cannot``). ``count`` is the number of matches in the
call, ``phrases`` the configured phrases that matched (in order of first match), ``tracks``
the matches per track, ``first_at`` the start of the first segment with a match. Only
categories with a match are listed, by count descending, then name.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ai.categories import match_categories as match_category_rules
from ai.text import PhraseMatcher, fold, is_number, stopwords, surface_words, untagged
from ai.transcript import TRACKS, Segment, Transcript
from storage.categoryrules import CategoryRules

MAX_PHRASE_WORDS = 3
MAX_KEY_PHRASES = 10

_CLAUSE_SPLIT_RE = re.compile(r"[.,;:!?\u2026()\[\]\"\u201c\u201d\u201e]+")


def topics(
    transcript: Transcript, categories: Mapping[str, Sequence[str] | CategoryRules]
) -> dict[str, Any]:
    """The topics document of a call (see the module docstring)."""
    language = transcript.language
    return {
        "key_phrases": key_phrases((segment.text for segment in transcript.segments), language),
        "categories": match_category_rules(transcript, categories, language),
    }


def candidate_phrases(text: str, stop: frozenset[str]) -> list[list[tuple[str, str]]]:
    """RAKE's candidates in ``text``: lists of ``(surface, folded)`` words."""
    candidates: list[list[tuple[str, str]]] = []
    for clause in _CLAUSE_SPLIT_RE.split(untagged(text)):  # a tag's [] would split a clause
        run: list[tuple[str, str]] = []
        for surface, folded in [*surface_words(clause), ("", "")]:
            if folded and folded not in stop:
                run.append((surface, folded))
                continue
            for start in range(0, len(run), MAX_PHRASE_WORDS):
                piece = run[start : start + MAX_PHRASE_WORDS]
                if not all(is_number(folded_word) for _, folded_word in piece):
                    candidates.append(piece)
            run = []
    return candidates


def key_phrases(texts: Iterable[str], language: str) -> list[dict[str, Any]]:
    """The top key phrases of ``texts`` with their occurrence counts and RAKE scores."""
    stop = stopwords(language)
    candidates = [phrase for text in texts for phrase in candidate_phrases(text, stop)]

    frequency: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    counts: Counter[tuple[str, ...]] = Counter()
    spellings: dict[tuple[str, ...], Counter[str]] = {}
    for phrase in candidates:
        key = tuple(folded for _, folded in phrase)
        counts[key] += 1
        spellings.setdefault(key, Counter())[" ".join(surface for surface, _ in phrase)] += 1
        for word in key:
            frequency[word] += 1
            degree[word] += len(key)

    ranked: list[tuple[float, int, str]] = []
    for key, count in counts.items():
        score = round(sum(degree[word] / frequency[word] for word in key), 2)
        # Most frequent spelling; among equals the smallest string, for determinism.
        shown = min(spellings[key].items(), key=lambda item: (-item[1], item[0]))[0]
        ranked.append((score, count, shown))
    ranked.sort(key=lambda item: (-item[0], -item[1], item[2]))
    return [
        {"phrase": phrase, "count": count, "score": score}
        for score, count, phrase in ranked[:MAX_KEY_PHRASES]
    ]


def match_categories(
    segments: Sequence[Segment], categories: Mapping[str, Sequence[str]]
) -> list[dict[str, Any]]:
    """The keyword categories found in ``segments``, without evidence (see the module
    docstring)."""
    folded = [fold(segment.text) for segment in segments]
    found: list[dict[str, Any]] = []
    for name, phrases in categories.items():
        matcher = PhraseMatcher.build(phrases)
        count = 0
        matched: dict[str, None] = {}
        tracks = dict.fromkeys(TRACKS, 0)
        first_at: float | None = None
        for segment, text in zip(segments, folded, strict=True):
            hits = matcher.find_folded(text)
            if not hits:
                continue
            count += len(hits)
            matched.update(dict.fromkeys(hits))
            tracks[segment.track] = tracks.get(segment.track, 0) + len(hits)
            first_at = segment.start if first_at is None else min(first_at, segment.start)
        if count:
            found.append(
                {
                    "name": name,
                    "count": count,
                    "phrases": list(matched),
                    "tracks": tracks,
                    "first_at": round(float(first_at if first_at is not None else 0.0), 2),
                }
            )
    found.sort(key=lambda item: (-item["count"], item["name"]))
    return found
