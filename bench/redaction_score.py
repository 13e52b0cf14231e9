"""Scoring redaction against the labelled utterances (``tests/data/redaction/``).

A label is *found* when spans the detector gave the label's type cover every word of it
(a card number half-redacted is not redacted); a detected span is *right* when it overlaps a
label of its type. Recall = found / labels and precision = right / detected, per type.
Shared by ``tests/unit/test_redaction_labelled.py`` (which holds the goals) and
``bench/redaction.py`` (which measures them, also through eSpeak NG and Whisper).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai.redaction.redact import Redactor
from ai.transcript import Segment, Transcript
from storage.redactionrules import ENTITY_TYPES

DATA = Path(__file__).resolve().parent.parent / "tests/data/redaction"
UTTERANCES = DATA / "utterances.json"
HELDOUT = DATA / "heldout.json"
"""158 utterances written, without reading the detector, by another author (EN and RO, as
Whisper writes them), 28 of them holding no personal data but numbers and names of things."""


def load_utterances(path: Path = UTTERANCES) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(path.read_text())["items"]
    return items


def load_heldout(path: Path = HELDOUT) -> list[dict[str, Any]]:
    """The held-out set, written by another author than the detector's, in ``score``'s
    shape: its one form is ``text``."""
    items: list[dict[str, Any]] = json.loads(path.read_text())["items"]
    return [{**item, "labels": {"text": item["labels"]}} for item in items]


def detect_text(redactor: Redactor, text: str, language: str) -> list[tuple[str, int, int]]:
    """What ``redactor`` finds in ``text`` (one segment, words split at spaces), as
    ``(type, first character, end character)``."""
    segment = Segment("inbound", 0.0, float(len(text.split())), text)
    transcript = Transcript(language=language, model="-", duration_s=0.0, segments=(segment,))
    starts: list[tuple[int, int]] = []
    position = 0
    for word in text.split():
        position = text.index(word, position)
        starts.append((position, position + len(word)))
        position += len(word)
    found = []
    for span in redactor.find(transcript, frozenset(ENTITY_TYPES)):
        first, last = span.words[0][1], span.words[-1][1]
        found.append((span.entity, starts[first][0], starts[last][1]))
    return found


@dataclass
class Tally:
    labels: int = 0
    found: int = 0
    detected: int = 0
    right: int = 0
    missed: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.labels if self.labels else 1.0

    @property
    def precision(self) -> float:
        return self.right / self.detected if self.detected else 1.0


def _covered(label: dict[str, Any], spans: Iterable[tuple[str, int, int]], text: str) -> bool:
    start, end = label["start"], label["end"]
    for position in range(start, end):
        if text[position].isspace() or text[position] in ",.":
            continue
        if not any(kind == label["type"] and s <= position < e for kind, s, e in spans):
            return False
    return True


def score(items: Sequence[dict[str, Any]], redactor: Redactor, form: str) -> dict[str, Tally]:
    """Recall and precision per entity type over ``items``' ``form`` (``spoken`` or
    ``written``)."""
    tallies = {entity: Tally() for entity in ENTITY_TYPES}
    for item in items:
        text = item[form]
        labels = item["labels"][form]
        spans = detect_text(redactor, text, item["language"])
        for label in labels:
            tally = tallies[label["type"]]
            tally.labels += 1
            if _covered(label, spans, text):
                tally.found += 1
            else:
                tally.missed.append(f"{item['id']}: {text}")
        for kind, s, e in spans:
            tally = tallies[kind]
            tally.detected += 1
            if any(lb["type"] == kind and s < lb["end"] and lb["start"] < e for lb in labels):
                tally.right += 1
            else:
                tally.wrong.append(f"{item['id']}: {text[s:e]!r} in {text}")
    return tallies


def by_language(
    items: Sequence[dict[str, Any]], redactor: Redactor, form: str
) -> dict[str, dict[str, Tally]]:
    """``score`` for each language's items."""
    return {
        language: score([i for i in items if i["language"] == language], redactor, form)
        for language in sorted({item["language"] for item in items})
    }
