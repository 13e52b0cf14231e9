"""The text handling the call features share: folding, tokens, stopwords, phrase matching.

Sentiment, topics and the summary all read Whisper's text the same way, so that a word the
topics count is the word the summary weighs and a phrase a tenant configures matches wherever
the sentiment cues would. Romanian callers and ASR output are inconsistent about diacritics
(``ș`` with a comma, ``ş`` with a cedilla, or plain ``s``), so every comparison happens on
*folded* text: case-folded, decomposed (NFKD) and stripped of combining marks, which maps
``ă â î ș ş ț ţ`` to ``a a i s s t t``. Curly apostrophes become ``'`` so ``don’t`` is ``don't``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})

WORD = r"[^\W_]+(?:'[^\W_]+)*"
"""A word: letters/digits, with inner apostrophes kept (``don't``, ``customer's``). Hyphens
split words, which keeps Romanian clitics apart (``nu-mi`` is ``nu`` and ``mi``)."""

_TOKEN_RE = re.compile(rf"{WORD}|[.,;:!?\u2026]")
_WORD_RE = re.compile(WORD)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?\u2026])[\"')\]]*\s+")

PUNCTUATION = frozenset(".,;:!?\u2026")
"""The punctuation tokens ``tokens`` keeps: clause boundaries for sentiment's windows."""


TAG = re.compile(r"\[[A-Z][A-Z_]*\]")
"""A redaction tag (``[CARD_NUMBER]``, ``ai.redaction``): no word, so no feature counts it,
weighs it or matches a tenant's phrase ("card", "name") in it."""


def untagged(text: str) -> str:
    """``text`` with its redaction tags blanked out."""
    return TAG.sub(" ", text) if "[" in text else text


def fold(text: str) -> str:
    """``text`` case-folded with diacritics removed, redaction tags dropped: the form all
    matching happens on."""
    text = untagged(text)
    if text.isascii():
        return text.casefold()  # the common case, and ten times faster
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def tokens(text: str) -> list[str]:
    """The folded words of ``text`` with its clause punctuation (``, . ; : ! ? …``) as tokens
    of their own, in order."""
    return _TOKEN_RE.findall(fold(text))


def words(text: str) -> list[str]:
    """The folded words of ``text``, punctuation dropped."""
    return _WORD_RE.findall(fold(text))


def surface_words(text: str) -> list[tuple[str, str]]:
    """``(surface, folded)`` for each word of ``text``: the lower-cased word as written
    (diacritics kept, for display) and its folded form (for counting)."""
    lowered = unicodedata.normalize("NFC", untagged(text).translate(_APOSTROPHES)).lower()
    return [(word, fold(word)) for word in _WORD_RE.findall(lowered)]


def split_sentences(text: str) -> list[tuple[int, str]]:
    """``text`` cut after ``.``, ``!``, ``?`` or ``…`` followed by whitespace, as
    ``(character offset, sentence)`` pairs; empty pieces are dropped.

    Whisper punctuates its output, so this simple rule is enough; abbreviations such as
    ``Mr.`` split a sentence, which costs a summary little."""
    pieces: list[tuple[int, str]] = []
    position = 0
    for boundary in _SENTENCE_END_RE.finditer(text):
        _append_piece(pieces, text, position, boundary.start())
        position = boundary.end()
    _append_piece(pieces, text, position, len(text))
    return pieces


def _append_piece(pieces: list[tuple[int, str]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped and _WORD_RE.search(stripped):
        pieces.append((start + len(piece) - len(piece.lstrip()), stripped))


def is_number(word: str) -> bool:
    """Whether ``word`` is made of digits only (``2024``, ``15``)."""
    return word.isdigit()


# --- stopwords --------------------------------------------------------------------------
# Function words plus the fillers and courtesies of phone calls ("yeah", "okay", "hello",
# "thanks"): they carry no topic, and leaving them in makes every call's key phrase "okay".

_STOPWORDS_EN_TEXT = """
a about above after again against all almost also although always am an and any anyone
anything anyway are aren't around as at be because been before being below between both but
by can can't cannot could couldn't did didn't do does doesn't doing don't done down during
each either else enough even ever every everything few for from further get gets getting
got gotten had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
herself him himself his how how's however i i'd i'll i'm i've if in into is isn't it it'd
it'll it's its itself just let let's like maybe me might mine more most much must mustn't
my myself near need needs never no nor not nothing now of off often on once one only or
other others otherwise ought our ours ourselves out over own per perhaps quite rather really
same say says said see seen shall shan't she she'd she'll she's should shouldn't since so
some somebody someone something sometimes still such than that that's the their theirs them
themselves then there there's these they they'd they'll they're they've thing things this
those though through thus to too under until up upon us very via was wasn't we we'd we'll
we're we've well were weren't what what's whatever when when's where where's whether which
while who who's whom whose why why's will with within without won't would wouldn't yet you
you'd you'll you're you've your yours yourself yourselves
ok okay yeah yes yep yup nope uh um umm uhm hmm mhm mm ah oh hey hi hello bye goodbye please
thank thanks sorry sure right alright actually basically know think mean want wanted go going
gonna wanna come make made tell told ask asked look looking today
"""

_STOPWORDS_RO_TEXT = """
a acea aceasta această aceea acei aceia acel acela acele acelea acest acesta aceste acestea
acestei acestui acolo acum adică ai aia aici al ale alt alta altceva alte altfel alti alții
altul am apoi ar are as aș asa așa astfel asta ăsta ăla aceasta atat atât atata atâta atunci
au avea avem aveti aveți avut ba bine cam care careia căreia carora cărora caruia căruia cat
cât cata câtă cate câte catre către ce cea ceea cei ceilalti ceilalți cel cele celor ceva
chiar ci cine cineva cu cum cumva da daca dacă dar de deci deja desi deși despre din dintr
dintre doar după dupa ea ei el ele era eram este esti ești eu fara fără fi fie fiecare fiind
fost foarte fi iar ii îi il îl im îm imi îmi in în inainte înainte intr într intre între
isi își iti îți la le li lor lui m ma mă mai mereu mi mie mine mult multa multă multe multi
mulți ne ni nici nimic niste niște noi nostru noastră noastra nu o oricare orice oricum pai
păi pe pentru peste pana până poate pot prea prin sa să sa-mi sau se si și sine spre sub sunt
suntem sunteti sunteți ta tale tau tău te ti ți tine toata toată toate tocmai tot toti toți
totul tu un una unde unei unele unii unor unui unul va vă voi vom vor vostru voastră voastra
alo buna bună ziua mersi multumesc mulțumesc multumim mulțumim scuzati scuzați scuze
da nu ok okay sigur exact deci asadar așadar vreau vrea vrem zic spun spus stiu știu
meu mea mei mele tai sai sale nostri noștri noastre vostri voștri voastre dumneavoastra
dumneavoastră dvs
"""

STOPWORDS_EN: frozenset[str] = frozenset(fold(word) for word in _STOPWORDS_EN_TEXT.split())
"""English stopwords, folded."""

STOPWORDS_RO: frozenset[str] = frozenset(fold(word) for word in _STOPWORDS_RO_TEXT.split())
"""Romanian stopwords, folded (so ``și`` and ``si`` are both covered)."""


def stopwords(language: str) -> frozenset[str]:
    """The stopwords for a call in ``language`` (an ISO 639-1 code, as Whisper reports it).

    English for ``en``; Romanian plus English for ``ro``, because Romanian calls borrow
    English fillers ("ok", "sorry"); both for any other language, which is the best this
    module can do without a list of its own."""
    code = language.lower()[:2]
    if code == "en":
        return STOPWORDS_EN
    return STOPWORDS_RO | STOPWORDS_EN


# --- phrase matching --------------------------------------------------------------------

INFLECTION_MIN_LETTERS = 4
"""A phrase's last word of at least this many characters also matches words it begins
(``cancel`` matches ``cancels``, ``cancelled``, ``cancellation``, and also ``cancellara``;
``bill`` matches ``billing`` and ``billion``); shorter ones match only themselves, so ``can``
is neither ``scan`` nor ``cannot``."""


def _phrase_pattern(phrase_words: Sequence[str]) -> str:
    *head, last = (re.escape(word) for word in phrase_words)
    tail = r"[^\W_]*(?:'[^\W_]+)*" if len(phrase_words[-1]) >= INFLECTION_MIN_LETTERS else ""
    # Words of a phrase may be separated by anything that is not a word character
    # ("close my account", "close-my account", "charged, twice"): punctuation inside a
    # configured phrase is rare and ASR places commas loosely.
    return r"[\W_]+".join([*head, last + tail])


@dataclass(frozen=True, slots=True)
class PhraseMatcher:
    """Finds configured phrases in text on word boundaries, case- and
    diacritics-insensitively, with the last word's simple inflections
    (``INFLECTION_MIN_LETTERS``). Where phrases overlap at one position the one with more
    words wins (``charged twice`` over ``charged``), and a stretch of text counts once."""

    phrases: tuple[str, ...]
    _pattern: re.Pattern[str] | None
    _group_phrase: tuple[int, ...]

    @classmethod
    def build(cls, phrases: Sequence[str]) -> PhraseMatcher:
        """A matcher for ``phrases`` (phrases with no word in them are ignored)."""
        kept: list[tuple[int, list[str]]] = []
        for index, phrase in enumerate(phrases):
            phrase_words = words(phrase)
            if phrase_words:
                kept.append((index, phrase_words))
        if not kept:
            return cls(tuple(phrases), None, ())
        # Longest first, so an alternation tries "charged twice" before "charged".
        kept.sort(key=lambda item: (-len(item[1]), -len("".join(item[1])), item[0]))
        alternatives = "|".join(f"({_phrase_pattern(phrase_words)})" for _, phrase_words in kept)
        # Boundaries as ``WORD`` draws them: an inner apostrophe joins ("can't" is one
        # word, so "can" does not match in it).
        pattern = re.compile(rf"(?<![^\W_])(?<![^\W_]')(?:{alternatives})(?!'?[^\W_])")
        return cls(tuple(phrases), pattern, tuple(index for index, _ in kept))

    def find(self, text: str) -> list[str]:
        """The configured phrases found in ``text``, one entry per occurrence, in order."""
        return self.find_folded(fold(text))

    def find_folded(self, folded: str) -> list[str]:
        """``find`` for text that is already folded (``fold``): to fold a segment once for
        many matchers."""
        return [phrase for phrase, _ in self.find_folded_at(folded)]

    def find_folded_at(self, folded: str) -> list[tuple[str, int]]:
        """``find_folded`` with each occurrence's start offset in ``folded``: for a caller
        that reads the words before a phrase (sentiment's negated cues)."""
        if self._pattern is None:
            return []
        found: list[tuple[str, int]] = []
        for match in self._pattern.finditer(folded):
            if match.lastindex is not None:  # always set: every alternative is a group
                found.append((self.phrases[self._group_phrase[match.lastindex - 1]], match.start()))
        return found
