"""Redaction's goals on the labelled utterances (``tests/data/redaction/utterances.json``,
made by ``bench/make_redaction_fixtures.py``), in both forms: as people say the values and
as Whisper writes them when it hears well. The goals are the issue's: card numbers recall
>= 0.98; phone numbers, IBANs, CNPs and e-mail addresses recall >= 0.95 at precision
>= 0.90. Names are reported per language, and held to what was measured.
"""

from __future__ import annotations

import pytest

from ai.redaction.ner import EnglishPersons
from ai.redaction.redact import Redactor
from bench.redaction_score import by_language, load_heldout, load_utterances, score

GOALS = {
    "card_number": (0.98, 0.90),
    "phone_number": (0.95, 0.90),
    "iban": (0.95, 0.90),
    "ro_cnp": (0.95, 0.90),
    "email": (0.95, 0.90),
    "postal_address": (0.90, 0.90),
}
"""(recall, precision) at least. Addresses are not among the issue's goals; 0.90 holds
what the rules were measured at (1.00 on both forms) with room for one miss in ten."""

NAME_RECALL = {"en": 0.85, "ro": 0.85}
"""Measured 0.93 (en, 13 of 14, both forms) and 1.00 (ro); the floor allows one more miss
in each language before it fails."""


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(lambda: EnglishPersons().find)


@pytest.mark.parametrize("form", ["spoken", "written"])
def test_the_goals_on_the_labelled_utterances(redactor: Redactor, form: str) -> None:
    items = load_utterances()
    assert len(items) >= 200
    tallies = score(items, redactor, form)
    for entity, (recall, precision) in GOALS.items():
        tally = tallies[entity]
        assert tally.labels >= 20, entity
        assert tally.recall >= recall, (entity, tally.missed)
        assert tally.precision >= precision, (entity, tally.wrong)
    assert tallies["person_name"].precision >= 0.90, tallies["person_name"].wrong
    for language, per_type in by_language(items, redactor, form).items():
        names = per_type["person_name"]
        assert names.recall >= NAME_RECALL[language], (language, names.missed)


HELDOUT_NAME_PRECISION = 0.80
"""English names on the held-out set: 0.84 measured (16 of 19: the small English model
takes "Premium Plus", "Marlowe House" and a town for persons); Romanian 1.00."""


def test_the_goals_on_the_held_out_utterances(redactor: Redactor) -> None:
    # Written by another author without reading the detector. First measured before any
    # rule was changed for it (bench/README.md gives both measurements); since then it has
    # also guided rules, so it is no longer a blind test, only an independent one.
    items = load_heldout()
    assert len(items) >= 150
    tallies = score(items, redactor, "text")
    for entity, (recall, precision) in GOALS.items():
        tally = tallies[entity]
        if entity == "postal_address":
            # 0.83 measured (15 of 18): three English ones begin with a house's or a
            # business park's name, or name a street without its kind ("61 Kingsway").
            recall = 0.80
        assert tally.recall >= recall, (entity, tally.missed)
        assert tally.precision >= precision, (entity, tally.wrong)
    for language, per_type in by_language(items, redactor, "text").items():
        names = per_type["person_name"]
        assert names.recall >= NAME_RECALL[language], (language, names.missed)
        assert names.precision >= HELDOUT_NAME_PRECISION, (language, names.wrong)
