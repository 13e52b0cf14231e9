"""Finding postal addresses in a track's units, by rule.

* Romanian: a street word (``strada``, ``str.``, ``bulevardul``, ``bd.``, ``calea``,
  ``aleea``, ``șoseaua``, ...), up to four words of its name, then its parts as far as they
  go (``numărul``/``nr.``, ``bloc``/``bl.``, ``scara``/``sc.``, ``etaj``, ``apartament``/
  ``ap.``, ``sector``, each with its value), then the place (``, Cluj-Napoca``, ``satul``,
  ``comuna``, ``județul`` and its name, ``cod poștal`` and its six digits). Taken only when
  a number follows the street's name, so "am sunat de pe stradă" is no address.
* English: a house number, up to four words and a street word (``Street``, ``Road``,
  ``Avenue``, ...), then in the same sentence a town (after a comma, or right after the
  street word) and a postcode; before
  the number, a flat or unit ("Flat 3, 27 Carrington Road") and a building's name
  ("Marlowe House, 61 ...") when one is given.
* A postcode after its cue ("postcode", "zip code", "cod poștal") on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from ai.redaction.detect import Found
from ai.redaction.spoken import FUNCTION_WORDS, Unit, cue_ends
from ai.text import fold

MAX_STREET_NAME_WORDS = 4
MAX_PLACE_WORDS = 3

_RO_STREETS = frozenset(
    fold(w)
    for w in "strada str bulevardul bulevard bd bdul calea aleea șoseaua sos piața intrarea "
    "splaiul drumul".split()
)
_RO_PARTS = frozenset(
    fold(w)
    for w in "numărul număr nr bloc blocul bl scara sc etaj etajul et ap apartament "
    "apartamentul sector sectorul".split()
)
_RO_PLACES = frozenset(
    fold(w) for w in "satul sat comuna orașul oraș municipiul județul judet jud".split()
)
_EN_STREETS = frozenset(
    "street st road rd avenue ave lane ln drive dr close way court place boulevard crescent "
    "terrace square grove gardens row hill mews".split()
)
_EN_PARTS = frozenset("flat apartment apt unit suite".split())
_BUILDINGS = frozenset("house court building lodge cottage hall tower mansions".split())
_POSTCODE_CUES: tuple[tuple[str, ...], ...] = (
    ("postcode",),
    ("post", "code"),
    ("zip", "code"),
    ("zip",),
    ("cod", "postal"),
)


def find_addresses(units: Sequence[Unit]) -> list[Found]:
    """Postal addresses, Romanian and English, and postcodes after their cue."""
    found: list[Found] = []
    for i, unit in enumerate(units):
        if unit.kind == "word" and unit.text in _RO_STREETS:
            end = _romanian_address_end(units, i)
            if end is not None:
                found.append(Found("postal_address", unit.first, units[end].last))
        elif unit.kind == "digits":
            end = _english_address_end(units, i)
            if end is not None:
                start = _english_address_start(units, i)
                found.append(Found("postal_address", units[start].first, units[end].last))
    for end in cue_ends(units, _POSTCODE_CUES):
        j = end + 1
        while j < len(units) and units[j].text in (":", "is", "este", "e"):
            j += 1
        last = _postcode_end(units, j)
        if last is not None:
            found.append(Found("postal_address", units[j].first, units[last].last))
    return found


def _place_end(units: Sequence[Unit], j: int) -> int | None:
    """The last unit of a place name starting at ``j``: capitalised words, hyphens
    between them ("Cluj-Napoca"), at most ``MAX_PLACE_WORDS``."""
    end: int | None = None
    words = 0
    while j < len(units) and words < MAX_PLACE_WORDS:
        unit = units[j]
        if end is not None and _postcode_end(units, j) is not None:
            break  # "Leeds LS1 4AB": the postcode is the caller's to take
        if unit.capitalised and unit.text not in FUNCTION_WORDS:
            end = j
            words += 1
        elif not (unit.text == "-" and end is not None):
            break
        j += 1
    return end


def _romanian_address_end(units: Sequence[Unit], street: int) -> int | None:
    j = street + 1
    if j < len(units) and units[j].text == ".":
        j += 1
    name_words = 0
    while (
        j < len(units)
        and units[j].kind == "word"
        and units[j].text not in _RO_PARTS
        and name_words < MAX_STREET_NAME_WORDS
        and (units[j].text not in FUNCTION_WORDS or units[j].capitalised)
    ):
        j += 1
        name_words += 1
    if name_words == 0:
        return None
    end: int | None = None
    while j < len(units):
        unit = units[j]
        if unit.text in _RO_PARTS or unit.text in (",", ".", "-", "/"):
            j += 1
            continue
        if unit.kind == "digits" or (
            unit.kind == "word" and len(unit.text) <= 2 and end is not None
        ):
            end = j
            j += 1
            continue
        if end is None:
            break
        # The place after the number: "..., Cluj-Napoca", "satul Valea Lupului",
        # "județul Iași", "cod poștal 700514".
        if unit.text in _RO_PLACES and (place := _place_end(units, j + 1)) is not None:
            end = j = place
        elif units[j - 1].text == "," and (place := _place_end(units, j)) is not None:
            end = j = place
        elif unit.text == "cod" and j + 2 < len(units) and units[j + 1].text == "postal":
            if (code := _postcode_end(units, j + 2)) is None:
                break
            end = j = code
        else:
            break
        j += 1
    return end


def _english_address_end(units: Sequence[Unit], number: int) -> int | None:
    j = number + 1
    name_words = 0
    while (
        j < len(units)
        and units[j].kind == "word"
        and units[j].text not in _EN_STREETS
        and name_words < MAX_STREET_NAME_WORDS
    ):
        if units[j].text in FUNCTION_WORDS and not units[j].capitalised:
            return None
        j += 1
        name_words += 1
    if name_words == 0 or j >= len(units) or units[j].text not in _EN_STREETS:
        return None
    end = j
    j += 1
    # Then, in the same sentence: a flat, a town (after a comma, or right after the street:
    # Whisper drops commas, "112 Mill Close London"), a postcode.
    street = end
    while j < len(units) and units[j].text != ".":
        unit = units[j]
        if unit.text == "," or unit.text in _EN_PARTS:
            j += 1
            continue
        if unit.kind == "digits" and units[j - 1].text in _EN_PARTS:
            end = j
        elif (postcode := _postcode_end(units, j)) is not None:
            end = j = postcode
        elif (units[j - 1].text == "," or j - 1 == street) and (
            place := _place_end(units, j)
        ) is not None:
            end = j = place
        else:
            break
        j += 1
    return end


def _english_address_start(units: Sequence[Unit], number: int) -> int:
    """Where an English address whose house number is at ``number`` begins: a building's
    name ("Marlowe House,") and a flat or unit ("Flat 12B,") before it are part of it."""
    start = number
    j = number - 1
    if j >= 0 and units[j].text == ",":
        j -= 1
    # A building: capitalised words ending in a building word.
    if j >= 0 and units[j].text in _BUILDINGS and units[j].capitalised:
        k = j
        while k - 1 >= 0 and units[k - 1].capitalised and number - k < 4:
            k -= 1
        start = k
        j = k - 1
        if j >= 0 and units[j].text == ",":
            j -= 1
    # A flat: "Flat 3", "Flat 12B", "Unit 5".
    k = j
    while k >= 0 and (
        units[k].kind == "digits" or (units[k].kind == "word" and len(units[k].text) == 1)
    ):
        k -= 1
    if k < j and k >= 0 and units[k].text in _EN_PARTS:
        start = k
    return start


def _postcode_end(units: Sequence[Unit], j: int) -> int | None:
    """The last unit of a postcode starting at ``j``: six Romanian or five US digits, or a
    UK postcode (``SW1A 1AA``: letters and digits in two parts)."""
    if j >= len(units):
        return None
    if units[j].kind == "digits" and len(units[j].text) in (5, 6):
        return j
    if not units[j].surface.isupper():  # "SW1A 1AA", not "in 2020"
        return None
    k = j
    text = ""
    while k < len(units) and units[k].kind in ("word", "digits") and len(text) < 7:
        if units[k].kind == "word" and len(units[k].text) > 2:
            break
        text += units[k].text
        k += 1
    if 5 <= len(text) <= 7 and any(c.isdigit() for c in text) and text[0].isalpha():
        return k - 1
    return None
