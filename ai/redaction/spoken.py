"""Spoken forms into written ones, with the way back to the words that said them.

A caller reads a card number as "four five three two, one two three four, ..." or "patru
cinci trei doi, ...", an e-mail address as "ion dot popescu at gmail dot com" or "ion punct
popescu arond yahoo punct ro", and Whisper writes what it heard: digits as words or as
digits, grouped as it likes, with fillers ("um", "ăă") and commas between the groups. The
detectors (``ai.redaction.detect``) look for written forms (digit strings, ``@``, ``.``), so
this module turns a track's words into *units*: digit groups, words, symbols, each of which
remembers the first and last word (``first``, ``last``: indexes into the track's words) it
came from, so a detected span maps back to words and through them to the timeline.

Number words, English and Romanian, folded (``ai.text.fold``: ``două`` is ``doua``):

* a digit word (``four``, ``patru``, ``oh`` next to other numbers) is one digit;
* a teen (``fourteen``, ``paisprezece``, colloquial ``paișpe``) two;
* a tens word (``forty``, ``patruzeci``) waits for a digit word (``forty five``,
  ``patruzeci și cinci``: 45), else is itself (40);
* ``hundred``/``sută``/``sute`` multiplies the digit before it and waits for tens and
  digits (``two hundred and five``: 205; ``o sută douăzeci``: 120);
* ``thousand``/``mie``/``mii`` multiplies what came before (``two thousand twenty four``:
  2024);
* ``double``/``triple`` repeat the next digit (``double five``: 55);
* ``and``/``și`` and hyphens join the parts of one number, and nothing else.

Each number becomes its own digit group (``forty five thirty two``: ``45``, ``32``), so that
the detectors can align candidates to the groups a speaker made.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ai.text import STOPWORDS_EN, STOPWORDS_RO, fold

UnitKind = Literal["digits", "word", "sym"]

_PIECE_RE = re.compile(r"[0-9]+|[^\W\d_]+(?:'[^\W\d_]+)*|[@+._\-,;:!?\u2026/]")

SYMBOLS_SOFT = frozenset(",.-;:/")
"""Symbols a digit run may contain (between groups): what Whisper puts between the groups
a speaker made (``4532, 1234``, ``0722-123-456``)."""

FILLERS = frozenset(
    fold(word)
    for word in "um umm uh uhh uhm er erm ah hmm mm mhm ă ăă ăăă î îî ââ â eee ee aa deci".split()
)
"""Hesitations a digit run may contain ("four five, um, three two"; Romanian "ăă", "deci")."""

_DIGITS = {
    # English
    "zero": 0, "nought": 0, "nil": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9,
    # Romanian (folded)
    "unu": 1, "una": 1, "doi": 2, "doua": 2, "trei": 3, "patru": 4, "cinci": 5, "sase": 6,
    "sapte": 7, "opt": 8, "noua": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "zece": 10, "unsprezece": 11, "unspe": 11, "doisprezece": 12, "douasprezece": 12,
    "doispe": 12, "treisprezece": 13, "treispe": 13, "paisprezece": 14, "patrusprezece": 14,
    "paispe": 14, "cincisprezece": 15, "cinsprezece": 15, "cinspe": 15, "saisprezece": 16,
    "saispe": 16, "saptesprezece": 17, "saptispe": 17, "saptespe": 17, "optsprezece": 18,
    "optispe": 18, "optspe": 18, "nouasprezece": 19, "nouaspe": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
    "douazeci": 20, "treizeci": 30, "patruzeci": 40, "cincizeci": 50, "saizeci": 60,
    "saptezeci": 70, "optzeci": 80, "nouazeci": 90,
}  # fmt: skip
_HUNDREDS = frozenset({"hundred", "suta", "sute"})
_THOUSANDS = frozenset({"thousand", "mie", "mii"})
_REPEATS = {"double": 2, "triple": 3}
_JOINERS = frozenset({"and", "si", "-"})
_MULTIPLIERS = _HUNDREDS | _THOUSANDS
_CONTEXT_DIGITS = {"oh": 0, "o": 1, "un": 1}
"""Words that are numbers only among numbers: English "oh" (zero) next to another number
(and a capital "O", as Whisper writes it), Romanian "o"/"un" (one) right before
``sută``/``mie`` (``o sută``: a hundred)."""


FUNCTION_WORDS = STOPWORDS_EN | STOPWORDS_RO
"""Words that are no part of a name, a street or a place (both languages' stopwords)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A digit group, a word (folded, with its surface form) or a symbol, and the words
    (indexes ``first`` to ``last``, inclusive) it came from."""

    kind: UnitKind
    text: str
    first: int
    last: int
    surface: str = ""
    glued: bool = False
    """The first piece of a word written onto the one before, without a space: Whisper
    times "mail.co.uk" as " mail.", "co.", "uk"."""

    @property
    def capitalised(self) -> bool:
        """A word written with a capital (Whisper capitalises names and places)."""
        return self.kind == "word" and self.surface[:1].isupper()


def lex(words: Sequence[str], glued: Sequence[bool] = ()) -> list[Unit]:
    """The pieces of each word as written: digit strings, words, symbols. ``glued[i]``:
    word ``i`` was written onto the word before it, without a space."""
    units: list[Unit] = []
    for index, word in enumerate(words):
        joined = index < len(glued) and glued[index]
        for position, piece in enumerate(_PIECE_RE.findall(word)):
            onto = joined and position == 0
            if piece[0].isdigit():
                units.append(Unit("digits", piece, index, index, piece, onto))
            elif piece[0].isalpha():
                units.append(Unit("word", fold(piece), index, index, piece, onto))
            else:
                units.append(Unit("sym", piece, index, index, piece, onto))
    return units


def _number_word(units: Sequence[Unit], i: int) -> bool:
    unit = units[i]
    if unit.kind != "word":
        return False
    text = unit.text
    if text in _DIGITS or text in _TEENS or text in _TENS or text in _HUNDREDS:
        return True
    if text in _THOUSANDS:
        return True
    if text in _REPEATS:  # "double five", "double oh", not "double check"
        return i + 1 < len(units) and (units[i + 1].text in _DIGITS or units[i + 1].text == "oh")
    if text == "oh":
        return _neighbour_is_number(units, i)
    if text in ("o", "un") and i + 1 < len(units) and units[i + 1].text in _MULTIPLIERS:
        return True  # "o sută", "un milion"
    if unit.surface == "O":
        # Whisper's capital "O seven" / "O7911": zero among numbers, unless letters are
        # being spelled ("R O four nine": Romania's IBAN).
        spelled = i > 0 and units[i - 1].kind == "word" and len(units[i - 1].text) == 1
        return not spelled and _neighbour_is_number(units, i)
    return False


def _neighbour_is_number(units: Sequence[Unit], i: int) -> bool:
    """Whether a number stands next to ``i``, across other "oh"s and a "double" ("two oh
    oh oh", "double oh five")."""
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(units) and (
            units[j].text in ("oh", *_REPEATS) or units[j].surface == "O"
        ):
            j += step
        if 0 <= j < len(units):
            other = units[j]
            if other.kind == "digits" or (
                other.kind == "word" and other.text in (_DIGITS | _TEENS | _TENS)
            ):
                return True
    return False


def normalise(units: Sequence[Unit]) -> list[Unit]:
    """``units`` with every run of number words turned into digit groups."""
    out: list[Unit] = []
    i = 0
    while i < len(units):
        if not _number_word(units, i):
            out.append(units[i])
            i += 1
            continue
        j = i + 1
        while j < len(units):
            if _number_word(units, j):
                j += 1
            elif units[j].text in _JOINERS and j + 1 < len(units) and _number_word(units, j + 1):
                j += 2
            else:
                break
        out += _numbers(units[i:j])
        i = j
    return out


class _Number:
    """The number being read: its value, the words it spans, and what it can still take
    (``open``: ``tens`` after a hundred or a thousand, ``unit`` after a tens word)."""

    def __init__(self, value: int, first: int, last: int, state: str) -> None:
        self.value, self.first, self.last, self.state = value, first, last, state


def _numbers(run: Sequence[Unit]) -> list[Unit]:
    """One run of number words (joiners included) as digit groups."""
    groups: list[Unit] = []
    current: _Number | None = None
    repeat: tuple[int, int] | None = None  # (times, first word)

    def flush() -> None:
        nonlocal current
        if current is not None:
            groups.append(Unit("digits", str(current.value), current.first, current.last))
            current = None

    items = [unit for unit in run if unit.text not in _JOINERS]
    skip = -1
    for i, unit in enumerate(items):
        if i == skip:
            continue
        text = unit.text
        if text in _REPEATS:
            flush()
            repeat = (_REPEATS[text], unit.first)
            continue
        digit = _DIGITS.get(text, _CONTEXT_DIGITS.get(text))
        if text == "o" and (i + 1 >= len(items) or items[i + 1].text not in _MULTIPLIERS):
            digit = 0  # Whisper's capital "O" among numbers ("O seven"), not "o sută"
        if digit is not None and repeat is not None:
            times, first = repeat
            groups.append(Unit("digits", str(digit) * times, first, unit.last))
            repeat = None
            continue
        if digit is not None and current is not None and current.state == "thousands":
            following = items[i + 1] if i + 1 < len(items) else None
            if following is not None and following.text in _HUNDREDS:
                current.value += digit * 100  # "two thousand five hundred ..."
                current.last = following.last
                current.state = "tens"
                skip = i + 1
            else:
                current.value += digit
                current.last = unit.last
                flush()
        elif digit is not None:
            if current is not None and current.state in ("unit", "tens"):
                current.value += digit
                current.last = unit.last
                flush()
            else:
                flush()
                current = _Number(digit, unit.first, unit.last, "digit")
        elif text in _TEENS:
            if current is not None and current.state in ("tens", "thousands"):
                current.value += _TEENS[text]
                current.last = unit.last
                flush()
            else:
                flush()
                groups.append(Unit("digits", str(_TEENS[text]), unit.first, unit.last))
        elif text in _TENS:
            if current is not None and current.state in ("tens", "thousands"):
                current.value += _TENS[text]
                current.last = unit.last
                current.state = "unit"
            else:
                flush()
                current = _Number(_TENS[text], unit.first, unit.last, "unit")
        elif text in _HUNDREDS:
            if current is not None and current.state == "digit":
                current.value *= 100
            else:
                flush()
                current = _Number(100, unit.first, unit.last, "tens")
            current.last = unit.last
            current.state = "tens"
        elif text in _THOUSANDS:
            if current is None:
                current = _Number(1, unit.first, unit.last, "tens")
            current.value *= 1000
            current.last = unit.last
            current.state = "thousands"
    flush()
    return groups


@dataclass(frozen=True, slots=True)
class DigitRun:
    """Digit groups said one after another (fillers and soft symbols between them
    skipped): ``digits`` all of them, ``groups`` each group's ``(start, end)`` in
    ``digits`` and its unit, ``plus`` whether a ``+`` or "plus" came first."""

    digits: str
    groups: tuple[tuple[int, int, Unit], ...]
    plus: Unit | None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The words (first, last) that said ``digits[start:end]`` (group-aligned)."""
        first = next(unit.first for s, _, unit in self.groups if s == start)
        last = next(unit.last for _, e, unit in self.groups if e == end)
        return first, last


def digit_runs(units: Sequence[Unit]) -> list[DigitRun]:
    """The runs of digit groups in ``units`` (after ``normalise``)."""
    runs: list[DigitRun] = []
    i = 0
    while i < len(units):
        if units[i].kind != "digits":
            i += 1
            continue
        plus = None
        if i > 0 and (units[i - 1].text in ("+", "plus")):
            plus = units[i - 1]
        groups: list[tuple[int, int, Unit]] = []
        digits = ""
        j = i
        while j < len(units):
            unit = units[j]
            if unit.kind == "digits":
                groups.append((len(digits), len(digits) + len(unit.text), unit))
                digits += unit.text
            elif not (unit.text in SYMBOLS_SOFT or unit.text in FILLERS):
                break
            j += 1
        runs.append(DigitRun(digits, tuple(groups), plus))
        i = j
    return runs


def cue_ends(units: Sequence[Unit], cues: Sequence[tuple[str, ...]]) -> list[int]:
    """Indexes of the last unit of every cue (a sequence of folded words) in ``units``."""
    ends: list[int] = []
    for i in range(len(units)):
        for cue in cues:
            if i + 1 >= len(cue) and all(
                units[i - len(cue) + 1 + k].text == word for k, word in enumerate(cue)
            ):
                ends.append(i)
                break
    return ends
