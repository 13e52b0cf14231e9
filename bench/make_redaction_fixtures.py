"""Regenerate the labelled utterances of the redaction tests and benchmark
(``tests/data/redaction/utterances.json``).

Each utterance is a sentence a caller (or an agent) says, English or Romanian, holding
zero or more pieces of personal data, with the character span and type of each. The values
are made valid by the libraries that check them (a Luhn digit, a CNP's date and check
digit, an IBAN's checksum, a phone number ``phonenumbers`` calls valid), and written in
two forms:

* ``spoken``: as people say them, which is what eSpeak NG reads for the audio benchmark:
  digits as words, in the groups people make ("four five three two, zero one ..."), pairs
  now and then ("forty five thirty two"), "double five", "oh" for zero in English phone
  numbers, fillers between groups ("um", "ăă"), letters spelled ("R O four nine"), e-mail
  addresses with "dot" and "at" ("punct", "arond");
* ``written``: as Whisper writes what it heard when it hears it well: digits in their
  groups (``4532 0151 1283 0366``, ``0722-123-456``), ``ana.pop@yahoo.ro``.

``value`` is the value itself (digits, the address, the name): ``bench/redaction.py`` looks
for it in what Whisper hears of the redacted audio.

Names and streets come from lists of this program's own, which overlap with the detector's
gazetteer (``ai.redaction.gazetteer``) only as much as real names do: about half the names
here are not in it, so the name recall measured is not the gazetteer's own. About one in
six utterances holds no personal data but numbers, times, amounts or "at": the precision
test.

    python bench/make_redaction_fixtures.py [--out tests/data/redaction/utterances.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import iban, luhn
from stdnum.ro import cnp

SEED = 19
OUT = Path("tests/data/redaction/utterances.json")

DIGITS = {
    "en": "zero one two three four five six seven eight nine".split(),
    "ro": "zero unu doi trei patru cinci șase șapte opt nouă".split(),
}
TENS = {
    "en": ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"],
    "ro": [
        "", "", "douăzeci", "treizeci", "patruzeci", "cincizeci", "șaizeci", "șaptezeci",
        "optzeci", "nouăzeci",
    ],
}  # fmt: skip
TEENS = {
    "en": "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split(),
    "ro": "zece unsprezece doisprezece treisprezece paisprezece cincisprezece șaisprezece "
    "șaptesprezece optsprezece nouăsprezece".split(),
}
FILLERS = {"en": ["um", "uh"], "ro": ["ăă", "deci"]}
LETTER_SEPARATOR = " "

GIVEN = {
    "en": "Sarah Thomas Emily Oliver Hannah Jack Megan Liam Chloe Ethan Grace Noah Zoe Owen "
    "Abigail Caleb Fiona Declan Imogen Rory".split(),
    "ro": "Andreea Bogdan Ioana Mihai Cristina Răzvan Oana Tudor Larisa Sorin Ilinca Horia "
    "Smaranda Vlad Anca Petru Irina Codrin Delia Ovidiu".split(),
}
SURNAMES = {
    "en": "Connor Whitfield Harris Brennan Lowell Fairchild Thompson Ashdown Kemp Walsh "
    "Hargreaves Doyle".split(),
    "ro": "Popescu Ionescu Dumitrescu Stoica Vasilache Munteanu Bratu Ciobanu Zăvoianu "
    "Toma Lungu Pîrvu".split(),
}
STREETS = {
    "en": ["Baker", "Mill", "Station", "Church", "Victoria", "Park", "Kingsley", "Elm"],
    "ro": ["Florilor", "Mihai Eminescu", "Lalelelor", "Avram Iancu", "Independenței",
           "Republicii", "Teiului", "Nicolae Bălcescu"],
}  # fmt: skip
SUFFIXES = ["Street", "Road", "Avenue", "Lane", "Close"]
RO_STREET_WORDS = ["strada", "bulevardul", "calea", "aleea"]
TOWNS = {"en": ["London", "Leeds", "Bristol", "York"], "ro": ["București", "Cluj", "Iași"]}
DOMAINS = ["gmail.com", "yahoo.com", "yahoo.ro", "outlook.com", "firma.ro", "mail.co.uk"]
RO_BANKS = ["BTRL", "RNCB", "BRDE", "INGB", "RZBR", "BACX", "CECE"]
GB_BANKS = ["NWBK", "BARC", "LOYD", "HBUK", "MIDL"]

TEMPLATES: dict[str, dict[str, list[str]]] = {
    "card_number": {
        "en": ["My card number is {}.", "It's a Visa, {}, expiring next year.",
               "Sure, the long number on the card is {}.", "Can you charge {} please?",
               "The card ends, well the whole number is {}."],
        "ro": ["Numărul cardului este {}.", "Da, cardul meu e {}.",
               "Vă dau numărul de card: {}.", "Plătesc cu cardul {}, vă rog."],
    },
    "phone_number": {
        "en": ["You can reach me on {}.", "My mobile is {}.", "Call me back at {} please.",
               "The number is {}, that's my work phone."],
        "ro": ["Numărul meu de telefon este {}.", "Mă puteți suna la {}.",
               "Telefonul meu e {}.", "Sunați-mă înapoi la {}, vă rog."],
    },
    "iban": {
        "en": ["My IBAN is {}.", "Please refund it to {}.", "The account is {}."],
        "ro": ["IBAN-ul meu este {}.", "Contul este {}.", "Vă rog returnați banii în {}."],
    },
    "email": {
        "en": ["My email is {}.", "Send it to {} please.", "You can write to {}."],
        "ro": ["Adresa de email este {}.", "Trimiteți-mi la {}.", "Emailul meu e {}."],
    },
    "ro_cnp": {
        "en": ["My personal numeric code is {}.", "The CNP is {}."],
        "ro": ["CNP-ul meu este {}.", "Codul numeric personal este {}.", "Da, CNP {}."],
    },
    "person_name": {
        "en": ["My name is {}.", "Hi, this is {} calling about my bill.",
               "The account is under {}.", "Could I speak to {} please?"],
        "ro": ["Mă numesc {}.", "Bună ziua, sunt {} și sun pentru factură.",
               "Contul este pe numele {}.", "Numele meu este {}."],
    },
    "postal_address": {
        "en": ["I live at {}.", "Please send it to {}.", "My address is {}."],
        "ro": ["Locuiesc pe {}.", "Adresa mea este {}.", "Trimiteți coletul pe {}."],
    },
}  # fmt: skip
DISTRACTORS = {
    "en": [
        "The total comes to forty five pounds and twenty pence.",
        "Your order number is one two three four five.",
        "I called at three thirty yesterday afternoon.",
        "Look at the invoice from the twelfth of March, twenty twenty four.",
        "We have been customers for fifteen years.",
        "It happened at about nine in the morning, at the office.",
        "Press one for billing, two for support.",
        "The reference on the letter is A B seven seven.",
        "I paid two hundred and fifty pounds last month.",
        "Meet me at the station at half past six.",
        "The contract runs for twenty four months from January.",
        "There are three people on the plan, my wife and two kids.",
        "My name is not important, I just want this fixed.",
        "This is really frustrating, I have called four times.",
        "We moved to the street behind the park last year.",
    ],
    "ro": [
        "Factura este de o sută douăzeci de lei.",
        "Comanda are numărul patru cinci șase.",
        "Am sunat la ora trei și jumătate.",
        "Sunt client de cincisprezece ani.",
        "Am plătit două sute cincizeci de lei luna trecută.",
        "Ne vedem pe strada principală mâine.",
        "Contractul este pe douăzeci și patru de luni.",
        "Apăsați unu pentru facturare, doi pentru suport.",
        "Sunt foarte nemulțumit, am sunat de patru ori.",
        "Am primit mesajul la ora nouă dimineața.",
        "Abonamentul costă treizeci și nouă de lei pe lună.",
        "Suntem trei persoane pe abonament.",
        "Am fost la magazin de două ori săptămâna asta.",
        "Sunt bine, mulțumesc, dar am o problemă cu factura.",
        "Plata a fost făcută pe douăzeci martie.",
    ],
}


class Maker:
    """Valid values and their spoken and written forms, from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def digits(self, count: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(count))

    # --- values: (canonical value, groups as people say them) ---------------------------

    def card(self) -> tuple[str, list[str]]:
        prefix, length = self.rng.choice(
            [("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)]
        )
        body = prefix + self.digits(length - len(prefix) - 1)
        value = body + luhn.calc_check_digit(body)
        groups = (
            [value[:4], value[4:10], value[10:]]
            if length == 15
            else [value[i : i + 4] for i in range(0, 16, 4)]
        )
        return value, groups

    def cnp(self) -> tuple[str, list[str]]:
        while True:
            year = self.rng.randint(40, 99)
            body = (
                f"{self.rng.choice('1256')}{year:02d}{self.rng.randint(1, 12):02d}"
                f"{self.rng.randint(1, 28):02d}{self.rng.choice(['12', '22', '40', '35'])}"
                f"{self.digits(3)}"
            )
            value = body + cnp.calc_check_digit(body)
            if cnp.is_valid(value):
                return value, [value[0], value[1:7], value[7:9], value[9:]]

    def phone(self, language: str) -> tuple[str, list[str], bool]:
        """(value, groups, international)."""
        kind = self.rng.choice(["ro_mobile", "ro_mobile", "ro_intl", "ro_landline", "uk"])
        if language == "en" and self.rng.random() < 0.5:
            kind = "uk"
        while True:
            if kind == "ro_mobile":
                value = "07" + self.rng.choice("2345678") + self.digits(7)
                groups, intl = [value[:4], value[4:7], value[7:]], False
            elif kind == "ro_intl":
                value = "+407" + self.rng.choice("2345678") + self.digits(7)
                groups, intl = ["40", value[3:6], value[6:9], value[9:]], True
            elif kind == "ro_landline":
                value = "021" + self.rng.choice("3") + self.digits(6)
                groups, intl = [value[:3], value[3:6], value[6:]], False
            else:
                value = "07" + self.rng.choice("4579") + self.digits(8)
                groups, intl = [value[:5], value[5:8], value[8:]], False
            region = None if value.startswith("+") else ("GB" if kind == "uk" else "RO")
            if phonenumbers.is_valid_number(phonenumbers.parse(value, region)):
                return value, groups, intl

    def iban(self, language: str) -> tuple[str, list[str]]:
        if language == "ro" or self.rng.random() < 0.4:
            bban = self.rng.choice(RO_BANKS) + self.digits(16)
            country = "RO"
        else:
            bban = self.rng.choice(GB_BANKS) + self.digits(14)
            country = "GB"
        check = iban.calc_check_digits(country + "00" + bban)
        value = country + check + bban
        assert iban.is_valid(value)
        return value, [value[i : i + 4] for i in range(0, len(value), 4)]

    # --- spoken forms ---------------------------------------------------------------------

    def say_digits(self, group: str, language: str, *, phone: bool = False) -> str:
        words: list[str] = []
        i = 0
        while i < len(group):
            digit = group[i]
            if (
                language == "en"
                and i + 1 < len(group)
                and group[i + 1] == digit
                and self.rng.random() < 0.3
            ):
                words.append(f"double {DIGITS[language][int(digit)]}")
                i += 2
                continue
            if language == "en" and phone and digit == "0" and self.rng.random() < 0.5:
                words.append("oh")
            else:
                words.append(DIGITS[language][int(digit)])
            i += 1
        return " ".join(words)

    def say_pair(self, pair: str, language: str) -> str:
        tens, unit = int(pair[0]), int(pair[1])
        if tens == 0:
            return self.say_digits(pair, language)
        if tens == 1:
            return TEENS[language][unit]
        if unit == 0:
            return TENS[language][tens]
        joiner = " și " if language == "ro" else " "
        return TENS[language][tens] + joiner + DIGITS[language][unit]

    def say_groups(self, groups: list[str], language: str, *, phone: bool = False) -> str:
        said: list[str] = []
        for group in groups:
            if len(group) == 4 and group[0] != "0" and self.rng.random() < 0.2:
                said.append(
                    self.say_pair(group[:2], language) + " " + self.say_pair(group[2:], language)
                )
            else:
                said.append(self.say_digits(group, language, phone=phone))
        out = said[0]
        for piece in said[1:]:
            if self.rng.random() < 0.15:
                out += f", {self.rng.choice(FILLERS[language])}, {piece}"
            else:
                out += ", " + piece
        return out

    def say_letters(self, letters: str) -> str:
        return LETTER_SEPARATOR.join(letters)

    def say_iban(self, groups: list[str], language: str) -> str:
        said: list[str] = []
        for group in groups:
            words = []
            for char in group:
                words.append(char if char.isalpha() else DIGITS[language][int(char)])
            said.append(" ".join(words))
        return ", ".join(said)


def _item(maker: Maker, language: str, entity: str) -> tuple[str, str, str, str, str]:
    """(template, spoken value, written value, canonical value, entity)."""
    rng = maker.rng
    template = rng.choice(TEMPLATES[entity][language])
    if entity == "card_number":
        value, groups = maker.card()
        return template, maker.say_groups(groups, language), " ".join(groups), value, entity
    if entity == "ro_cnp":
        value, groups = maker.cnp()
        return template, maker.say_groups(groups, language), value, value, entity
    if entity == "phone_number":
        value, groups, intl = maker.phone(language)
        plus = "plus " if language == "en" else "plus "
        spoken = maker.say_groups(groups, language, phone=True)
        written = ("+" if intl else "") + " ".join(groups)
        return template, (plus + spoken if intl else spoken), written, value, entity
    if entity == "iban":
        value, groups = maker.iban(language)
        return template, maker.say_iban(groups, language), " ".join(groups), value, entity
    if entity == "email":
        given = rng.choice(GIVEN[language]).lower().replace("ă", "a").replace("ț", "t")
        surname = rng.choice(SURNAMES[language]).lower().replace("ă", "a").replace("î", "i")
        domain = rng.choice(DOMAINS)
        local = rng.choice([f"{given}.{surname}", f"{given}{surname}", given])
        value = f"{local}@{domain}"
        dot, at = ("dot", "at") if language == "en" else ("punct", rng.choice(["arond", "at"]))
        spoken = f" {dot} ".join(local.split(".")) + f" {at} " + f" {dot} ".join(domain.split("."))
        return template, spoken, value, value, entity
    if entity == "person_name":
        name = f"{rng.choice(GIVEN[language])} {rng.choice(SURNAMES[language])}"
        return template, name, name, name, entity
    # postal_address
    if language == "en":
        number = rng.randint(2, 199)
        street = f"{rng.choice(STREETS['en'])} {rng.choice(SUFFIXES)}"
        town = rng.choice(TOWNS["en"])
        spoken_number = maker.say_pair(f"{number:02d}", "en") if number < 100 else str(number)
        if number >= 100:
            spoken_number = f"{DIGITS['en'][number // 100]} hundred " + maker.say_pair(
                f"{number % 100:02d}", "en"
            )
        return (
            template,
            f"{spoken_number} {street}, {town}",
            f"{number} {street}, {town}",
            f"{number} {street}, {town}",
            entity,
        )
    number = rng.randint(1, 60)
    street = f"{rng.choice(RO_STREET_WORDS)} {rng.choice(STREETS['ro'])}"
    spoken_number = maker.say_pair(f"{number:02d}", "ro") if number >= 10 else DIGITS["ro"][number]
    extra_spoken = extra_written = ""
    if rng.random() < 0.5:
        block = rng.randint(1, 20)
        apartment = rng.randint(1, 80)
        said_apartment = maker.say_pair(f"{apartment:02d}", "ro")
        extra_spoken = f", bloc {DIGITS['ro'][block % 10]}, apartament {said_apartment}"
        extra_written = f", bloc {block % 10}, apartament {apartment}"
    return (
        template,
        f"{street} numărul {spoken_number}{extra_spoken}",
        f"{street} numărul {number}{extra_written}",
        f"{street} {number}",
        entity,
    )


def _fill(template: str, value: str) -> tuple[str, tuple[int, int]]:
    start = template.index("{}")
    return template.replace("{}", value), (start, start + len(value))


def _label(kind: str, span: tuple[int, int]) -> dict[str, Any]:
    return {"type": kind, "start": span[0], "end": span[1]}


def make(seed: int = SEED) -> list[dict[str, Any]]:
    maker = Maker(seed)
    counts = {
        "card_number": 20, "phone_number": 20, "iban": 12, "email": 14, "ro_cnp": 12,
        "person_name": 14, "postal_address": 12,
    }  # fmt: skip
    items: list[dict[str, Any]] = []
    for language in ("en", "ro"):
        for entity, count in counts.items():
            for _ in range(count):
                template, spoken, written, value, kind = _item(maker, language, entity)
                spoken_text, spoken_span = _fill(template, spoken)
                written_text, written_span = _fill(template, written)
                items.append({
                    "language": language,
                    "track": maker.rng.choice(["inbound", "inbound", "outbound"]),
                    "spoken": spoken_text,
                    "written": written_text,
                    "labels": {
                        "spoken": [_label(kind, spoken_span)],
                        "written": [_label(kind, written_span)],
                    },
                    "value": value,
                })  # fmt: skip
        for sentence in DISTRACTORS[language]:
            items.append({
                "language": language, "track": "inbound", "spoken": sentence,
                "written": sentence, "labels": {"spoken": [], "written": []},
            })  # fmt: skip
    maker.rng.shuffle(items)
    for index, item in enumerate(items):
        item["id"] = f"u{index:03d}"
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    items = make()
    document = {
        "about": "Labelled utterances for PII redaction (bench/make_redaction_fixtures.py): "
        "'spoken' is what a person says (and eSpeak NG reads), 'written' what Whisper writes "
        "when it hears well; labels are [start, end) character spans of each form.",
        "seed": SEED,
        "items": items,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(items)} utterances -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
