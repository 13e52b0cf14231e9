"""Finding numbers and addresses that identify a person, in a track's units.

Each detector works on the units of ``ai.redaction.spoken`` (digit groups, folded words,
symbols) and answers the words it found a value in, never the value. What counts as found is
what a well-kept library validates, so a run of digits is only a card number when its Luhn
check digit is right, and so on:

* ``ro_cnp``: 13 digits that ``stdnum.ro.cnp`` accepts (a valid date, county and check
  digit).
* ``card_number``: 13 to 19 digits with a Luhn-valid check digit (``stdnum.luhn``) whose
  first digit is a card network's (2 to 6).
* ``phone_number``: digits that ``phonenumbers`` calls a valid number, either international
  (after ``+``, "plus" or ``00``) or national with its trunk ``0`` in Romania or the UK (the
  operator's market and its callers' most common other one). National numbers of countries
  without a trunk prefix (the US) are not taken without a ``+``: too many order and account
  numbers would be valid ones.
* ``iban``: a country code and up to 32 letters and digits that ``stdnum.iban`` accepts.
* ``email``: a local part, ``@`` (or "at", "arond", "a rond"), and a domain of two or more
  labels joined by ``.`` (or "dot", "punct"). After a written ``@`` any top-level domain
  of 2 to 24 letters counts; after a spoken "at" only a known one ("look at this dot com"
  is no address). A written ``.``, ``-`` or ``_`` joins only inside one word
  (``ana.pop``), never across a sentence's end ("at home. It").

Candidates are aligned with the groups the speaker made: a card number is looked for in
whole groups of a digit run ("4532 0151 1283 0366"), not at every offset of it, which keeps a
random Luhn hit inside a longer run of unrelated digits from counting. Where candidates
overlap, all of them are redacted, as one span of the longest one's type (then the order
above): which of two overlapping valid readings is the real one cannot be known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.ro import cnp as stdnum_cnp

from ai.redaction.spoken import FILLERS, SYMBOLS_SOFT, DigitRun, Unit, digit_runs

NATIONAL_REGIONS: tuple[str, ...] = ("RO", "GB")
"""Countries whose national numbers (with the trunk ``0``) are taken without a ``+``."""

_PRIORITY = {"ro_cnp": 0, "iban": 1, "card_number": 2, "phone_number": 3, "email": 4}

TOP_LEVEL_DOMAINS = frozenset(
    "com ro net org eu info biz io co uk de fr it es nl be at ch md hu bg pl us ca edu gov "
    "me app dev online shop tech mobi name pro".split()
)
"""Top-level domains an e-mail address may end in (the common ones, and the neighbours')."""

_AT_WORDS = frozenset({"@", "at", "arond"})
_DOT_WORDS = frozenset({".", "dot", "punct", "punkt"})
_JOIN_WORDS = frozenset({"_", "underscore", "-", "dash", "hyphen", "liniuta", "cratima", "minus"})
_JOIN_PAIRS = frozenset({("liniuta", "jos")})
"""Romanian "liniuță jos" (underscore), said in two words."""
MAX_LOCAL_PARTS = 6
"""Most pieces (joined by dots, dashes, underscores) an e-mail's local part is read in."""


@dataclass(frozen=True, slots=True)
class Found:
    """An entity found in words ``first`` to ``last`` (inclusive) of a track."""

    entity: str
    first: int
    last: int


def find_numbers(units: Sequence[Unit], kinds: frozenset[str]) -> list[Found]:
    """Card numbers, CNPs and phone numbers in the digit runs of ``units``."""
    found: list[Found] = []
    for run in digit_runs(units):
        candidates = list(_candidates(run, kinds))
        candidates.sort(key=lambda c: (-(c[1] - c[0]), _PRIORITY[c[2]], c[0]))
        taken: list[tuple[int, int]] = []
        for start, end, entity in candidates:
            if any(s <= start and end <= e for s, e in taken):
                continue  # inside a longer find
            # One that overlaps a longer find is kept too (``merge`` joins them): which of
            # two overlapping valid readings is the real one cannot be known, and a
            # Luhn-valid window across a phone number and a card must not leave the ends
            # of both in clear.
            taken.append((start, end))
            first, last = run.span(start, end)
            if entity == "phone_number" and run.plus is not None and start == 0:
                first = run.plus.first
            found.append(Found(entity, first, last))
    return found


def _candidates(run: DigitRun, kinds: frozenset[str]) -> Iterable[tuple[int, int, str]]:
    """Every validated reading of whole groups of ``run``: at most 19 digits each, so a
    long run costs linear time, not quadratic."""
    ends = [end for _, end, _ in run.groups]
    for first, (start, _, _) in enumerate(run.groups):
        for end in ends[first:]:
            length = end - start
            if length > 19:
                break
            if length < 7:
                continue
            digits = run.digits[start:end]
            if "ro_cnp" in kinds and length == 13 and stdnum_cnp.is_valid(digits):
                yield start, end, "ro_cnp"
            if "card_number" in kinds and length >= 13 and _card(digits):
                yield start, end, "card_number"
            if "phone_number" in kinds and _phone(digits, plus=run.plus is not None and start == 0):
                yield start, end, "phone_number"


def _card(digits: str) -> bool:
    return digits[0] in "23456" and luhn.is_valid(digits)


def _phone(digits: str, *, plus: bool) -> bool:
    if plus or digits.startswith("00"):
        text = "+" + (digits[2:] if not plus else digits)
        regions: tuple[str | None, ...] = (None,)
    elif digits.startswith("0") and len(digits) <= 11:
        text, regions = digits, NATIONAL_REGIONS
    else:
        return False
    for region in regions:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


def find_ibans(units: Sequence[Unit]) -> list[Found]:
    """IBANs: a two-letter country code (one word, or two spelled letters) followed by
    letters and digits, read as far as they go and checked by ``stdnum.iban``."""
    found: list[Found] = []
    i = 0
    while i < len(units):
        match = _iban_at(units, i)
        if match is None:
            i += 1
            continue
        found.append(match)
        while i < len(units) and units[i].first <= match.last:
            i += 1
    return found


def _iban_at(units: Sequence[Unit], i: int) -> Found | None:
    unit = units[i]
    if unit.kind != "word":
        return None
    if len(unit.text) == 2:
        country, j = unit.text, i + 1
    elif len(unit.text) == 1 and i + 1 < len(units) and len(units[i + 1].text) == 1:
        country, j = unit.text + units[i + 1].text, i + 2
        if units[i + 1].kind != "word":
            return None
    else:
        return None
    if not country.isascii() or j >= len(units) or units[j].kind != "digits":
        return None
    text = country.upper()
    best: Found | None = None
    while j < len(units) and len(text) < 34:
        piece = units[j]
        if piece.kind == "digits" or (piece.kind == "word" and len(piece.text) <= 4):
            if not piece.text.isascii() or not piece.text.isalnum():
                break
            text += piece.text.upper()
            if len(text) >= 15 and stdnum_iban.is_valid(text):
                best = Found("iban", unit.first, piece.last)
        elif not (piece.text in SYMBOLS_SOFT or piece.text in FILLERS):
            break
        j += 1
    return best


def find_emails(units: Sequence[Unit]) -> list[Found]:
    """E-mail addresses, written (``ana@x.ro``) or spoken ("ana at x dot ro")."""
    found: list[Found] = []
    for i in range(len(units)):
        at_end = _at_sign(units, i)
        if at_end is None:
            continue
        local = _local_start(units, i)
        domain = _domain_end(units, at_end + 1, written=units[i].text == "@")
        if local is not None and domain is not None:
            found.append(Found("email", units[local].first, units[domain].last))
    return merge(found)


def _at_sign(units: Sequence[Unit], i: int) -> int | None:
    """Where an "at" sign at ``i`` ends (its last unit), or None."""
    if units[i].text in _AT_WORDS:
        return i
    if units[i].text == "a" and i + 1 < len(units) and units[i + 1].text == "rond":
        return i + 1
    return None


def _joiner_before(units: Sequence[Unit], j: int, *, dots_only: bool = False) -> int:
    """How many units (0, 1 or 2) form a joiner of e-mail parts ending at ``j``: a dot,
    or (``dots_only`` false) a dash or underscore, said or written (a written one only
    between two pieces of the same word)."""
    if j < 0:
        return 0
    text = units[j].text
    if units[j].kind == "sym" and not _inside_word(units, j):
        return 0
    if text in _DOT_WORDS:
        return 1
    if dots_only:
        return 0
    if text in _JOIN_WORDS:
        return 1
    if j >= 1 and (units[j - 1].text, text) in _JOIN_PAIRS:
        return 2
    return 0


def _inside_word(units: Sequence[Unit], j: int) -> bool:
    """Whether the symbol at ``j`` stands inside one written word: no space on either side
    (its neighbours are pieces of its word, or of words written onto it)."""
    if not 0 < j < len(units) - 1:
        return False
    symbol, left, right = units[j], units[j - 1], units[j + 1]
    return (left.last == symbol.first or symbol.glued) and (
        right.first == symbol.last or right.glued
    )


def _part(unit: Unit) -> bool:
    return unit.kind in ("word", "digits")


def _local_start(units: Sequence[Unit], at: int) -> int | None:
    """The first unit of the local part before the at sign at ``at``: parts joined by
    dots, dashes and underscores, and digits said after a word ("kelly eighty four")."""
    j = at - 1
    if j < 0 or not _part(units[j]):
        return None
    parts = 1
    while parts < MAX_LOCAL_PARTS:
        if units[j].kind == "digits" and j >= 1 and units[j - 1].kind == "word":
            j -= 1  # "kelly84"
            parts += 1
            continue
        joiner = _joiner_before(units, j - 1)
        if not joiner or j - 1 - joiner < 0 or not _part(units[j - 1 - joiner]):
            break
        j -= 1 + joiner
        parts += 1
    return j


def _domain_end(units: Sequence[Unit], j: int, *, written: bool) -> int | None:
    """The last unit of a domain that starts at ``j``: labels joined by dots (and dashes
    inside a label), the last one a top-level domain (any, after a ``written`` ``@``; a
    known one after a spoken "at")."""
    if j >= len(units) or not _part(units[j]):
        return None
    end: int | None = None
    labels = 1
    while labels < 8:
        k = j + 1
        joiner = 0
        for width in (1, 2):
            if k + width - 1 < len(units) and _joiner_before(units, k + width - 1) == width:
                joiner = width
                break
        if not joiner or k + joiner >= len(units) or not _part(units[k + joiner]):
            break
        dot = _joiner_before(units, k + joiner - 1, dots_only=True) == 1
        j = k + joiner
        labels += 1
        if dot and _top_level(units[j], any_known=written):
            end = j
    return end


def _top_level(unit: Unit, *, any_known: bool) -> bool:
    text = unit.text
    if text in TOP_LEVEL_DOMAINS:
        return True
    return any_known and unit.kind == "word" and text.isascii() and 2 <= len(text) <= 24


def merge(found: Sequence[Found]) -> list[Found]:
    """Overlapping finds as one, of the type of the one covering more words."""
    merged: list[Found] = []
    for item in sorted(found, key=lambda f: (f.first, -f.last)):
        if merged and item.first <= merged[-1].last:
            last = merged[-1]
            longer = last if last.last - last.first >= item.last - item.first else item
            merged[-1] = Found(longer.entity, last.first, max(last.last, item.last))
        else:
            merged.append(item)
    return merged
