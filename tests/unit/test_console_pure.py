"""The console's pure parts: the instructions form <-> document, the version diff, the
charts' geometry, and the byte ranges of the WAV export."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.api.recordings import byte_range
from gateway.console.charts import clock, sentiment_timeline, talk_bars
from gateway.console.forms import diff, document_of, field_of, form_values
from gateway.console.pages import AUDIT_ACTIONS, audio_kept
from gateway.console.site import SEGMENT
from gateway.errors import RangeNotSatisfiable
from storage.instructions import parse_instructions

ACTION = re.compile(r'action="([a-z_]+\.[a-z_]+)"|AuditEntry\([^,]+, "([a-z_]+\.[a-z_]+)"')

DOCUMENT = {
    "version": 3,
    "recording": {"enabled": True},
    "consent": {"required": False},
    "ai": {"transcript": True, "summary": False, "sentiment": True, "talk_listen": False,
           "topics": True, "language": "ro",
           "redaction": {"transcript": True, "audio": True, "entities": ["card_number", "email"],
                         "fill": "tone", "padding_ms": 300, "keep_original": False},
           "categories": {"billing": ["refund", "invoice"],
                          "early_anger": {"rules": [{"type": "sentiment", "track": "inbound",
                                                     "window": {"first_s": 60}, "below": -0.3}]}}},
    "retention": {"recordings": "P30D", "transcripts": "P1Y", "call_records": "P3Y"},
    "transport": {"allow_unencrypted_rtp": False},
    "webhook": {"url": "https://hooks.example.com/cv", "secret": "<redacted>"},
    "exclude_numbers": ["+40712345678", "+40722222222"],
}  # fmt: skip


def posted(values: dict[str, object]) -> dict[str, str]:
    """What a browser posts for the form's values: ticked boxes only, as ``on``."""
    form = {}
    for name, value in values.items():
        if value is True:
            form[name] = "on"
        elif value is not False:
            form[name] = str(value)
    return form


def test_phrases_with_commas_and_colons_survive_the_form() -> None:
    categories = {"sales": ["yes, please", "price: low"], "churn": ["cancel"]}
    document = {**DOCUMENT, "ai": {**DOCUMENT["ai"], "categories": categories}}  # type: ignore[dict-item]
    back = document_of(posted(form_values(document)))
    assert back["ai"]["categories"] == categories


def test_a_document_survives_the_form_round_trip() -> None:
    back = document_of(posted(form_values(DOCUMENT)))
    expected = {k: v for k, v in DOCUMENT.items() if k != "version"}
    assert back == expected
    assert parse_instructions(back).ai_features() == ("transcript", "sentiment", "topics")


def test_the_form_leaves_what_it_cannot_read_to_the_apis_validation() -> None:
    document = document_of({"ai.categories": "no colon here", "retention.recordings": " x "})
    assert document["ai"]["categories"] == "no colon here"  # the API names ai.categories
    rules = document_of({"ai.categories": "a: b", "ai.category_rules": "{not json"})
    assert rules["ai"]["categories"] == "{not json"
    twice = document_of({"ai.categories": "a: b", "ai.category_rules": '{"a": {"rules": []}}'})
    assert twice["ai"]["categories"] == '{"a": {"rules": []}}'  # neither silently dropped
    padding = document_of({"ai.redaction.padding_ms": "12 ms"})
    assert padding["ai"]["redaction"]["padding_ms"] == "12 ms"  # named by the API's 422
    assert document["retention"]["recordings"] == "x"
    assert document["recording"]["enabled"] is False  # an unticked box is not posted
    assert document["webhook"] == {"url": None, "secret": None}


@pytest.mark.parametrize(
    ("error", "field"),
    [("exclude_numbers.2", "exclude_numbers"), ("ai.categories.sales", "ai.categories"),
     ("ai.categories.sales.1", "ai.categories"),
     ("ai.categories.angry.rules.0.below", "ai.category_rules"),
     ("ai.redaction.entities.1", "ai.redaction.entities"),
     ("retention.recordings", "retention.recordings"), ("ai.language", "ai.language")],
)  # fmt: skip
def test_errors_in_a_list_are_shown_at_the_lists_field(error: str, field: str) -> None:
    assert field_of(error) == field


def test_the_diff_names_each_changed_field_and_nothing_else() -> None:
    newer = {**DOCUMENT, "version": 4, "created_at": "later",
             "retention": {**DOCUMENT["retention"], "recordings": "P7D"},  # type: ignore[dict-item]
             "exclude_numbers": ["+40712345678"]}  # fmt: skip
    assert diff(DOCUMENT, newer) == [
        ("exclude_numbers", "+40712345678, +40722222222", "+40712345678"),
        ("retention.recordings", "P30D", "P7D"),
    ]
    assert diff({}, {"recording": {"enabled": True}}) == [("recording.enabled", "(absent)", "on")]


def test_the_sentiment_timeline_has_a_line_per_speaker_in_the_chart() -> None:
    sentiment = {"segments": [
        {"track": "inbound", "start": 0.0, "end": 2.0, "score": -1.0, "label": "negative"},
        {"track": "outbound", "start": 2.0, "end": 4.0, "score": 1.0, "label": "positive"},
        {"track": "inbound", "start": 6.0, "end": 10.0, "score": 0.0, "label": "neutral"},
    ]}  # fmt: skip
    timeline = sentiment_timeline(sentiment)
    assert timeline is not None and timeline.duration_s == 10.0
    caller, agent = timeline.lines
    assert (caller.speaker, agent.speaker) == ("Caller", "Agent")
    bottom, top = timeline.height - timeline.pad, timeline.pad
    assert [dot[1] for dot in caller.dots] == [bottom, timeline.zero_y]
    assert [dot[1] for dot in agent.dots] == [top]
    xs = [dot[0] for dot in caller.dots]
    assert timeline.pad <= xs[0] < xs[1] <= timeline.width - timeline.pad
    assert sentiment_timeline({"segments": []}) is None and sentiment_timeline(None) is None


def test_talk_bars_are_as_long_as_each_speakers_share() -> None:
    tracks = {"inbound": {"talk_s": 9.1, "talk_share": 0.41},
              "outbound": {"talk_s": 13.0, "talk_share": 0.59}}  # fmt: skip
    bars = talk_bars({"tracks": tracks}, width=100)
    assert [(b.speaker, b.width) for b in bars] == [("Caller", 41.0), ("Agent", 59.0)]
    assert clock(75.9) == "1:15" and clock(-1) == "0:00"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("bytes=0-99", (0, 99)), ("bytes=900-", (900, 999)), ("bytes=-100", (900, 999)),
     ("bytes=-5000", (0, 999)), ("bytes=10-5000", (10, 999)), ("bytes=0-1,4-5", None),
     ("items=0-5", None), ("bytes=5-1", None), ("bytes=a-b", None), ("bytes=", None),
     ("bytes=1" + "0" * 30 + "-", None), ("bytes=a-5", None), ("bytes=\u00b2-5", None),
     ("bytes=0-\u00b2", None), ("bytes=5-a", None), ("bytes=\u0665-9", None)],
)  # fmt: skip
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_is_refused(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 1000)


def test_the_audit_filter_offers_every_action_the_gateway_writes() -> None:
    root = Path(__file__).resolve().parents[2]
    written = set()
    for package in ("gateway", "storage", "ai", "crypto"):
        for source in (root / package).rglob("*.py"):
            text = source.read_text()
            written |= {a or b for a, b in ACTION.findall(text)}
            if 'f"{kind}.read"' in text:  # the API's result reads: its three result kinds
                written |= {"transcript.read", "analysis.read", "transcript.original.read"}
    assert written  # the pattern still finds the actions where the code writes them
    assert written <= set(AUDIT_ACTIONS), written - set(AUDIT_ACTIONS)
    assert set(AUDIT_ACTIONS) <= written, set(AUDIT_ACTIONS) - written


RECORDED = {"status": "recorded", "audio_purged": False, "decision": {"store_recording": True},
            "tracks": ["inbound", "outbound"], "legal_hold": False}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "kept"),
    [({}, True), ({"status": "analyzed"}, True), ({"status": "recording"}, False),
     ({"status": "deleted"}, False), ({"audio_purged": True}, False),
     # Audio the instructions redact: not before the analysis has (nor if it failed).
     ({"status": "processing", "decision": {"store_recording": True, "redact_audio": True}},
      False),
     ({"status": "failed", "decision": {"store_recording": True, "redact_audio": True}}, False),
     ({"status": "analyzed", "decision": {"store_recording": True, "redact_audio": True}}, True),
     ({"status": "processing"}, True),
     ({"decision": {"store_recording": False}}, False), ({"tracks": []}, False),
     # Past its window but held (or not swept yet): still stored, still served.
     ({"legal_hold": True, "expires": {"recordings": "2020-01-01T00:00:00Z"}}, True)],
)  # fmt: skip
def test_the_player_shows_only_for_audio_the_api_would_export(
    change: dict[str, object], kept: bool
) -> None:
    assert audio_kept({**RECORDED, **change}) is kept


@pytest.mark.parametrize(
    ("value", "allowed"),
    [("rec_9bb25e153881122c0e917080", True), ("acme", True), ("hold_1a", True),
     ("tok_env_ab12", True), ("..", False), (".", False), ("a/b", False), ("a?b", False),
     ("a#b", False), ("a%2Fb", False), ("", False), ("x" * 129, False), ("ação", False)],
)  # fmt: skip
def test_a_console_path_value_must_look_like_an_id(value: str, allowed: bool) -> None:
    assert (SEGMENT.fullmatch(value) is not None) is allowed
