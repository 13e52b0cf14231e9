"""Tests of storage/categoryrules.py and ai/categories.py: what a category may be (each limit
refused with its field named, the old list of phrases kept as written), each rule type
matching and not matching on hand-made timelines, the evidence of a match, the old form
giving the keyword matcher's answer, and agreement with the 50 calls labelled by hand
(``tests/data/categories/calls.json``)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ai.categories import match_categories
from ai.sentiment import sentiment
from ai.talk import talk_listen
from ai.topics import match_categories as keyword_categories
from ai.transcript import Interval, Segment, Transcript
from bench.categories import load_calls
from storage.categoryrules import (
    MAX_CATEGORY_PHRASES,
    MAX_COUNT,
    MAX_RULES,
    MAX_WINDOW_S,
    CategoryRules,
    PhraseRule,
    category_rules,
)
from storage.errors import InvalidInstructions
from storage.instructions import parse_instructions

CATEGORIES, CALLS = load_calls()


def seg(track: str, start: float, end: float, text: str) -> Segment:
    return Segment(track, start, end, text)


def call(
    segments: list[Segment],
    duration: float,
    speech: dict[str, list[tuple[float, float]]] | None = None,
    language: str = "en",
) -> Transcript:
    """A transcript whose speech is its segments' spans unless ``speech`` says otherwise."""
    if speech is None:
        tracks = ("inbound", "outbound")
        speech = {t: [(s.start, s.end) for s in segments if s.track == t] for t in tracks}
    return Transcript(
        language=language,
        model="test",
        duration_s=duration,
        segments=tuple(segments),
        speech={t: tuple(Interval(a, b) for a, b in spans) for t, spans in speech.items()},
    )


def rules(*items: dict[str, Any]) -> CategoryRules:
    return CategoryRules.model_validate({"rules": list(items)})


def found(transcript: Transcript, *items: dict[str, Any]) -> dict[str, Any] | None:
    """The match of a category made of ``items`` in ``transcript``, or None."""
    matches = match_categories(transcript, {"c": rules(*items)}, transcript.language)
    return matches[0] if matches else None


PHRASE: dict[str, Any] = {"type": "phrase", "phrases": ["cancel"]}


# --- what a category may be ---------------------------------------------------------------


def test_the_old_list_of_phrases_is_one_phrase_rule_and_is_shown_as_written() -> None:
    doc = parse_instructions({"ai": {"categories": {"churn": [" cancel ", "Terminate", "cancel"]}}})
    assert doc.ai.categories["churn"] == ("cancel", "Terminate")
    assert doc.document()["ai"]["categories"] == {"churn": ["cancel", "Terminate"]}
    assert parse_instructions(doc.document()) == doc
    assert category_rules(doc.ai.categories["churn"]) == (
        PhraseRule(type="phrase", phrases=("cancel", "Terminate"), present=True, track="either"),
    )


def test_rules_round_trip_through_the_stored_document() -> None:
    written = {
        "rules": [
            {"type": "phrase", "phrases": ["bună ziua", "bună ziua"], "present": False,
             "track": "outbound", "window": {"first_s": 15}},
            {"type": "non_talk", "min_s": 8, "window": {"last_s": 60.5}},
            {"type": "interruptions", "track": "either", "min_count": MAX_COUNT},
            {"type": "sentiment", "track": "inbound", "below": -1},
        ]
    }  # fmt: skip
    doc = parse_instructions({"ai": {"categories": {"c": written}}})
    stored = doc.document()["ai"]["categories"]["c"]
    assert stored["rules"][0]["phrases"] == ["bună ziua"]  # duplicates removed, as for lists
    assert [rule["type"] for rule in stored["rules"]] == [
        "phrase", "non_talk", "interruptions", "sentiment"
    ]  # fmt: skip
    assert stored["rules"][3] == {
        "type": "sentiment", "track": "inbound", "window": None, "below": -1.0, "above": None
    }  # fmt: skip
    assert parse_instructions(doc.document()) == doc
    definition = doc.ai.categories["c"]
    assert isinstance(definition, CategoryRules)
    assert category_rules(definition) == definition.rules


def test_the_limits_themselves_are_accepted() -> None:
    phrases = [f"p{i}" for i in range(MAX_CATEGORY_PHRASES)]
    limits = {
        "rules": [
            {"type": "phrase", "phrases": phrases, "window": {"last_s": MAX_WINDOW_S}},
            {"type": "non_talk", "min_s": 1},
            {"type": "non_talk", "min_s": MAX_WINDOW_S},
            {"type": "interruptions", "min_count": 1},
            {"type": "sentiment", "above": 1},
        ]
        + [PHRASE] * (MAX_RULES - 5)
    }
    definition = parse_instructions({"ai": {"categories": {"c": limits}}}).ai.categories["c"]
    assert isinstance(definition, CategoryRules)
    assert len(definition.rules) == MAX_RULES


RULE = "ai.categories.c.rules.0"


@pytest.mark.parametrize(
    ("category", "field", "words"),
    [
        ({"rules": [PHRASE] * (MAX_RULES + 1)}, "ai.categories.c.rules", "at most 20 entries"),
        ({"rules": []}, "ai.categories.c.rules", "at least 1 entry"),
        ({"rules": [{"type": "phrase", "phrases": ["x"] * 51}]}, f"{RULE}.phrases",
         "at most 50 entries"),
        ({"rules": [{"type": "phrase", "phrases": []}]}, f"{RULE}.phrases", "at least 1 entry"),
        ({"rules": [{"type": "phrase", "phrases": ["ok", " "]}]}, f"{RULE}.phrases.1",
         "1 to 100 characters"),
        ({"rules": [{"type": "phrase", "phrases": ["p" * 101]}]}, f"{RULE}.phrases.0",
         "1 to 100 characters"),
        ({"rules": [{"type": "phrase", "phrases": ["a\nb"]}]}, f"{RULE}.phrases.0",
         "control characters"),
        ({"rules": [{"type": "phrase", "phrases": [7]}]}, f"{RULE}.phrases.0", "must be a string"),
        ({"rules": [{**PHRASE, "window": {"first_s": 14400.5}}]}, f"{RULE}.window.first_s",
         "less than or equal to 14400"),
        ({"rules": [{**PHRASE, "window": {"last_s": 0}}]}, f"{RULE}.window.last_s",
         "greater than 0"),
        ({"rules": [{**PHRASE, "window": {}}]}, f"{RULE}.window",
         "exactly one of first_s and last_s"),
        ({"rules": [{**PHRASE, "window": {"first_s": 5, "last_s": 5}}]}, f"{RULE}.window",
         "exactly one of first_s and last_s"),
        ({"rules": [{**PHRASE, "window": {"first_s": "5"}}]}, f"{RULE}.window.first_s",
         "valid number"),
        ({"rules": [{**PHRASE, "present": "false"}]}, f"{RULE}.present", "true or false"),
        ({"rules": [{**PHRASE, "track": "agent"}]}, f"{RULE}.track",
         "'inbound', 'outbound' or 'either'"),
        ({"rules": [{**PHRASE, "when": "always"}]}, f"{RULE}.when", "unknown field"),
        ({"rules": [{"type": "non_talk", "min_s": 0.5}]}, f"{RULE}.min_s",
         "greater than or equal to 1"),
        ({"rules": [{"type": "non_talk", "min_s": 14401}]}, f"{RULE}.min_s",
         "less than or equal to 14400"),
        ({"rules": [{"type": "non_talk"}]}, f"{RULE}.min_s", "Field required"),
        ({"rules": [{"type": "non_talk", "min_s": 5, "track": "inbound"}]}, f"{RULE}.track",
         "unknown field"),
        ({"rules": [{"type": "interruptions", "min_count": 0}]}, f"{RULE}.min_count",
         "greater than or equal to 1"),
        ({"rules": [{"type": "interruptions", "min_count": MAX_COUNT + 1}]}, f"{RULE}.min_count",
         "less than or equal to 1000"),
        ({"rules": [{"type": "interruptions", "min_count": 2.5}]}, f"{RULE}.min_count",
         "valid integer"),
        ({"rules": [{"type": "interruptions", "min_count": True}]}, f"{RULE}.min_count",
         "valid integer"),
        ({"rules": [{"type": "sentiment", "below": -1.5}]}, f"{RULE}.below",
         "greater than or equal to -1"),
        ({"rules": [{"type": "sentiment", "above": 1.01}]}, f"{RULE}.above",
         "less than or equal to 1"),
        ({"rules": [{"type": "sentiment"}]}, RULE, "exactly one of below and above"),
        ({"rules": [{"type": "sentiment", "below": 0, "above": 0.5}]}, RULE,
         "exactly one of below and above"),
        ({"rules": [{"type": "keyword", "phrases": ["x"]}]}, f"{RULE}.type",
         "'phrase', 'non_talk', 'interruptions' or 'sentiment'"),
        ({"rules": [{"phrases": ["x"]}]}, f"{RULE}.type", "Field required"),
        ({"rules": ["cancel"]}, RULE, "JSON object"),
        ({"rules": "cancel"}, "ai.categories.c.rules", "JSON array"),
        ({"rules": [PHRASE], "name": "x"}, "ai.categories.c.name", "unknown field"),
        ({"rule": [PHRASE]}, "ai.categories.c", 'a JSON object with "rules"'),
        (7, "ai.categories.c", "JSON array of phrases"),
    ],
)  # fmt: skip
def test_an_invalid_category_is_refused_with_its_field_named(
    category: Any, field: str, words: str
) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"ai": {"categories": {"c": category}}})
    assert info.value.field == field
    assert words in info.value.message


# --- phrase rules -------------------------------------------------------------------------


def test_a_phrase_rule_hears_only_its_track() -> None:
    agent_says = call([seg("outbound", 1, 3, "Shall I cancel it?")], 10)
    caller_says = call([seg("inbound", 1, 3, "Please cancel it.")], 10)
    rule = {**PHRASE, "track": "inbound"}
    assert found(agent_says, rule) is None
    assert found(caller_says, rule) is not None
    assert found(agent_says, PHRASE) is not None  # either track


def test_a_segment_is_in_a_window_when_any_part_of_it_is() -> None:
    def said_at(start: float, end: float) -> Transcript:
        return call([seg("inbound", start, end, "I want to cancel.")], 60)

    first = {**PHRASE, "window": {"first_s": 10}}
    assert found(said_at(9.5, 12), first) is not None
    assert found(said_at(10, 12), first) is None  # starts where the window ends
    last = {**PHRASE, "window": {"last_s": 10}}  # 50-60 s
    assert found(said_at(45, 50.5), last) is not None
    assert found(said_at(45, 50), last) is None  # ends where the window starts
    # A window longer than the call is the whole call.
    assert found(said_at(45, 50), {**PHRASE, "window": {"first_s": 600}}) is not None


def test_the_call_ends_at_its_duration_or_its_last_segment() -> None:
    # duration_s short of the segments (a rounding upstream): "last 10 s" ends at 70, not 30.
    transcript = call([seg("inbound", 62, 70, "cancel")], 30)
    assert found(transcript, {**PHRASE, "window": {"last_s": 10}}) is not None


def test_an_absent_phrase_matches_when_no_segment_in_the_window_says_it() -> None:
    greeting = {"type": "phrase", "phrases": ["good morning"], "present": False,
                "track": "outbound", "window": {"first_s": 15}}  # fmt: skip
    late = call([seg("outbound", 16, 18, "Good morning!")], 30)
    on_time = call([seg("outbound", 1, 3, "Good morning!")], 30)
    by_caller = call([seg("inbound", 1, 3, "Good morning!")], 30)
    assert found(late, greeting) is not None
    assert found(on_time, greeting) is None
    assert found(by_caller, greeting) is not None


@pytest.mark.parametrize(
    ("phrase", "text", "matches"),
    [
        ("anulare", "ANULAREA contractului", True),  # case, and an inflection
        ("factura", "Am primit factură", True),  # diacritics in the text, not the phrase
        ("factură", "am primit factura", True),  # and the other way round
        ("factura", "valoarea facturii", False),  # "facturii" does not begin with "factura"
        ("șef", "vreau un şef", True),  # cedilla and comma below are one letter
        ("șef", "vreau un sef", True),
        ("șef", "vreau șeful", False),  # 3 letters: no inflections
        ("cancel", "I don't want to cancel", True),  # negation is not special
        ("terminate", "the termination fee", False),
        ("close my account", "close my accounts", True),
        ("recorded", "we are recording", False),
    ],
)
def test_phrases_match_as_the_keyword_categories_did(phrase: str, text: str, matches: bool) -> None:
    transcript = call([seg("inbound", 1, 3, text)], 10, language="ro")
    assert (found(transcript, {"type": "phrase", "phrases": [phrase]}) is not None) == matches


# --- non-talk rules -----------------------------------------------------------------------


def test_non_talk_needs_a_stretch_of_min_s_with_neither_track_talking() -> None:
    # Caller 0-5, agent 4-10 (overlap), caller 14-20: the only silences are 10-14 and 20-22.
    transcript = call([], 22, speech={"inbound": [(0, 5), (14, 20)], "outbound": [(4, 10)]})
    match = found(transcript, {"type": "non_talk", "min_s": 4})
    assert match is not None
    assert match["evidence"] == [
        {"rule": 0, "type": "non_talk", "track": None, "start": 10.0, "end": 14.0, "value": 4.0}
    ]
    assert found(transcript, {"type": "non_talk", "min_s": 4.5}) is None
    # The silence after the last speech runs to the end of the call.
    assert found(transcript, {"type": "non_talk", "min_s": 2, "window": {"last_s": 5}}) is not None


def test_non_talk_reads_the_speech_intervals_not_the_segments() -> None:
    # One segment spans a hold the VAD heard as 9 s without speech.
    segments = [seg("outbound", 0, 20, "Please hold. Okay, I am back.")]
    transcript = call(segments, 20, speech={"inbound": [], "outbound": [(0, 2), (11, 20)]})
    assert found(transcript, {"type": "non_talk", "min_s": 9}) is not None
    assert found(transcript, {"type": "non_talk", "min_s": 9.5}) is None


def test_non_talk_in_a_window_counts_the_part_of_a_stretch_inside_it() -> None:
    transcript = call([], 40, speech={"inbound": [(0, 14), (23, 40)], "outbound": []})
    first_20 = {"window": {"first_s": 20}, "type": "non_talk"}
    match = found(transcript, {**first_20, "min_s": 6})
    assert match is not None
    assert (match["evidence"][0]["start"], match["evidence"][0]["end"]) == (14.0, 20.0)
    assert found(transcript, {**first_20, "min_s": 6.5}) is None
    assert found(transcript, {"type": "non_talk", "min_s": 9}) is not None


# --- interruption rules -------------------------------------------------------------------


def test_interruptions_are_counted_per_track_or_together() -> None:
    # The agent cuts in at 4 and 12 (the caller goes on 1 s each time); the caller at 20.
    speech = {"inbound": [(0, 5), (8, 13), (20, 22)], "outbound": [(4, 7), (12, 14), (18, 21)]}
    transcript = call([], 25, speech=speech)
    agent_twice = {"type": "interruptions", "track": "outbound", "min_count": 2}
    match = found(transcript, agent_twice)
    assert match is not None
    assert match["evidence"] == [
        {"rule": 0, "type": "interruptions", "track": "outbound", "start": 0.0, "end": 25.0,
         "value": 2, "at": [4.0, 12.0]}
    ]  # fmt: skip
    assert found(transcript, {**agent_twice, "min_count": 3}) is None
    assert found(transcript, {**agent_twice, "track": "inbound"}) is None
    assert found(transcript, {**agent_twice, "track": "either", "min_count": 3}) is not None


def test_interruptions_are_the_ones_talk_listen_counts() -> None:
    for labelled in CALLS:
        by_track = talk_listen(labelled.transcript)["interruptions_by_track"]
        for track, count in by_track.items():
            rule = {"type": "interruptions", "track": track, "min_count": 1}
            match = found(labelled.transcript, rule)
            assert (match["evidence"][0]["value"] if match else 0) == count, labelled.id


# --- sentiment rules ----------------------------------------------------------------------


def test_sentiment_is_the_mean_of_the_segments_that_carry_any() -> None:
    # Scores by ai.sentiment's rules: x / sqrt(x^2 + 15) of the valence sum x.
    terrible = -2.1 / math.sqrt(2.1**2 + 15)  # -0.48
    great = 3.1 / math.sqrt(3.1**2 + 15)  # +0.62
    thanks_great = 4.6 / math.sqrt(4.6**2 + 15)  # thank 1.5 + great 3.1: +0.76
    transcript = call(
        [
            seg("inbound", 0, 4, "This is terrible."),
            seg("inbound", 5, 8, "My number is 0722."),  # 0: not counted
            seg("outbound", 9, 12, "That is great!"),  # the agent's
            seg("inbound", 50, 54, "Thank you so much, that is great."),
        ],
        55,
    )
    caller = {"type": "sentiment", "track": "inbound"}
    match = found(transcript, {**caller, "below": 0.2})
    assert match is not None
    assert match["evidence"] == [
        {"rule": 0, "type": "sentiment", "track": "inbound", "start": 0.0, "end": 55.0,
         "value": round((terrible + thanks_great) / 2, 3)}
    ]  # fmt: skip
    assert found(transcript, {**caller, "above": 0.2}) is None
    last_10 = {**caller, "window": {"last_s": 10}}
    assert found(transcript, {**last_10, "above": 0.7}) is not None
    assert found(transcript, {**last_10, "below": 0}) is None
    first_10 = {**caller, "window": {"first_s": 10}}
    assert found(transcript, {**first_10, "below": -0.4}) is not None
    # The agent's +0.62 joins in for either track.
    either = found(transcript, {"type": "sentiment", "below": 1})
    assert either is not None
    assert either["evidence"][0]["value"] == round((terrible + great + thanks_great) / 3, 3)


def test_a_window_without_sentiment_scores_zero() -> None:
    transcript = call([seg("inbound", 0, 4, "This is terrible.")], 60)
    late = {"type": "sentiment", "track": "inbound", "window": {"last_s": 30}}
    assert found(transcript, {**late, "below": 0}) is None
    assert found(transcript, {**late, "above": 0}) is None
    match = found(transcript, {**late, "below": 0.01})
    assert match is not None
    assert match["evidence"][0]["value"] == 0


def test_whole_call_sentiment_is_the_sentiment_documents_track_score() -> None:
    for labelled in CALLS:
        t = labelled.transcript
        tracks = sentiment(t.segments, t.language)["tracks"]
        for track in ("inbound", "outbound"):
            match = found(t, {"type": "sentiment", "track": track, "above": -1})
            assert match is not None
            assert match["evidence"][0]["value"] == tracks[track]["score"], labelled.id


# --- what a match says --------------------------------------------------------------------


def test_a_match_has_the_keyword_fields_and_one_piece_of_evidence_per_rule() -> None:
    transcript = call(
        [
            seg("outbound", 0.5, 4, "Nova Telecom, how can I help?"),
            seg("inbound", 4.5, 9, "I want to cancel, the app is useless."),
            seg("outbound", 20, 24, "Shall I cancel both lines?"),
            seg("inbound", 24.5, 26, "Yes, cancel them. Terminate everything."),
        ],
        27,
    )
    match = found(
        transcript,
        {"type": "phrase", "phrases": ["good morning"], "present": False,
         "track": "outbound", "window": {"first_s": 15}},
        {"type": "phrase", "phrases": ["terminate", "cancel"], "track": "inbound"},
        {"type": "non_talk", "min_s": 10},
        {"type": "sentiment", "track": "inbound", "below": -0.3},
    )  # fmt: skip
    assert match == {
        "name": "c",
        "count": 3,  # the caller's "cancel" twice and "Terminate": the agent's is not the rule's
        "phrases": ["cancel", "terminate"],
        "tracks": {"inbound": 3, "outbound": 0},
        "first_at": 4.5,
        "evidence": [
            {"rule": 0, "type": "phrase", "track": "outbound", "start": 0.0, "end": 15.0,
             "value": 0},
            {"rule": 1, "type": "phrase", "track": "inbound", "start": 4.5, "end": 9.0,
             "text": "I want to cancel, the app is useless.", "phrase": "cancel"},
            {"rule": 2, "type": "non_talk", "track": None, "start": 9.0, "end": 20.0,
             "value": 11.0},
            # useless, -1.8 / sqrt(1.8^2 + 15) = -0.42, and -0.4 for the second segment's cues
            {"rule": 3, "type": "sentiment", "track": "inbound", "start": 0.0, "end": 27.0,
             "value": -0.411},
        ],
    }  # fmt: skip


def test_without_phrase_matches_first_at_is_the_earliest_evidence() -> None:
    transcript = call([seg("inbound", 12, 14, "Hello?")], 14)
    match = found(transcript, {"type": "non_talk", "min_s": 10})
    assert match is not None
    assert (match["count"], match["phrases"], match["first_at"]) == (0, [], 0.0)


def test_a_category_matches_only_when_all_its_rules_do() -> None:
    transcript = call([seg("inbound", 1, 3, "cancel it")], 4)
    assert found(transcript, PHRASE, {"type": "non_talk", "min_s": 1}) is not None  # 3-4 s
    assert found(transcript, PHRASE, {"type": "non_talk", "min_s": 2}) is None


def test_matches_are_listed_by_count_then_name() -> None:
    transcript = call([seg("inbound", 1, 3, "cancel, cancel, refund")], 4)
    categories: dict[str, Any] = {
        "b_refund": ["refund"], "a_refund": ["refund"], "churn": ["cancel"], "none": ["nothing"]
    }  # fmt: skip
    names = [m["name"] for m in match_categories(transcript, categories, "en")]
    assert names == ["churn", "a_refund", "b_refund"]


def test_the_old_form_gives_the_keyword_matchers_answer() -> None:
    lists: dict[str, Any] = {
        "cancellation": CATEGORIES["cancellation"],
        "billing": ["factura", "invoice", "plată", "charged twice"],
        "greeting": ["good morning", "bună ziua"],
        "short": ["da", "no"],
    }
    for labelled in CALLS:
        t = labelled.transcript
        rules_answer = match_categories(t, lists, t.language)
        without_evidence = [{k: v for k, v in m.items() if k != "evidence"} for m in rules_answer]
        assert without_evidence == keyword_categories(t.segments, lists), labelled.id


# --- the labelled calls -------------------------------------------------------------------


@pytest.mark.parametrize("labelled", CALLS, ids=[c.id for c in CALLS])
def test_the_engine_agrees_with_the_label_of_every_call(labelled: Any) -> None:
    t = labelled.transcript
    names = {m["name"] for m in match_categories(t, CATEGORIES, t.language)}
    assert names == labelled.expected, labelled.note


def test_the_labelled_calls_cover_every_category_both_ways() -> None:
    assert len(CALLS) == 50
    assert len({c.id for c in CALLS}) == 50
    assert {sum(c.transcript.language == lang for c in CALLS) for lang in ("en", "ro")} == {25}
    for name in CATEGORIES:
        labelled_in = sum(name in c.expected for c in CALLS)
        assert 0 < labelled_in < len(CALLS), name
    assert {c.expected <= set(CATEGORIES) for c in CALLS} == {True}


def test_the_labelled_speech_lies_within_the_segments() -> None:
    for labelled in CALLS:
        t = labelled.transcript
        assert max(s.end for s in t.segments) <= t.duration_s, labelled.id
        for track, intervals in t.speech.items():
            spans = [(s.start, s.end) for s in t.segments if s.track == track]
            for interval in intervals:
                assert any(a <= interval.start < interval.end <= b for a, b in spans), (
                    labelled.id, track, interval,
                )  # fmt: skip
