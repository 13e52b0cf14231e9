"""Tests of ai/sentiment.py: the lexicon rules on hand-computed sums (negation, intensifiers,
clause windows, but-clauses), the intent-cue override, negated cues and the agent's cues,
diacritics, the document's shape and timeline, and the measured accuracy with cues off and on
on tests/data/sentiment_labelled.json and tests/data/sentiment_cues_labelled.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ai.sentiment import (
    AGENT_TRACK,
    CUE_SCORE,
    CUES,
    EN_LEXICON,
    RO_LEXICON,
    find_cues,
    label,
    lexicon_sum,
    normalise,
    score_text,
    sentiment,
)
from ai.text import PhraseMatcher
from ai.transcript import Segment

LABELLED = Path(__file__).parent.parent / "data" / "sentiment_labelled.json"
CUES_LABELLED = Path(__file__).parent.parent / "data" / "sentiment_cues_labelled.json"
"""Negated cues and the agent's own words, labelled by someone other than the cues' author."""
POLITE_CANCELLATION = (
    "Thank you so much, you have been very helpful, but I would like to cancel my "
    "subscription please"
)


def test_lexicon_sizes() -> None:
    assert len(EN_LEXICON) >= 250
    assert len(RO_LEXICON) >= 100


def test_plain_words_sum_their_valences() -> None:
    assert lexicon_sum("The agent was good", EN_LEXICON) == pytest.approx(1.9)
    assert lexicon_sum("good and helpful", EN_LEXICON) == pytest.approx(1.9 + 1.8)
    assert lexicon_sum("my account number", EN_LEXICON) == 0.0


def test_normalisation_is_vaders() -> None:
    assert normalise(2.0) == pytest.approx(2 / math.sqrt(19))
    assert normalise(0.0) == 0.0
    assert -1 < normalise(-1000.0) < -0.99


def test_negation_flips_and_dampens_the_next_three_words() -> None:
    assert lexicon_sum("not good", EN_LEXICON) == pytest.approx(1.9 * -0.74)
    # "isn't" three words before "good": in reach; "really" two before: boosts.
    assert lexicon_sum("it isn't really that good", EN_LEXICON) == pytest.approx(1.9 * 1.3 * -0.74)
    # "don't" five words before "good": out of reach (a known limit of the window).
    assert lexicon_sum("I don't think the plan is good", EN_LEXICON) == pytest.approx(1.9)
    assert lexicon_sum("never helpful", EN_LEXICON) == pytest.approx(1.8 * -0.74)
    assert lexicon_sum("no problem", EN_LEXICON) == pytest.approx(-1.7 * -0.74)
    assert label(score_text("No problem at all", "en")[0]) == "positive"
    assert label(score_text("The app is not working", "en")[0]) == "negative"


def test_negation_stops_at_clause_punctuation() -> None:
    assert score_text("No, that's great", "en") == score_text("that's great", "en")
    assert score_text("No, that's great", "en")[0] > 0.5


def test_intensifiers_scale() -> None:
    assert lexicon_sum("very good", EN_LEXICON) == pytest.approx(1.9 * 1.3)
    assert lexicon_sum("extremely bad", EN_LEXICON) == pytest.approx(-2.5 * 1.5)
    assert lexicon_sum("slightly slow", EN_LEXICON) == pytest.approx(-1.2 * 0.7)
    assert lexicon_sum("really very good", EN_LEXICON) == pytest.approx(1.9 * 1.3 * 1.3)
    assert lexicon_sum("foarte bine", RO_LEXICON) == pytest.approx(1.5 * 1.3)
    assert score_text("very good", "en")[0] > score_text("good", "en")[0]


def test_but_clause_weighs_more() -> None:
    # 3.1 * 0.5 + -2.1 * 1.5 = -1.6: the clause after "but" decides.
    assert lexicon_sum("The agent was great but the wait was terrible", EN_LEXICON) == (
        pytest.approx(3.1 * 0.5 - 2.1 * 1.5)
    )
    assert label(score_text("The agent was great but the wait was terrible", "en")[0]) == (
        "negative"
    )
    # Without the contrast the same words come out positive.
    assert label(score_text("The agent was great and the wait was terrible", "en")[0]) == (
        "positive"
    )
    assert lexicon_sum("bine, dar lent", RO_LEXICON) == pytest.approx(1.5 * 0.5 - 1.2 * 1.5)


def test_english_endings_fall_back_to_the_stem() -> None:
    assert lexicon_sum("crashing", EN_LEXICON) == pytest.approx(EN_LEXICON["crash"])
    assert lexicon_sum("thanks", EN_LEXICON) == pytest.approx(EN_LEXICON["thanks"])
    assert lexicon_sum("sings", EN_LEXICON) == 0.0


def test_romanian_diacritics_are_optional() -> None:
    forms = ["Mulțumesc, sunt mulțumit", "Multumesc, sunt multumit", "Mulţumesc, sunt mulţumit"]
    scores = {score_text(form, "ro")[0] for form in forms}
    assert len(scores) == 1
    assert scores.pop() > 0.5
    assert score_text("Nu sunt mulțumit", "ro")[0] < 0


def test_language_picks_the_lexicon() -> None:
    # "care" is Romanian for "which"; English "care" must not leak into Romanian text.
    assert lexicon_sum("care", RO_LEXICON) == 0.0
    assert score_text("Care este adresa?", "ro")[0] == 0.0
    # An unknown language uses both.
    assert score_text("excelent and great", "de")[0] > score_text("great", "en")[0]


def test_polite_cancellation_is_positive_without_cues_and_negative_with() -> None:
    plain, no_cues = score_text(POLITE_CANCELLATION, "en", cues=False)
    assert no_cues == []
    assert label(plain) == "positive"  # the known weakness of a plain lexicon
    score, fired = score_text(POLITE_CANCELLATION, "en")
    assert fired == ["cancel"]
    assert score == pytest.approx(-CUE_SCORE)
    assert label(score) == "negative"


def test_cue_keeps_a_more_negative_lexicon_score() -> None:
    text = "This is terrible and I am furious, I want to cancel"
    plain, _ = score_text(text, "en", cues=False)
    assert plain < -CUE_SCORE
    assert score_text(text, "en") == (plain, ["cancel"])


def test_cues_match_inflections_diacritics_and_phrases() -> None:
    assert score_text("I'm cancelling today", "en")[1] == ["cancel"]
    assert score_text("We want a cancellation", "en")[1] == ["cancel"]
    assert score_text("Please close my account", "en")[1] == ["close my account"]
    assert score_text("Vreau sa anulez abonamentul", "ro")[1] == ["vreau să anulez"]
    assert score_text("Am făcut o reclamație", "ro")[1] == ["reclamați"]
    assert score_text("am facut doua reclamatii", "ro")[1] == ["reclamați"]
    # Word boundaries: "cancel" inside another word's middle does not fire.
    assert score_text("the concancel thing", "en")[1] == []
    # Each cue once per segment, in order of appearance.
    assert score_text("refund, cancel, cancel", "en")[1] == ["refund", "cancel"]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("I don't want to cancel", "en"),
        ("I'm not going to close my account", "en"),
        ("I never asked for a refund", "en"),  # "a", "for" do not use up the window
        ("I won't be cancelling, it works now", "en"),
        ("I have no intention of terminating the contract", "en"),
        ("Don't cancel anything please", "en"),
        ("It isn't a complaint", "en"),
        ("nu vreau să anulez abonamentul", "ro"),
        ("Nu doresc să reziliez", "ro"),
        ("N-am de gând să reziliez contractul", "ro"),  # elided "n-", clitic-free
        ("n-o să reziliez", "ro"),
        ("Nu-mi trebuie rambursare", "ro"),
        ("nu e o reclamatie", "ro"),
    ],
)
def test_a_cue_the_speaker_negates_does_not_fire(text: str, language: str) -> None:
    assert find_cues(text) == []
    score, fired = score_text(text, language)
    assert fired == []
    assert score > -CUE_SCORE


def test_a_negated_cue_leaves_the_lexicon_score() -> None:
    score, fired = score_text("Oh no, I don't want a refund, I'm very happy with it", "en")
    assert fired == []
    assert label(score) == "positive"
    # The clause after "but" is another clause: the negation does not reach its cue.
    assert find_cues("I don't want to, but I will cancel") == ["cancel"]
    assert find_cues("No, I want to cancel") == ["cancel"]
    # Negated in one place, asked for in another: the cue fires.
    assert find_cues("I don't want a refund, I want to cancel") == ["cancel"]


@pytest.mark.parametrize(
    ("text", "language", "cue"),
    [
        # Negated ability or permission: a complaint.
        ("Why can't I cancel this?", "en", "cancel"),
        ("I can't cancel it online", "en", "cancel"),
        ("I cannot close my account", "en", "close my account"),
        ("I can not close my account", "en", "close my account"),
        ("They won't let me cancel", "en", "cancel"),
        ("I'm not able to cancel", "en", "cancel"),
        ("De ce nu pot să anulez comanda?", "ro", "anulez"),
        ("n-am putut să anulez", "ro", "anulez"),
        ("Nu mă lasă să reziliez", "ro", "reziliez"),
        # A negated outcome, or someone else's failure: a complaint.
        ("I still haven't received my refund", "en", "refund"),
        ("You never refunded me", "en", "refund"),
        ("They did not cancel it", "en", "cancel"),
        ("Nu mi-a răspuns nimeni la reclamație", "ro", "reclamați"),
        # A "why" question.
        ("Why didn't I cancel this months ago?", "en", "cancel"),
        ("De ce nu anulați comanda?", "ro", "anulați"),
    ],
)
def test_a_negation_that_is_a_complaint_still_fires(text: str, language: str, cue: str) -> None:
    assert find_cues(text) == [cue]
    assert score_text(text, language)[0] <= -CUE_SCORE


def test_the_agents_cues_do_not_fire() -> None:
    text = "I can help you cancel that, no problem"
    score, fired = score_text(text, "en", track=AGENT_TRACK)
    assert fired == []
    assert label(score) == "positive"  # "no problem", as the lexicon reads it
    # The caller's words, or a speaker not known (the default), fire as before.
    assert score_text(text, "en", track="inbound") == (-CUE_SCORE, ["cancel"])
    assert score_text(text, "en") == (-CUE_SCORE, ["cancel"])
    assert score_text("Am anulat comanda, cum ați cerut", "ro", track=AGENT_TRACK) == (0.0, [])


def test_a_cue_word_carries_no_lexicon_valence_with_cues_on() -> None:
    text = "Your complaint reference number is C-4417."
    assert label(score_text(text, "en", cues=False)[0]) == "negative"  # "complaint": -1.7
    assert score_text(text, "en", track=AGENT_TRACK) == (0.0, [])
    assert score_text(text, "en") == (-CUE_SCORE, ["complaint"])  # the caller's: the cue
    assert score_text("Numărul reclamație este R-2093", "ro", track=AGENT_TRACK)[0] == 0.0


def test_romanian_elided_negation() -> None:
    # "n-a fost bine": hyphens split words, and "n" is "nu".
    assert lexicon_sum("n-a fost bine", RO_LEXICON) == pytest.approx(1.5 * -0.74)


def segment(track: str, start: float, text: str, end: float | None = None) -> Segment:
    return Segment(track, start, start + 2 if end is None else end, text)


def test_document_shape_and_aggregates() -> None:
    segments = [
        segment("inbound", 0, "My internet is down again, this is terrible."),
        segment("outbound", 3, "Let me check that for you."),
        segment("outbound", 8, "It's fixed now, sorry for the trouble."),
        segment("inbound", 12, "Great, thank you, but I want to cancel anyway."),
    ]
    doc = sentiment(segments, "en")
    assert doc["method"] == "lexicon+cues"
    assert [s["start"] for s in doc["segments"]] == [0, 3, 8, 12]
    assert [s["label"] for s in doc["segments"]] == ["negative", "neutral", "negative", "negative"]
    scores = [s["score"] for s in doc["segments"]]
    assert scores[1] == 0.0
    assert scores[3] == -CUE_SCORE
    assert doc["cues"] == [{"track": "inbound", "start": 12, "cue": "cancel"}]
    assert set(doc["tracks"]) == {"inbound", "outbound"}
    # Aggregates average the segments that carry sentiment: the agent's neutral line is out.
    assert doc["tracks"]["outbound"]["score"] == pytest.approx(scores[2], abs=1e-3)
    assert doc["tracks"]["inbound"]["score"] == pytest.approx((scores[0] + scores[3]) / 2, abs=2e-3)
    assert doc["overall"]["score"] == pytest.approx(
        (scores[0] + scores[2] + scores[3]) / 3, abs=2e-3
    )
    assert doc["overall"]["label"] == "negative"
    # One 30 s window holds the whole 14 s call.
    assert doc["timeline"] == [{"start": 0, "end": 14, **doc["overall"]}]


def test_the_agents_words_score_their_track_without_cues() -> None:
    segments = [
        segment("inbound", 0, "Thanks, but I want to cancel my contract."),
        segment("outbound", 3, "Of course, I can help you cancel that."),
        segment("outbound", 6, "Good news, your refund has been approved."),
    ]
    doc = sentiment(segments, "en")
    caller, offer, refund = (s["score"] for s in doc["segments"])
    assert doc["cues"] == [{"track": "inbound", "start": 0, "cue": "cancel"}]
    assert caller == -CUE_SCORE
    assert offer == 0.0  # no lexicon word, and the agent's "cancel" is no cue
    assert refund == pytest.approx(normalise(1.9), abs=1e-3)  # "good": no churn floor of -0.4
    assert doc["tracks"]["outbound"] == {"score": refund, "label": "positive"}
    assert doc["tracks"]["inbound"] == {"score": caller, "label": "negative"}
    assert doc["overall"]["score"] == pytest.approx((caller + refund) / 2, abs=1e-3)


def test_cues_off_reports_the_plain_lexicon() -> None:
    doc = sentiment([segment("inbound", 0, POLITE_CANCELLATION)], "en", cues=False)
    assert doc["method"] == "lexicon"
    assert doc["cues"] == []
    assert doc["overall"]["label"] == "positive"


def test_only_tracks_with_segments_are_listed() -> None:
    doc = sentiment([segment("outbound", 0, "Hello")], "en")
    assert list(doc["tracks"]) == ["outbound"]
    assert doc["tracks"]["outbound"] == {"score": 0.0, "label": "neutral"}


def test_no_segments() -> None:
    doc = sentiment([], "en")
    assert doc["overall"] == {"score": 0.0, "label": "neutral"}
    assert doc["tracks"] == {}
    assert doc["segments"] == []
    assert doc["timeline"] == []
    assert doc["cues"] == []


def test_timeline_windows_omit_silence() -> None:
    segments = [
        segment("inbound", 0, "great"),
        segment("outbound", 10, "terrible"),
        segment("inbound", 65, "thanks", end=70),
    ]
    doc = sentiment(segments, "en")
    # 70 s call: windows are max(30, 7) = 30 s; 30-60 has no speech and is left out.
    great, terrible, thanks = (s["score"] for s in doc["segments"])
    assert [(w["start"], w["end"]) for w in doc["timeline"]] == [(0, 30), (60, 70)]
    assert doc["timeline"][0]["score"] == pytest.approx((great + terrible) / 2, abs=1e-3)
    assert doc["timeline"][1]["score"] == thanks
    # A long call has tenth-of-the-call windows.
    long_call = [segment("inbound", 0, "great"), segment("inbound", 990, "bad", end=1000)]
    windows = sentiment(long_call, "en")["timeline"]
    assert [(w["start"], w["end"]) for w in windows] == [(0, 100), (900, 1000)]


def test_an_hour_of_segments() -> None:
    texts = [POLITE_CANCELLATION, "My internet is down again.", "Let me check that for you."]
    segments = [
        segment("inbound" if i % 2 else "outbound", i * 3.0, texts[i % 3]) for i in range(1200)
    ]
    doc = sentiment(segments, "en")
    assert len(doc["segments"]) == 1200
    # The polite cancellation is every third segment; half of those are the agent's
    # (even i), whose words fire no cues (rule 8): 200, not the 400 of every track.
    assert len(doc["cues"]) == 200
    assert {cue["track"] for cue in doc["cues"]} == {"inbound"}


def _accuracy(items: list[dict[str, str]], *, cues: bool, tracks: bool = True) -> float:
    """The share of ``items`` labelled as a human did; ``tracks=False`` scores every item as
    a speaker not known (rules 1-7 without rule 8)."""
    hits = 0
    for item in items:
        track = item.get("track") if tracks else None
        score, _ = score_text(item["text"], item["language"], cues=cues, track=track)
        hits += label(score) == item["label"]
    return hits / len(items)


_PREVIOUS_CUES = PhraseMatcher.build(CUES)


def _previous_accuracy(items: list[dict[str, str]]) -> float:
    """The share labelled right by the rule before negated cues and tracks: any cue phrase,
    negated or not, on either track, floored the plain lexicon's score at -CUE_SCORE."""
    hits = 0
    for item in items:
        score = score_text(item["text"], item["language"], cues=False)[0]
        if _PREVIOUS_CUES.find(item["text"]):
            score = min(score, -CUE_SCORE)
        hits += label(score) == item["label"]
    return hits / len(items)


def test_accuracy_on_the_labelled_set() -> None:
    items = json.loads(LABELLED.read_text(encoding="utf-8"))["items"]
    english = [item for item in items if item["language"] == "en"]
    romanian = [item for item in items if item["language"] == "ro"]
    polite = [item for item in items if item["polite_churn"]]
    assert len(english) >= 40
    assert len(romanian) >= 10
    assert len(polite) >= 8
    assert all(item["label"] == "negative" for item in polite)

    lexicon_all, cues_all = _accuracy(items, cues=False), _accuracy(items, cues=True)
    lexicon_polite, cues_polite = _accuracy(polite, cues=False), _accuracy(polite, cues=True)
    print(
        f"\nsentiment accuracy on {len(items)} labelled sentences "
        f"({len(english)} en, {len(romanian)} ro): lexicon {lexicon_all:.3f}, "
        f"lexicon+cues {cues_all:.3f}; polite cancellations/complaints ({len(polite)}): "
        f"lexicon {lexicon_polite:.3f}, lexicon+cues {cues_polite:.3f}"
    )
    assert cues_all >= 0.8
    assert cues_polite > lexicon_polite


def test_accuracy_on_negated_cues_and_the_agents_words() -> None:
    items = json.loads(CUES_LABELLED.read_text(encoding="utf-8"))["items"]
    caller = [item for item in items if item["track"] == "inbound"]
    agent = [item for item in items if item["track"] == AGENT_TRACK]
    assert len(items) >= 70
    assert len(agent) >= 25
    assert {item["language"] for item in items} == {"en", "ro"}

    results = {
        "lexicon": (_accuracy(items, cues=False), _accuracy(caller, cues=False)),
        "previous cues": (_previous_accuracy(items), _previous_accuracy(caller)),
        "negation only": (
            _accuracy(items, cues=True, tracks=False),
            _accuracy(caller, cues=True, tracks=False),
        ),
        "negation+tracks": (_accuracy(items, cues=True), _accuracy(caller, cues=True)),
    }
    agent_cues = _accuracy(agent, cues=True)
    print(
        f"\nsentiment accuracy on {len(items)} negated-cue and agent sentences (all; "
        f"{len(caller)} caller's): "
        + "; ".join(
            f"{name} {every:.3f} ({callers:.3f})" for name, (every, callers) in results.items()
        )
        + f"; the agent's {len(agent)}: negation+tracks {agent_cues:.3f}"
    )
    # Measured when rules 7 and 8 were written (all; the caller's): lexicon 0.690 (0.622),
    # previous cues 0.380 (0.533), negation only 0.592 (0.867), negation+tracks 0.873, 62
    # of 71 (0.867; the agent's 0.885). Of the nine still wrong, seven are the lexicon's
    # (VADER's flip of "not complaining", "not unhappy"; "working days", "fee"; words it
    # lacks: "moaning", "mă bucur", "de nota zece"), one a cue phrase split by a clitic
    # ("închideți-mi contul") and one a disclaimer ("nu vreau să reziliez, dar ... o fac")
    # that rule 7 retracts as a plain refusal. One item more wrong fails here.
    new, _ = results["negation+tracks"]
    assert new >= 0.87
    assert new > results["previous cues"][0]
    assert new > results["lexicon"][0]
    assert all(
        score_text(item["text"], item["language"], track=AGENT_TRACK)[1] == [] for item in agent
    )

    # The first labelled set loses nothing to the new rules.
    old_items = json.loads(LABELLED.read_text(encoding="utf-8"))["items"]
    assert _accuracy(old_items, cues=True) >= _previous_accuracy(old_items)
