"""Sentiment of a call's utterances: a word lexicon with VADER-style rules, plus intent cues.

A lexicon needs no model and explains itself (a score is a sum of listed words), which suits
a gateway that must run on a CPU and whose tenants ask "why is this call negative?". Its
known failure in customer service is politeness: "Thank you so much, you have been very
helpful, but I would like to cancel my subscription" is all pleasant words around a churn
request. Intent cues fix that (see below), and ``cues=False`` turns them off so the gain can
be measured (``tests/unit/test_sentiment.py`` does, on ``tests/data/sentiment_labelled.json``,
and on ``tests/data/sentiment_cues_labelled.json`` for negated cues and the agent's words).

How a segment is scored (all matching on folded text, see ``ai.text``):

1. Each word found in the lexicon (English for ``en``, Romanian for ``ro``, both otherwise)
   has a valence between -4 and +4. A word not found as written is looked up once more
   without an English ending (``-s``, ``-es``, ``-ed``, ``-d``, ``-ing``, ``-ly``) when the
   stem keeps 3 letters.
2. Intensifiers in the two words before a lexicon word scale it ("very", "foarte": x1.3;
   "extremely", "extrem": x1.5; "slightly", "puțin": x0.7).
3. A negator in the three words before it ("not", "never", "no", any "-n't", "nu", its
   elided "n-" as in "n-a mers", "niciodată", ...) flips and dampens it: x-0.74 (VADER's
   constant), so "not good" is mildly negative and "no problem" mildly positive.
   Windows (2 and 3) stop at clause punctuation and at "but": in "No, that's great" the
   "no" does not reach "great".
4. "but"/"however"/"dar"/"însă"/"totuși": words before the last one weigh x0.5, words after
   it x1.5, because the clause after "but" is what the speaker means.
5. The sum ``x`` is normalised into [-1, 1] as ``x / sqrt(x^2 + 15)`` (VADER's).
6. Intent cues (``cues=True``): a phrase that signals churn or a complaint ("cancel",
   "close my account", "refund", "complaint", "vreau să anulez", "reziliez", ...) makes the
   segment's score ``min(score, -CUE_SCORE)``: at most -0.4 however polite the words around
   it, and as negative as the words make it when they are worse. Cue phrases match like
   tenant categories do (``ai.text.PhraseMatcher``: word boundaries, diacritics-insensitive,
   the last word's inflections, so "cancel" also fires on "cancelled" and "cancellation").
   With cues on, a lexicon word that is itself a cue ("complaint", "plângere",
   "reclamație") carries no valence: the cue scores it where it fires, and where rules 7
   and 8 stop it ("it's not a complaint", the agent's "your complaint reference is ...") the
   lexicon would otherwise make the words negative anyway.
7. A cue the speaker negates does not fire: "I don't want to cancel", "I'm not going to
   close my account", "I never asked for a refund", "nu vreau să anulez", "n-am de gând să
   reziliez". The negator ("not", "never", "no", any "-n't", "nu", Romanian's elided "n-",
   "nicio", ...) must reach the cue as in rule 3 (within ``NEGATION_WINDOW`` words, in the
   same clause, not across "but"), with two differences. Only words of wanting, intending,
   asking or calling and their auxiliaries (``CUE_INTENT_WORDS``: "want", "going", "asked",
   "intention", "vreau", "doresc", "gând", "am", "e", ...) may stand between, and articles,
   possessives and clitics (``CUE_FUNCTION_WORDS``: "a", "my", "to", "să", "de", "mi", ...)
   do not count towards the window. Any other word means the negation is about something
   else: negated ability or permission is a complaint ("why can't I cancel", "I'm not able
   to cancel", "they won't let me cancel", "nu pot să anulez", "nu mă lasă să reziliez"), and
   so is a negated outcome ("I still haven't received my refund"). The negator itself must
   not be one of ability either ("can't", "cannot", "couldn't", "can not"), nor someone
   else's failure ("nobody", "nimeni", or "you"/"they" as the subject: "you never refunded
   me"), nor in a "why"/"de ce" question ("why didn't you cancel it?"): those fire. The rule
   reads the words *before* a cue only, so "I don't think I want to cancel" fires, and a
   disclaimer ("I don't want to cancel, but if ...") is retracted like a plain refusal;
   the lexicon then scores the rest.
8. Cues fire on the caller's words only (any ``track`` but ``AGENT_TRACK``; a speaker not
   known counts as the caller). The agent names the caller's request while serving it ("I
   can help you cancel that", "your refund has been approved", "am înregistrat
   reclamația"): that is service, not churn, and a churn call already shows in the caller's
   own segments. Firing on the agent too counted such a call twice and made a call in which
   the agent offers or confirms a cancellation or refund read as churn on the agent's track
   and overall; now the agent's segments are scored by the lexicon alone (rule 6's).

Labels: ``positive`` when the score is at least ``THRESHOLD`` (0.05), ``negative`` when it
is at most -0.05, ``neutral`` in between (VADER's thresholds).

Aggregates (``overall``, each track, each timeline window) are the mean score of the
segments in them that carry any sentiment (score not 0): a call of forty neutral
"yes"/"one moment" lines and one angry one is about the angry one, not 1/41 of it. With no
such segment the score is 0, ``neutral``. Timeline windows are ``max(30 s, duration / 10)``
long, from 0, where the duration is the last segment's end; a segment belongs to the window
in which it starts, and windows without segments are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from ai.text import PUNCTUATION, PhraseMatcher, fold, tokens
from ai.transcript import Segment

THRESHOLD = 0.05
"""Scores at or beyond +-THRESHOLD are positive/negative; between them neutral."""

NORMALISATION_ALPHA = 15.0
"""``x / sqrt(x^2 + alpha)``: VADER's constant; a valence sum of 2 scores about 0.46."""

NEGATION_SCALAR = -0.74
"""What a negator does to the valence of a word in its reach (VADER's constant)."""

NEGATION_WINDOW = 3
BOOSTER_WINDOW = 2
BEFORE_BUT = 0.5
AFTER_BUT = 1.5

CUE_SCORE = 0.4
"""A segment in which an intent cue fires scores at most ``-CUE_SCORE``."""

TIMELINE_MIN_WINDOW_S = 30.0
TIMELINE_WINDOWS = 10


def _lexicon(text: str) -> dict[str, float]:
    """``word valence`` pairs, whitespace separated, keyed by the folded word (so a
    Romanian entry written with diacritics also matches text written without)."""
    items = text.split()
    return {fold(word): float(value) for word, value in zip(items[::2], items[1::2], strict=True)}


# Valences on VADER's -4..+4 scale; many taken from or calibrated against VADER's lexicon,
# with customer-service words added ("resolved", "outage", "overcharged", "waiting").
# "please" and "help" are left out on purpose: in a service call they are requests, not
# feelings ("can you please help me with my bill" is neutral). So are "sorry" and
# "apologize": an agent's "sorry about that" is courtesy, not a negative call.
EN_LEXICON: dict[str, float] = _lexicon("""
good 1.9 great 3.1 excellent 3.2 amazing 2.8 awesome 3.1 fantastic 2.6 wonderful 2.7
perfect 2.7 brilliant 2.8 superb 3.1 outstanding 3.0 terrific 2.8 nice 1.8 fine 0.8
lovely 2.8 happy 2.7 glad 2.0 pleased 1.9 delighted 2.9 satisfied 1.8 grateful 2.0
thank 1.5 thanks 1.9 thankful 2.0 appreciate 1.7 appreciated 1.8 appreciation 1.8
helpful 1.8 useful 1.6 kind 2.4 friendly 2.2 polite 1.7 patient 1.4 professional 1.3
courteous 1.8 knowledgeable 1.5 efficient 1.6 quick 1.0 quickly 0.8 fast 1.0 easy 1.9
easier 1.6 smooth 1.2 simple 0.8 clear 1.0 reliable 1.8 stable 1.2 resolved 1.8 solved 1.8
fixed 1.4 sorted 1.0 working 1.0 works 1.0 worked 1.0 better 1.9 best 3.2 improved 1.9
love 3.2 loved 2.9 liked 1.8 enjoy 2.2 enjoyed 2.3 recommend 1.5 welcome 2.0
pleasure 2.7 super 2.9 cool 1.3 fair 1.3 reasonable 1.2 affordable 1.2
cheap 0.5 discount 1.0 bonus 1.5 free 1.1 benefit 1.5 success 2.7 successful 2.8
successfully 2.5 correct 1.0 accurate 1.2 worth 1.6 valuable 2.1 impressed 2.1
impressive 2.3 exceeded 1.5 beautiful 2.9 comfortable 1.5 confident 2.2 safe 1.9 secure 1.4
relieved 1.5 relief 1.5 calm 1.3 promptly 1.2 prompt 1.0 responsive 1.5 seamless 1.8
convenient 1.5 flexible 1.0 honest 2.3 trust 2.3 loyal 2.1 cheers 2.1 congratulations 2.9
excited 1.9 exciting 2.2 fun 2.3 hope 1.9 hopefully 1.7 lucky 1.8 gladly 1.8
yay 2.4 wow 2.8 bravo 2.5
bad -2.5 terrible -2.1 horrible -2.5 awful -2.0 worst -3.1 worse -2.1 poor -2.1 poorly -1.8
problem -1.7 problems -1.7 issue -0.9 issues -0.9 trouble -1.7 broken -2.0 broke -1.8
break -1.2 down -1.0 outage -2.0 fail -2.5 failed -2.3 failure -2.3 failing -2.2 error -1.7
errors -1.7 fault -1.7 faulty -2.0 defective -2.1 wrong -2.1 mistake -1.7 mistaken -1.5
incorrect -1.5 angry -2.3 anger -2.7 furious -2.7 mad -2.2 upset -1.6 annoyed -1.6
annoying -1.8 annoyance -1.8 irritated -1.8 irritating -2.0 frustrated -2.4 frustrating
-2.2 frustration -2.1 disappointed -1.9 disappointing -2.2 disappointment -2.3 unhappy -1.8
sad -2.1 unsatisfied -1.9 dissatisfied -2.0 displeased -1.9 hate -2.7 hated -2.5
ridiculous -2.1 unacceptable -2.5 useless -1.8 pointless -1.7 hopeless -2.0 waste -1.8
wasted -2.0 waiting -1.2 waited -1.2 delay -1.3 delayed -1.4 delays -1.3 late -0.9 slow
-1.2 slowly -0.8 lost -1.3 lose -1.7 losing -1.6 missing -1.2 missed -1.2 stuck -1.4
complicated -1.4 confusing -1.5 confused -1.3 difficult -1.5 hard -0.4 impossible -1.9
expensive -1.6 overpriced -2.0 overcharged -2.3 overcharge -2.3 scam -2.9 fraud -2.6
rip -1.6 ripoff -2.5 cheated -2.4 lied -2.2 lie -1.8 lying -2.1 misleading -2.0 rude -2.0
unhelpful -2.0 incompetent -2.3 careless -1.7 ignored -1.8 ignore -1.4 disaster -3.1
nightmare -2.8 mess -1.5 chaos -2.3 sucks -1.5 suck -1.5 crap -2.0 shit -2.6 damn -1.7
damaged -1.9 damage -2.2 dead -3.3 dropped -1.0 dropping -1.0 drops -0.9 disconnected
-1.4 disconnecting -1.4 crash -1.7 crashed -1.9 crashes -1.7 freezing -0.8 freezes -1.0
unstable -1.5 unreliable -1.9 unavailable -1.2 interrupted -1.1 interruption -1.2
inconvenience -1.5 inconvenient -1.4 complaint -1.7 complain -1.9 complained -1.7
concern -0.8 concerned -1.0 worried -1.7 worry -1.9 afraid -2.0 scared -1.9 stress -1.8
stressful -2.1 stressed -1.8 tired -1.9 fed -0.6 sick -2.1 unfair -2.1
unfortunately -1.5 unfortunate -1.6 regret -1.6 penalty -1.8 fee -0.5 fees -0.6
charged -0.4 debt -1.5 threat -2.4 lawyer -0.8 sue -1.9
""")

RO_LEXICON: dict[str, float] = _lexicon("""
bine 1.5 bun 1.9 bună 1.9 buni 1.9 bune 1.9 excelent 3.2 excelentă 3.2
perfect 2.7 perfectă 2.7 super 2.9 minunat 2.8 minunată 2.8 grozav 2.8 frumos 2.0
mulțumesc 1.8 mulțumim 1.8 mersi 1.6 mulțumit 1.9 mulțumită 1.9 mulțumiți 1.9
recunoscător 2.0 recunoscătoare 2.0 fericit 2.6 fericită 2.6 bucuros 2.2 bucuroasă 2.2
încântat 2.6 încântată 2.6 amabil 2.2 amabilă 2.2 amabili 2.2 politicos 1.7 util 1.6
utilă 1.6 rapid 1.0 rapidă 1.0 repede 0.8 ușor 1.2 simplu 0.8 clar 1.0
rezolvat 1.8 rezolvată 1.8 rezolvate 1.8 reparat 1.4 funcționează 1.0 merge 0.8 corect 1.0
recomand 1.5 apreciez 1.7 profesionist 1.4 plăcere 2.2
eficient 1.6 stabil 1.2 ieftin 0.5 reducere 1.0 gratuit 1.1 bravo 2.5 excepțional 3.0
problemă -1.7 probleme -1.7 problemei -1.7 nemulțumit -2.0 nemulțumită -2.0 nemulțumiți
-2.0 nemulțumire -2.0 rău -2.5 rea -2.5 prost -2.3 proastă -2.3 proaste -2.3 proști -2.3
defect -2.0 defectă -2.0 defecte -2.0 defecțiune -2.0 stricat -2.0 stricată -2.0
deranjament -1.8 pană -1.2 groaznic -2.9 groaznică -2.9 oribil -2.8 oribilă -2.8
îngrozitor -2.9 jalnic -2.6 dezamăgit -1.9 dezamăgită -1.9 dezamăgitor -2.2 dezamăgire
-2.3 supărat -1.8 supărată -1.8 furios -2.7 furioasă -2.7 nervos -1.8 nervoasă -1.8
enervant -1.8 enervat -1.8 inacceptabil -2.5 ridicol -2.1 greșit -2.0 greșită -2.0
greșeală -1.7 eroare -1.7 întârziere -1.4 întârzie -1.4 întârziat -1.4 aștept -0.8
așteptat -0.8 lent -1.2 lentă -1.2 încet -0.8 scump -1.6 scumpă -1.6 plângere -1.7
reclamație -1.7 pierdut -1.3 blocat -1.4 blocată -1.4 complicat -1.4 greu -0.8 imposibil
-1.9 păcat -1.2 regret -1.6 scuze -0.3 degeaba -1.8 inutil -1.8
 țeapă -2.6 furt -2.5 mincinoși -2.4 nesimțit -2.5 nesimțiți -2.5 nasol -2.0
""")

NEGATORS: frozenset[str] = frozenset(
    fold(word)
    for word in """
    not no never none nothing nobody neither nor without cannot cant dont doesnt didnt isnt
    wasnt arent werent wont wouldnt couldnt shouldnt havent hasnt hadnt
    nu n niciodată nici nicio niciun nimic nimeni fără
    """.split()
)
"""Words that negate the next ``NEGATION_WINDOW`` words; any token ending in ``n't`` too.
``n`` is Romanian's elided ``nu`` ("n-am", "n-o", "n-a"): hyphens split words, so it stands
alone."""

BOOSTERS: dict[str, float] = {
    fold(word): float(value)
    for word, value in zip(
        *[
            iter(
                """
        very 1.3 really 1.3 so 1.2 too 1.2 such 1.2 quite 1.1 extremely 1.5 incredibly 1.5
        totally 1.4 absolutely 1.4 completely 1.4 utterly 1.5 truly 1.3 highly 1.3 super 1.3
        most 1.3 seriously 1.3 particularly 1.2 especially 1.2 terribly 1.4 awfully 1.4
        slightly 0.7 somewhat 0.7 barely 0.6 kinda 0.7 fairly 0.8 rather 0.8 bit 0.7
        foarte 1.3 extrem 1.5 chiar 1.2 prea 1.2 total 1.4 complet 1.4 absolut 1.4 atât 1.2
        deosebit 1.3 tare 1.2 puțin 0.7 cam 0.8 oarecum 0.7 destul 0.9
        """.split()
            )
        ]
        * 2,
        strict=True,
    )
}
"""Intensifiers (>1) and dampeners (<1) of the next ``BOOSTER_WINDOW`` words' valence."""

CONTRASTS: frozenset[str] = frozenset(fold(w) for w in "but however dar însă totuși".split())

CUES: tuple[str, ...] = (
    # English: churn
    "cancel",
    "terminate",
    "termination",
    "close my account",
    "close the account",
    "closing my account",
    "unsubscribe",
    "end my contract",
    "end the contract",
    "switch to another provider",
    "switching to another provider",
    "another provider",
    "switch providers",
    "a competitor",
    "take my business elsewhere",
    "port my number",
    "not renew",
    "no longer need",
    # English: complaint
    "refund",
    "money back",
    "chargeback",
    "complaint",
    "not happy",
    "not satisfied",
    "speak to a manager",
    "speak to your manager",
    "talk to a manager",
    "speak to a supervisor",
    "escalate",
    # Romanian (diacritics optional: matching is on folded text)
    "vreau să anulez",
    "anulez",
    "anulare",
    "anulați",
    "reziliez",
    "reziliere",
    "rezilia",
    "închid contul",
    "închideți contul",
    "dezabonez",
    "dezabonare",
    "reclamați",
    "plângere",
    "banii înapoi",
    "rambursare",
    "alt furnizor",
    "schimb furnizorul",
    "nu sunt mulțumit",
    "nu sunt mulțumită",
    "vreau să vorbesc cu un superior",
)
"""Phrases that signal churn or a complaint (rule 6 of the module docstring). "reclamați"
is the stem of "reclamație"/"reclamații" under the inflection rule."""

_CUE_MATCHER = PhraseMatcher.build(CUES)

AGENT_TRACK = "outbound"
"""The agent's track (``ai.transcript``): its words fire no cues (rule 8)."""


def _folded_set(text: str) -> frozenset[str]:
    return frozenset(fold(word) for word in text.split())


CUE_INTENT_WORDS: frozenset[str] = _folded_set("""
    want wants wanted wanna wish would like going gonna plan planning planned intend intending
    intention mean meant need needed ask asking asked request requesting requested call calling
    called try trying looking be been have has had
    vreau vrea vrem voiam doresc dorim doream aș am avem vom voi gând intenționez intenție
    plănuiesc trebuie nevoie cer cerut sun sunat încerc e este era fost
""")
"""Words of wanting, intending, asking or calling, with the auxiliaries and copulas around
them, through which a negator still reaches a cue (rule 7): "don't *want* to cancel",
"never *asked* for a refund", "n-*am* de *gând* să reziliez", "nu *e* o reclamație"."""

CUE_FUNCTION_WORDS: frozenset[str] = _folded_set("""
    a an the my our your this that any some to for of about just really even actually
    o un una unui unei niște să de la pe despre mi îmi mă vă mai doar chiar deloc
""")
"""Articles, possessives, particles and clitics: they neither stop a cue's negation nor count
towards its window ("never asked for *a* refund" is two words from "never")."""

ABILITY_NEGATORS: frozenset[str] = _folded_set("can't cannot cant couldn't couldnt")
"""Negators of ability ("why can't I cancel"): the cue still fires, as a complaint. ``not``
after ``can``/``could`` counts too; "nu pot", "won't let me" and "not able to" need no entry,
since "pot", "let" and "able" are not ``CUE_INTENT_WORDS`` and so stop the negation."""

OTHER_PARTY: frozenset[str] = _folded_set("""
    you you're you've you'd you'll they they're they've they'd they'll nobody nimeni
""")
"""Subjects (or negators) that make a negation someone else's failure, a complaint: "you
never refunded me", "nobody answered my complaint", "nu mi-a răspuns nimeni la reclamație"."""

SPEAKER: frozenset[str] = _folded_set("i i'm i've i'd i'll we we're we've we'd we'll")
"""Subjects that make a negation the speaker's own ("I don't want to cancel")."""

_ENGLISH_ENDINGS = ("ing", "es", "ed", "ly", "s", "d")


def _without_cue_words(lexicon: Mapping[str, float]) -> dict[str, float]:
    """``lexicon`` less the words that are cues themselves ("complaint", "reclamație"): with
    cues on they are scored by rules 6-8, which know negation and the speaker."""
    return {word: value for word, value in lexicon.items() if not _CUE_MATCHER.find_folded(word)}


# Romanian only for "ro": English entries would misread Romanian words ("care" is "which").
# Both for any other language.
_LEXICONS: dict[str, Mapping[str, float]] = {
    "en": EN_LEXICON,
    "ro": RO_LEXICON,
    "": {**RO_LEXICON, **EN_LEXICON},
}
_CUE_LEXICONS = {code: _without_cue_words(lexicon) for code, lexicon in _LEXICONS.items()}


def _lexicon_for(language: str, *, cues: bool = False) -> Mapping[str, float]:
    lexicons = _CUE_LEXICONS if cues else _LEXICONS
    return lexicons.get(language.lower()[:2], lexicons[""])


def _valence(word: str, lexicon: Mapping[str, float]) -> float:
    value = lexicon.get(word)
    if value is not None:
        return value
    for ending in _ENGLISH_ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            value = lexicon.get(word[: -len(ending)])
            if value is not None:
                return value
    return 0.0


def _is_negator(word: str) -> bool:
    return word in NEGATORS or word.endswith("n't")


def _is_boundary(word: str) -> bool:
    return word in PUNCTUATION or word in CONTRASTS


def lexicon_sum(text: str, lexicon: Mapping[str, float]) -> float:
    """The valence sum ``x`` of ``text`` under rules 1-4 of the module docstring."""
    toks = tokens(text)
    valences = [0.0] * len(toks)
    for index, word in enumerate(toks):
        value = _valence(word, lexicon)
        if value == 0.0:
            continue
        for back in range(1, max(NEGATION_WINDOW, BOOSTER_WINDOW) + 1):
            if index - back < 0 or _is_boundary(toks[index - back]):
                break
            previous = toks[index - back]
            if back <= BOOSTER_WINDOW and previous in BOOSTERS:
                value *= BOOSTERS[previous]
            if back <= NEGATION_WINDOW and _is_negator(previous):
                value *= NEGATION_SCALAR
                break  # one negation per word: "not never good" is not double-flipped
        valences[index] = value
    contrast = max((i for i, word in enumerate(toks) if word in CONTRASTS), default=None)
    if contrast is not None:
        valences = [
            value * (BEFORE_BUT if i < contrast else AFTER_BUT) for i, value in enumerate(valences)
        ]
    return sum(valences)


def normalise(total: float) -> float:
    """A valence sum squashed into (-1, 1) (rule 5)."""
    return total / math.sqrt(total * total + NORMALISATION_ALPHA) if total else 0.0


def label(score: float) -> str:
    """``positive``/``neutral``/``negative`` for a score, by ``THRESHOLD``."""
    if score >= THRESHOLD:
        return "positive"
    if score <= -THRESHOLD:
        return "negative"
    return "neutral"


def find_cues(text: str) -> list[str]:
    """The intent cues of ``CUES`` that fire in ``text``, each once, in order of appearance:
    those found there and not retracted by a negation (rule 7)."""
    folded = fold(text)
    fired = (
        cue for cue, start in _CUE_MATCHER.find_folded_at(folded) if not _retracted(folded[:start])
    )
    return list(dict.fromkeys(fired))


def _retracted(before: str) -> bool:
    """Whether the (folded) text ``before`` a cue negates it as the speaker's own intent
    (rule 7): a negator reached through intent and function words only, within
    ``NEGATION_WINDOW`` counted words and the cue's clause, that is not a complaint."""
    toks = tokens(before)
    reach = 0
    for index in range(len(toks) - 1, -1, -1):
        word = toks[index]
        if _is_boundary(word):
            return False
        if _is_negator(word):
            return not _complains(toks[:index], word)
        if word in CUE_FUNCTION_WORDS:
            continue
        reach += 1
        if reach >= NEGATION_WINDOW or word not in CUE_INTENT_WORDS:
            return False  # the negation, if any, is about another verb ("can", "received")
    return False


def _complains(before: Sequence[str], negator: str) -> bool:
    """Whether a negation that reaches a cue is a complaint rather than a retraction: a
    negated ability, someone else's failure, or a "why" question (rule 7)."""
    clause: list[str] = []
    for word in reversed(before):
        if _is_boundary(word):
            break
        clause.append(word)  # nearest first
    if negator in ABILITY_NEGATORS or negator in OTHER_PARTY:
        return True
    if negator == "not" and clause and clause[0] in ("can", "could"):
        return True
    for word in clause[:2]:  # the subject: "you never", "they did not", "I don't"
        if word in OTHER_PARTY:
            return True
        if word in SPEAKER:
            break
    # "why didn't you cancel it", "de ce nu": a rhetorical question, whatever it negates.
    return "why" in clause or ("ce", "de") in pairwise(clause)


def score_text(
    text: str, language: str, *, cues: bool = True, track: str | None = None
) -> tuple[float, list[str]]:
    """One utterance's score in [-1, 1] and the cues that fired in it (none when ``cues``
    is off or ``track`` is the agent's, rule 8; ``None``, a speaker not known, fires them)."""
    score = normalise(lexicon_sum(text, _lexicon_for(language, cues=cues)))
    fired = find_cues(text) if cues and track != AGENT_TRACK else []
    if fired:
        score = min(score, -CUE_SCORE)
    return score, fired


def _aggregate(scores: Sequence[float]) -> dict[str, Any]:
    carrying = [score for score in scores if score != 0.0]
    mean = sum(carrying) / len(carrying) if carrying else 0.0
    return {"score": round(mean, 3), "label": label(mean)}


def sentiment(segments: Sequence[Segment], language: str, *, cues: bool = True) -> dict[str, Any]:
    """The sentiment document of a call's segments (see the module docstring); ``cues=False``
    scores with the plain lexicon, for comparison."""
    scored: list[tuple[Segment, float]] = []
    fired_cues: list[dict[str, Any]] = []
    for segment in segments:
        score, fired = score_text(segment.text, language, cues=cues, track=segment.track)
        scored.append((segment, score))
        fired_cues.extend(
            {"track": segment.track, "start": round(segment.start, 2), "cue": cue} for cue in fired
        )

    by_track: dict[str, list[float]] = {}
    for segment, score in scored:
        by_track.setdefault(segment.track, []).append(score)

    return {
        "method": "lexicon+cues" if cues else "lexicon",
        "overall": _aggregate([score for _, score in scored]),
        "tracks": {track: _aggregate(scores) for track, scores in sorted(by_track.items())},
        "segments": [
            {
                "track": segment.track,
                "start": round(segment.start, 2),
                "end": round(segment.end, 2),
                "score": round(score, 3),
                "label": label(score),
            }
            for segment, score in scored
        ],
        "timeline": _timeline(scored),
        "cues": fired_cues,
    }


def _timeline(scored: Sequence[tuple[Segment, float]]) -> list[dict[str, Any]]:
    if not scored:
        return []
    duration = max(segment.end for segment, _ in scored)
    window = max(TIMELINE_MIN_WINDOW_S, duration / TIMELINE_WINDOWS)
    windows: dict[int, list[float]] = {}
    for segment, score in scored:
        windows.setdefault(int(max(0.0, segment.start) // window), []).append(score)
    return [
        {
            "start": round(index * window, 2),
            "end": round(min((index + 1) * window, duration), 2),
            **_aggregate(scores),
        }
        for index, scores in sorted(windows.items())
    ]
