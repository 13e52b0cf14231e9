"""Tests of ai/summary.py: a hand-scored call, how many sentences are picked, chronological
order across tracks, the empty cases and the Protocol."""

from __future__ import annotations

import pytest

from ai.summary import ExtractiveSummarizer, Summarizer
from ai.transcript import Segment, Transcript


def call(*segments: Segment, language: str = "en") -> Transcript:
    duration = max((segment.end for segment in segments), default=0.0)
    return Transcript(language, "test", duration, tuple(segments), {})


SUPPORT_CALL = call(
    Segment("outbound", 0, 3, "Thank you for calling, how can I help?"),
    Segment("inbound", 3, 8, "Hi. My internet has been down all morning."),
    Segment("outbound", 8, 12, "Sorry about that. Let me check your line."),
    Segment("inbound", 12, 14, "Okay."),
    Segment("outbound", 14, 20, "I see a fault on the line. I reset the router remotely."),
    Segment("inbound", 20, 23, "Okay. The router light is green now and the internet works."),
    Segment("outbound", 23, 26, "Great, the problem is resolved."),
    Segment("inbound", 26, 28, "Thanks, bye."),
)


def test_hand_scored_support_call() -> None:
    # 11 distinct sentences (the second "Okay." is a repeat) -> 3 picked. Content-word
    # counts: internet 2, line 2, router 2, every other content word 1; top count 2.
    #   "My internet has been down all morning."  (2+1)/7/2 = 0.21 + 0.5 ("down")  = 0.71
    #   "I reset the router remotely."            (1+2+1)/5/2                      = 0.40
    #   "The router light is green now and ..."   (2+1+1+2+1)/10/2                 = 0.35
    #   "Great, the problem is resolved."         (1+1+1)/5/2 = 0.30 + 0.5 (cues)  = 0.80
    #   "Let me check your line."                 (1+2)/5/2                        = 0.30
    summary = ExtractiveSummarizer().summarize(SUPPORT_CALL)
    assert summary == (
        "Caller: My internet has been down all morning. "
        "Agent: I reset the router remotely. "
        "Agent: Great, the problem is resolved."
    )


def test_fewer_sentences_than_the_minimum_are_all_kept_in_order() -> None:
    transcript = call(
        Segment("inbound", 0, 2, "my bill is wrong"),
        Segment("outbound", 2, 4, "Let me fix the bill!"),
    )
    assert ExtractiveSummarizer().summarize(transcript) == (
        "Caller: my bill is wrong. Agent: Let me fix the bill!"
    )


def test_sentences_of_both_tracks_interleave_by_estimated_start() -> None:
    # The caller's second sentence starts halfway through a 0-10 s segment (about 5 s),
    # before the agent's line at 6 s.
    first = "Billing question about March."
    second = "Also the router blinks."
    transcript = call(
        Segment("inbound", 0, 10, f"{first} {second}"),
        Segment("outbound", 6, 7, "Router noted."),
    )
    assert ExtractiveSummarizer().summarize(transcript) == (
        f"Caller: {first} Caller: {second} Agent: Router noted."
    )


@pytest.mark.parametrize(("count", "picked"), [(2, 2), (3, 3), (24, 3), (25, 4), (32, 4), (50, 5)])
def test_how_many_sentences_are_picked(count: int, picked: int) -> None:
    segments = [
        Segment("inbound", float(i), i + 0.5, f"Distinct topic number{i} about item{i}.")
        for i in range(count)
    ]
    summary = ExtractiveSummarizer().summarize(call(*segments))
    assert summary.count("Caller: ") == picked


def test_limits_are_configurable_and_checked() -> None:
    segments = [Segment("inbound", float(i), i + 0.5, f"Sentence word{i}.") for i in range(50)]
    assert (
        ExtractiveSummarizer(max_sentences=2, min_sentences=1)
        .summarize(call(*segments))
        .count("Caller: ")
        == 2
    )
    with pytest.raises(ValueError, match="min_sentences"):
        ExtractiveSummarizer(max_sentences=2, min_sentences=3)
    with pytest.raises(ValueError, match="min_sentences"):
        ExtractiveSummarizer(min_sentences=0)


def test_no_speech_gives_an_empty_summary() -> None:
    assert ExtractiveSummarizer().summarize(call()) == ""
    assert ExtractiveSummarizer().summarize(call(Segment("inbound", 0, 1, " ... "))) == ""


def test_romanian_call_uses_romanian_stopwords() -> None:
    transcript = call(
        Segment("inbound", 0, 4, "Bună ziua. Factura mea este greșită."),
        Segment("outbound", 4, 8, "Verific factura acum. Am corectat factura."),
        Segment("inbound", 8, 10, "Mulțumesc."),
        language="ro",
    )
    summary = ExtractiveSummarizer().summarize(transcript)
    assert summary == (
        "Caller: Factura mea este greșită. Agent: Verific factura acum. Agent: Am corectat factura."
    )


def test_extractive_summarizer_is_a_summarizer() -> None:
    summarizer: Summarizer = ExtractiveSummarizer()
    assert summarizer.summarize(SUPPORT_CALL).startswith("Caller: ")


def test_an_hour_long_call_is_fast() -> None:
    texts = [
        "My internet connection has been down all morning and the router light is red.",
        "I was charged twice on my last invoice number {i}, I want a refund.",
        "Let me check account {i} and reset the router for you.",
    ]
    segments = [
        Segment("inbound" if i % 2 else "outbound", i * 3.0, i * 3.0 + 3, texts[i % 3].format(i=i))
        for i in range(1200)
    ]
    summary = ExtractiveSummarizer().summarize(call(*segments))
    assert summary.count(": ") == 5
