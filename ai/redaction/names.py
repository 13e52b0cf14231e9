"""Finding person names in a track's words.

Names in English calls come from a named-entity model (spaCy's small English pipeline, from
a package, checked by ``ai.redaction.ner``); in every call, and so in Romanian ones, for
which no packaged model exists, from cues and lists (``ai.redaction.gazetteer``):

* after a *strong* cue ("my name is", "mă numesc", "numele meu este", "pe numele",
  "domnul", "doamna", "Mr", "Mrs"): the next one to three words that are capitalised or
  listed, or (up to two) simply not function words: ASR does not always capitalise;
* after a *weak* cue (a greeting, "this is", "it's", "I'm", "sunt", "speaking with",
  "vorbiți cu", "the name of", "soția mea"): the next words that are listed or
  capitalised (and not a day, a month or a function word): "this is Maria" and "good
  afternoon Priya" are names, "this is fine" and "it's Monday" are not;
* anywhere: a capitalised listed given name, with the capitalised surname or second given
  name after it; a capitalised word with a Romanian surname ending (``-escu``, ``-eanu``).

A hyphen joins two capitalised words into one name ("Ellis-Carter", "Pop-Ciobanu"), a
comma may stand between a cue and the name ("Thanks, Mihai"), and the letters that spell a
name right after it are part of it ("Elena, E L E N A").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ai.redaction.detect import Found
from ai.redaction.gazetteer import GIVEN, GIVEN_AMBIGUOUS, SURNAME_ENDINGS, SURNAMES
from ai.redaction.spoken import FUNCTION_WORDS, Unit, cue_ends
from ai.text import fold

PersonFinder = Callable[[str], list[tuple[int, int]]]
"""Character spans of the persons a named-entity model finds in a text (blocking)."""

MAX_NAME_WORDS = 3


def _cues(text: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(fold(cue).split()) for cue in text.split(";"))


_STRONG_CUES = _cues(
    "my name is;my name's;name is;surname is;first name is;last name is;mr;mrs;ms;miss;dr;"
    "mister;mă numesc;numele meu este;numele meu e;numele este;numele e;pe numele;"
    "pe numele de;numele de familie este;numele de familie e;prenumele este;prenumele e;"
    "domnul;doamna;domnișoara;dl;dna;doamnei;domnului"
)
_WEAK_CUES = _cues(
    "this is;it's;i'm;i am;sunt;eu sunt;aici este;aici e;name of;speaking with;speaking to;"
    "speak to;speak with;through to;ask for;hi;hello;hey;morning;afternoon;evening;thanks;"
    "thank you;my wife;my husband;bună ziua;bună seara;salut;vorbiți cu;vorbesc cu;"
    "soția mea;soțul meu;pe soția mea;pe soțul meu"
)
_NOT_NAMES = frozenset(
    fold(w)
    for w in "monday tuesday wednesday thursday friday saturday sunday january february "
    "march april may june july august september october november december luni marți "
    "miercuri joi vineri sâmbătă duminică ianuarie februarie martie aprilie mai iunie iulie "
    "septembrie octombrie noiembrie decembrie god ok okay flat unit apartment suite".split()
)
_LISTED = GIVEN | GIVEN_AMBIGUOUS | SURNAMES


def _surname_like(unit: Unit) -> bool:
    return unit.text in SURNAMES or unit.text.endswith(SURNAME_ENDINGS)


def _name_word(unit: Unit) -> bool:
    """A word that reads as (part of) a name on its own: listed, or capitalised and
    neither a function word nor a day or month."""
    if unit.kind != "word" or unit.text in _NOT_NAMES:
        return False
    listed = unit.text in _LISTED or _surname_like(unit)
    return listed or (unit.capitalised and unit.text not in FUNCTION_WORDS)


def _name_after(units: Sequence[Unit], cue_end: int, *, strong: bool) -> Found | None:
    j = cue_end + 1
    if j < len(units) and units[j].text == ",":
        j += 1
    taken: list[Unit] = []
    while j < len(units) and len(taken) < MAX_NAME_WORDS:
        unit = units[j]
        if _name_word(unit):
            taken.append(unit)
        elif (
            strong
            and unit.kind == "word"
            and len(taken) < 2
            and unit.text not in FUNCTION_WORDS
            and unit.text not in _NOT_NAMES
        ):
            taken.append(unit)
        elif unit.text == "-" and taken and j + 1 < len(units) and units[j + 1].capitalised:
            pass  # "Ellis-Carter": the next word is the same name's
        else:
            break
        j += 1
    if not taken:
        return None
    return Found("person_name", taken[0].first, taken[-1].last)


def find_names(
    units: Sequence[Unit], text: str, offsets: Sequence[int], persons: PersonFinder | None
) -> list[Found]:
    """Person names in ``units`` (cues and lists), and those ``persons`` finds in ``text``
    (the track's words joined by spaces; word ``i`` starts at ``offsets[i]``)."""
    found: list[Found] = []
    for cues, strong in ((_STRONG_CUES, True), (_WEAK_CUES, False)):
        for end in cue_ends(units, cues):
            if (name := _name_after(units, end, strong=strong)) is not None:
                found.append(name)
    i = 0
    while i < len(units):
        unit = units[i]
        if not (unit.capitalised and (unit.text in GIVEN or _surname_like(unit))):
            i += 1
            continue
        j = i + 1
        while j < len(units) and j - i < MAX_NAME_WORDS:
            if units[j].capitalised and (units[j].text in GIVEN or _surname_like(units[j])):
                j += 1
            elif units[j].text == "-" and j + 1 < len(units) and units[j + 1].capitalised:
                j += 2
            else:
                break
        found.append(Found("person_name", unit.first, units[j - 1].last))
        i = j
    if persons is not None and text:
        for start, end in persons(text):
            found.append(Found("person_name", _word_at(offsets, start), _word_at(offsets, end - 1)))
    last_unit = {unit.last: i for i, unit in enumerate(units)}  # of each word: its last unit
    return [_with_spelling(units, last_unit.get(name.last), name) for name in found]


def _with_spelling(units: Sequence[Unit], k: int | None, name: Found) -> Found:
    """``name`` (whose last unit is ``k``) and the letters that spell it right after it
    ("Elena, E L E N A", "D-A-V-I-D"): two single letters or more, a comma before them
    allowed."""
    if k is None:
        return name
    j = k + 1
    if j < len(units) and units[j].text == ",":
        j += 1
    letters, last = 0, name.last
    while j < len(units) and (
        (units[j].kind == "word" and len(units[j].text) == 1) or units[j].text == "-"
    ):
        if units[j].kind == "word":
            letters += 1
            last = units[j].last
        j += 1
    return Found(name.entity, name.first, last) if letters >= 2 else name


def _word_at(offsets: Sequence[int], char: int) -> int:
    """The word (index) that character ``char`` of the joined text belongs to."""
    low, high = 0, len(offsets) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if offsets[middle] <= char:
            low = middle
        else:
            high = middle - 1
    return low
