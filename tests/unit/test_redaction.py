"""Redaction's pure parts: spoken numbers, each detector, spans on the timeline, the
redacted transcript, the instructions, and the packaged model's pin."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from ai.redaction import ner
from ai.redaction.addresses import find_addresses
from ai.redaction.detect import Found, find_emails, find_ibans, find_numbers, merge
from ai.redaction.names import find_names
from ai.redaction.redact import Redactor, redact_transcript, segment_words
from ai.redaction.spoken import digit_runs, lex, normalise
from ai.text import PhraseMatcher, words
from ai.topics import key_phrases
from ai.transcript import Segment, Transcript, Word
from crypto.errors import ConfigError
from storage.errors import InvalidInstructions
from storage.instructions import parse_instructions
from storage.redactionrules import ENTITY_TYPES, RedactionRule, entity_tag

ALL = frozenset(ENTITY_TYPES)
CARD = "4532015112830366"
CNP = "1800101221144"
IBAN = "RO49AAAA1B31007593840000"


def units(text: str):  # type: ignore[no-untyped-def]
    return normalise(lex(text.split()))


def runs(text: str) -> list[str]:
    return [run.digits for run in digit_runs(units(text))]


def kinds(found: list[Found]) -> list[str]:
    return [f.entity for f in found]


# --- spoken numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("four five three two, zero one five one", ["45320151"]),
        ("forty five thirty two", ["4532"]),
        ("double five oh seven", ["5507"]),
        ("two hundred and five", ["205"]),
        ("one hundred twenty three", ["123"]),
        ("two thousand twenty four", ["2024"]),
        ("nineteen eighty four", ["1984"]),
        ("twenty-three", ["23"]),
        ("patru cinci trei doi", ["4532"]),
        ("douăzeci și trei", ["23"]),
        ("o sută douăzeci", ["120"]),
        ("paișpe, unșpe", ["1411"]),  # colloquial teens
        ("șapte, ăă, opt, um, nouă", ["789"]),  # fillers inside a run
        ("4532-0151 1283", ["453201511283"]),
        ("four thousand five hundred thirty two", ["4532"]),
        ("patru mii cinci sute treizeci și doi", ["4532"]),
        ("two thousand five hundred", ["2500"]),
        ("O seven nine one one", ["07911"]),  # Whisper's capital O among numbers
        ("O7911 123456", ["07911123456"]),
        ("G B six O", ["60"]),
        ("two oh oh oh, double oh five", ["2000005"]),
    ],
)
def test_spoken_numbers_become_digit_runs(text: str, digits: list[str]) -> None:
    assert runs(text) == digits


def test_words_that_are_numbers_only_among_numbers() -> None:
    assert runs("double check it") == []
    assert runs("oh well") == []  # "oh" alone is an interjection
    assert runs("Oh, I see") == []
    assert runs("o casă") == []  # Romanian "o" is "a" unless a hundred follows
    assert runs("O sută douăzeci") == ["120"]
    assert runs("oh seven") == ["07"]
    assert runs("R O four nine") == ["49"]  # a spelled "O" is a letter


def test_a_run_stops_at_words_and_keeps_its_groups() -> None:
    (run,) = digit_runs(units("call 0722 123 456 please"))
    assert run.digits == "0722123456"
    assert [(s, e) for s, e, _ in run.groups] == [(0, 4), (4, 7), (7, 10)]
    assert run.span(0, 10) == (1, 3)  # words 1 to 3 said it
    assert runs("card 1234 and 5678") == ["1234", "5678"]


# --- detectors ----------------------------------------------------------------------------


def test_card_numbers_need_a_luhn_digit_and_a_network() -> None:
    assert kinds(find_numbers(units("card 4532 0151 1283 0366"), ALL)) == ["card_number"]
    assert find_numbers(units("card 4532 0151 1283 0367"), ALL) == []  # check digit wrong
    assert find_numbers(units("ref 9532 0151 1283 0362"), ALL) == []  # 9: no card network
    spoken = "four five three two, zero one five one, one two eight three, zero three six six"
    assert kinds(find_numbers(units(spoken), ALL)) == ["card_number"]


def test_a_card_is_looked_for_in_whole_groups() -> None:
    # The card plus a trailing expiry group: the card is found in its own groups.
    (found,) = find_numbers(units("4532 0151 1283 0366 12 26"), ALL)
    assert (found.entity, found.first, found.last) == ("card_number", 0, 3)


def test_overlapping_readings_are_all_redacted() -> None:
    # A Luhn-valid window across the end of a phone number and the start of a card must not
    # leave the ends of either in clear: every valid reading is kept, and merge joins them.
    text = "0722 561 347, 4698 1984 6346 4843"
    spans = merge(find_numbers(units(text), ALL))
    assert [(f.first, f.last) for f in spans] == [(0, 6)]
    assert [f.entity for f in find_numbers(units(text), ALL)].count("phone_number") == 1


def test_a_long_run_of_digits_costs_linear_time() -> None:
    # Candidates are at most 19 digits long: 3,000 groups are not 9 million windows.
    many = " ".join(f"{n % 1000:03d}" for n in range(3000))
    started = time.perf_counter()
    find_numbers(units(many), ALL)
    assert time.perf_counter() - started < 10  # quadratic took minutes; linear well under 1 s


def test_cnp_wins_over_a_card_of_the_same_digits() -> None:
    assert kinds(find_numbers(units(f"cnp {CNP}"), ALL)) == ["ro_cnp"]
    assert find_numbers(units("cnp 1800101221145"), ALL) == []  # check digit wrong


@pytest.mark.parametrize(
    "text",
    [
        "0722 123 456",
        "plus four zero seven two two one two three four five six",
        "+40 722 123 456",
        "0040 722 123 456",
        "021 312 3456",
        "07911 123456",
        "+44 7911 123456",
    ],
)
def test_phone_numbers(text: str) -> None:
    found = find_numbers(units(text), ALL)
    assert kinds(found) == ["phone_number"]
    assert found[0].first == 0  # the "+" or "plus" is part of it


@pytest.mark.parametrize(
    "text", ["order 1234567890", "2125551234", "0000 000 000", "the year 2024, 45 euros"]
)
def test_numbers_that_are_no_phone(text: str) -> None:
    assert find_numbers(units(text), ALL) == []


def test_only_the_instructed_kinds_are_looked_for() -> None:
    assert find_numbers(units("0722 123 456"), frozenset({"card_number"})) == []


def test_ibans_written_and_spelled() -> None:
    assert kinds(find_ibans(units("RO49 AAAA 1B31 0075 9384 0000"))) == ["iban"]
    spelled = "R O four nine, A A A A, one B three one, zero zero seven five, nine three eight "
    spelled += "four, zero zero zero zero"
    assert kinds(find_ibans(units(spelled))) == ["iban"]
    assert find_ibans(units("RO49 AAAA 1B31 0075 9384 0001")) == []  # checksum wrong
    assert find_ibans(units("ro fifty")) == []


@pytest.mark.parametrize(
    "text",
    [
        "write to john.smith@gmail.com please",
        "john dot smith at gmail dot com",
        "ion punct popescu arond yahoo punct ro",
        "ion punct popescu a rond yahoo punct ro",
        "ana underscore pop at firma dot co dot uk",
        "write to ana.pop@firma.ie please",  # after a written @, any top-level domain
        "accounts@harwood-logistics.co.uk",
        "mihai liniuță jos dobre arond gmail punct com",
        "siobhan underscore kelly eighty four at hotmail dot co dot uk",
        "ana dot maria dot ionescu dot popa at yahoo dot com",
    ],
)
def test_emails(text: str) -> None:
    assert kinds(find_emails(units(text))) == ["email"]


@pytest.mark.parametrize(
    "text",
    [
        "look at the bill",
        "meet me at the station dot",
        "at gmail",
        "the site dot com",
        "I was at home. It was fine",  # "home. It": a sentence's end is no dot
        "look at this. Be careful",
        "meet at school. Me too",
    ],
)
def test_at_and_dot_are_no_email_on_their_own(text: str) -> None:
    assert find_emails(units(text)) == []


def names(text: str) -> list[str]:
    words = text.split()
    found = merge(find_names(units(text), "", [], None))  # cue and list may both find one
    return [" ".join(words[f.first : f.last + 1]) for f in found]


def test_names_after_cues_and_from_the_lists() -> None:
    assert names("Bună ziua, mă numesc Andreea Popescu.") == ["Andreea Popescu."]
    assert names("numele meu este ion ionescu") == ["ion ionescu"]  # lower-case ASR
    assert names("my name is sarah connor") == ["sarah connor"]
    assert names("vorbiți cu domnul Zăvoianu") == ["Zăvoianu"]
    assert names("this is Maria from accounts") == ["Maria"]
    assert names("Thanks, Mihai, have a nice day.") == ["Mihai,"]
    assert names("Ok, Răzvan Munteanu here") == ["Răzvan Munteanu"]


def test_the_letters_that_spell_a_name_are_part_of_it() -> None:
    assert names("my name is Elena, E L E N A, thanks") == ["Elena, E L E N A,"]
    assert names("it is David, D-A-V-I-D.") == ["David, D-A-V-I-D."]


def test_no_name_without_a_cue_or_a_listed_name() -> None:
    assert names("this is fine") == []
    assert names("sunt bine, mulțumesc") == []
    assert names("my name is not important") == []
    assert names("Will you call me back?") == []  # an ambiguous name needs a cue


def test_the_english_model_finds_persons_by_character_span() -> None:
    text = "yes it is Mark Whitfield"
    offsets = [0, 4, 7, 10, 15]
    found = find_names(units(text), text, offsets, lambda _: [(10, 24)])
    assert (found[-1].first, found[-1].last) == (3, 4)


def addresses(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[f.first : f.last + 1]) for f in find_addresses(units(text))]


def test_addresses() -> None:
    assert addresses("I live at 42 Baker Street, London. Thanks") == ["42 Baker Street, London."]
    assert addresses("it's forty two Baker Street") == ["forty two Baker Street"]
    assert addresses("My address is 112 mil close London") == ["112 mil close London"]
    assert addresses("It's 157 Church Road. London is far") == ["157 Church Road."]
    assert addresses("Locuiesc pe strada Florilor numărul cinci, bloc A2, sector trei.") == [
        "strada Florilor numărul cinci, bloc A2, sector trei."
    ]
    assert addresses("postcode SW1A 1AA") == ["SW1A 1AA"]
    assert addresses("cod poștal 012345") == ["012345"]


def test_no_address_without_a_number() -> None:
    assert addresses("am sunat de pe stradă") == []
    assert addresses("ne vedem pe strada principală mâine") == []
    assert addresses("we have 2 kids on the street") == []


def test_overlapping_finds_merge_into_the_longer() -> None:
    merged = merge([Found("postal_address", 2, 8), Found("person_name", 3, 4)])
    assert merged == [Found("postal_address", 2, 8)]
    assert merge([Found("email", 0, 1), Found("email", 3, 4)]) == [
        Found("email", 0, 1),
        Found("email", 3, 4),
    ]


# --- spans and the redacted transcript -----------------------------------------------------


def timed(track: str, words: list[tuple[float, float, str]]) -> Segment:
    text = "".join(w for _, _, w in words).strip()
    return Segment(track, words[0][0], words[-1][1], text, tuple(Word(*w) for w in words))


def test_a_number_cut_into_two_segments_is_one_span_with_the_words_times() -> None:
    first = timed("inbound", [(1.0, 1.2, " card"), (1.3, 2.0, " 4532"), (2.1, 2.8, " 0151,")])
    reply = timed("outbound", [(3.0, 3.4, " yes")])
    second = timed("inbound", [(4.0, 4.7, " 1283"), (4.8, 5.5, " 0366."), (5.6, 6.0, " ok")])
    transcript = Transcript("en", "m", 7.0, (first, reply, second))
    spans = Redactor().find(transcript, ALL)
    assert [(s.entity, s.track, s.start, s.end) for s in spans] == [
        ("card_number", "inbound", 1.3, 5.5)
    ]
    assert spans[0].view() == {"type": "card_number", "track": "inbound", "start": 1.3, "end": 5.5}
    redacted = redact_transcript(transcript, spans)
    assert [s.text for s in redacted.segments] == [
        "card [CARD_NUMBER],",
        "yes",
        "[CARD_NUMBER]. ok",
    ]
    assert all(s.words == () for s in redacted.segments)  # no original word survives
    assert CARD[:4] not in repr(redacted)


def test_segments_without_word_times_share_their_time_out() -> None:
    segment = Segment("inbound", 10.0, 12.0, "ab cd")
    words = segment_words(segment)
    assert [w.text for w in words] == [" ab", " cd"]
    assert words[0].start == 10.0 and words[-1].end == 12.0
    assert words[0].end == words[1].start == 11.0


def test_redaction_of_two_kinds_in_one_segment() -> None:
    text = f"my card is {CARD} and my email is ana.pop@yahoo.ro."
    transcript = Transcript("en", "m", 5.0, (Segment("inbound", 0.0, 5.0, text),))
    spans = Redactor().find(transcript, ALL)
    assert [s.entity for s in spans] == ["card_number", "email"]
    (segment,) = redact_transcript(transcript, spans).segments
    assert segment.text == "my card is [CARD_NUMBER] and my email is [EMAIL]."
    only_cards = Redactor().find(transcript, frozenset({"card_number"}))
    assert [s.entity for s in only_cards] == ["card_number"]


# --- instructions -------------------------------------------------------------------------


def test_redaction_is_off_by_default_and_all_entities_when_on() -> None:
    rule = parse_instructions({}).ai.redaction
    assert not rule.enabled
    on = RedactionRule(transcript=True)
    assert on.kinds() == ALL
    assert RedactionRule(transcript=True, entities=("iban", "iban")).entities == ("iban",)
    assert entity_tag("card_number") == "[CARD_NUMBER]"


@pytest.mark.parametrize(
    ("redaction", "field"),
    [
        ({"transcript": True}, "ai.redaction"),  # no AI feature instructed
        ({"entities": []}, "ai.redaction.entities"),
        ({"entities": ["cards"]}, "ai.redaction.entities.0"),
        ({"padding_ms": 199}, "ai.redaction.padding_ms"),
        ({"padding_ms": 2001}, "ai.redaction.padding_ms"),
        ({"fill": "beep"}, "ai.redaction.fill"),
        ({"transcript": "yes"}, "ai.redaction.transcript"),
        ({"values": True}, "ai.redaction.values"),
        ({"audio": True, "keep_original": True}, "ai.redaction.keep_original"),
    ],
)
def test_invalid_redaction_names_its_field(redaction: dict[str, object], field: str) -> None:
    ai: dict[str, object] = {"redaction": redaction}
    if field != "ai.redaction":
        ai["transcript"] = True
    with pytest.raises(InvalidInstructions) as caught:
        parse_instructions({"recording": {"enabled": True}, "ai": ai})
    assert caught.value.field == field


def test_settings_that_would_do_nothing_are_refused() -> None:
    # An original is kept only of a transcript; audio is redacted only where it is kept.
    keep = {"transcript": True, "keep_original": True}
    with pytest.raises(InvalidInstructions) as caught:
        parse_instructions({"ai": {"summary": True, "redaction": keep}})
    assert caught.value.field == "ai.redaction" and "ai.transcript" in caught.value.message
    with pytest.raises(InvalidInstructions) as caught:
        parse_instructions({"ai": {"transcript": True, "redaction": {"audio": True}}})
    assert caught.value.field == "ai.redaction.audio"
    assert "recording.enabled" in caught.value.message
    ok = {"recording": {"enabled": True}, "ai": {"transcript": True, "redaction": {"audio": True}}}
    assert parse_instructions(ok).ai.redaction.audio


# --- the packaged named-entity model -------------------------------------------------------


def test_the_model_is_checked_against_its_pin(tmp_path: Path) -> None:
    path = ner.model_path()
    assert ner.tree_digest(path) == ner.TREE_SHA256
    copy = tmp_path / "model"
    shutil.copytree(path, copy)
    assert ner.tree_digest(copy) == ner.TREE_SHA256
    (copy / "ner" / "cfg").write_bytes((copy / "ner" / "cfg").read_bytes() + b" ")
    assert ner.tree_digest(copy) != ner.TREE_SHA256


def test_a_damaged_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ner, "TREE_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="does not match its pinned sha256"):
        ner.model_path()


def test_the_english_model_finds_a_person() -> None:
    persons = ner.EnglishPersons()
    text = "Hello, my name is John Smith and I am calling about my bill."
    assert [text[s:e] for s, e in persons.find(text)] == ["John Smith"]
    # What Whisper could not have written as a name is not taken for one.
    assert ner._name_like("Sarah Connor") and ner._name_like("de Souza")
    assert not ner._name_like("word0") and not ner._name_like("uh")


def test_tags_are_no_words_to_the_features() -> None:
    # A tenant's phrase "card" or "name" never matches a tag, and no key phrase is one.
    text = "my [CARD_NUMBER] and my [PERSON_NAME], please"
    assert words(text) == ["my", "and", "my", "please"]
    assert PhraseMatcher.build(["card", "name", "number"]).find(text) == []
    assert [p["phrase"] for p in key_phrases([text, text], "en")] == []


def test_a_domain_whisper_timed_as_several_words_is_one_address() -> None:
    # faster-whisper appends punctuation to the word before, so "mail.co.uk" comes as
    # " mail.", "co.", "uk": no space before "co." and "uk", which is what joins them.
    said = [(0.0, 0.4, " My"), (0.4, 0.8, " email"), (0.8, 1.0, " is"),
            (1.0, 1.5, " Thomas"), (1.5, 1.7, " at"), (1.7, 2.0, " mail."), (2.0, 2.2, "co."),
            (2.2, 2.5, "uk")]  # fmt: skip
    segment = timed("inbound", said)
    spans = Redactor().find(Transcript("en", "m", 3.0, (segment,)), frozenset({"email"}))
    assert [(s.entity, s.start, s.end) for s in spans] == [("email", 1.0, 2.5)]
    home = [(0.0, 0.3, " I"), (0.3, 0.6, " was"), (0.6, 0.8, " at"), (0.8, 1.2, " home."),
            (1.3, 1.5, " It"), (1.5, 1.8, " was")]  # fmt: skip
    transcript = Transcript("en", "m", 2.0, (timed("inbound", home),))
    assert Redactor().find(transcript, frozenset({"email"})) == []
