"""Tests of the instructions document (defaults, PUT semantics, every refusal names its field),
phone-number normalisation, topic categories, the webhook section, and ISO-8601 durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import http_status
from storage.errors import InvalidInstructions
from storage.instructions import (
    AI_FEATURES,
    MAX_EXCLUDE_NUMBERS,
    REDACTED,
    Duration,
    InstructionsDoc,
    SealedSecret,
    default_instructions,
    normalize_number,
    parse_duration,
    parse_instructions,
    parse_stored_instructions,
)

DEFAULT_DOCUMENT: dict[str, Any] = {
    "recording": {"enabled": False},
    "consent": {"required": True},
    "ai": {
        "transcript": False,
        "summary": False,
        "sentiment": False,
        "talk_listen": False,
        "topics": False,
        "language": "auto",
        "redaction": {
            "transcript": False,
            "audio": False,
            "entities": ["all"],
            "fill": "silence",
            "padding_ms": 250,
            "keep_original": False,
        },
        "categories": {},
    },
    "retention": {"recordings": "P90D", "transcripts": "P365D", "call_records": "P3Y"},
    "transport": {"allow_unencrypted_rtp": False},
    "webhook": {"url": None, "secret": None},
    "exclude_numbers": [],
}
SECRET = "whsec_0123456789abcdef"


# --- defaults and PUT semantics -----------------------------------------------------------


def test_defaults_are_all_off_and_match_the_api_document() -> None:
    doc = default_instructions()
    assert doc.document() == DEFAULT_DOCUMENT
    assert doc.recording.enabled is False
    assert doc.ai_features() == ()
    assert doc.consent.required is True


def test_empty_put_equals_defaults() -> None:
    assert parse_instructions({}) == default_instructions()


def test_put_replaces_the_whole_document_omitted_fields_take_defaults() -> None:
    first = parse_instructions(
        {"recording": {"enabled": True}, "ai": {"summary": True, "language": "ro"}}
    )
    assert first.recording.enabled is True
    # A second PUT that only names ai: recording is back to its default, not carried over.
    second = parse_instructions({"ai": {"transcript": True}})
    assert second.recording.enabled is False
    assert second.ai.summary is False
    assert second.ai.language == "auto"
    assert second.ai_features() == ("transcript",)


def test_full_document_round_trips() -> None:
    body = {
        "recording": {"enabled": True},
        "consent": {"required": False},
        "ai": {
            "transcript": True,
            "summary": False,
            "sentiment": True,
            "talk_listen": False,
            "topics": True,
            "language": "en",
            "redaction": {
                "transcript": True,
                "audio": True,
                "entities": ["card_number", "ro_cnp"],
                "fill": "tone",
                "padding_ms": 300,
                "keep_original": False,
            },
            "categories": {"cancellation": ["cancel", "terminate"], "billing": ["invoice"]},
        },
        "retention": {"recordings": "P30D", "transcripts": "PT30S", "call_records": "P1Y2M"},
        "transport": {"allow_unencrypted_rtp": True},
        "webhook": {"url": "https://hooks.example.com/callvault", "secret": SECRET},
        "exclude_numbers": ["+40712345678"],
    }
    doc = parse_instructions(body)
    assert doc.document() == body
    assert parse_instructions(doc.document()) == doc


def test_server_keys_are_accepted_and_ignored() -> None:
    doc = parse_instructions(
        {
            "version": 3,
            "created_at": "2026-11-27T10:00:00Z",
            "created_by": "tok_1",
            "recording": {"enabled": True},
        }
    )
    assert doc.recording.enabled is True
    assert "version" not in doc.document()
    assert "created_at" not in doc.document()


def test_ai_features_are_listed_in_canonical_order() -> None:
    doc = parse_instructions({"ai": {"topics": True, "transcript": True, "sentiment": True}})
    assert doc.ai_features() == ("transcript", "sentiment", "topics")
    every = parse_instructions({"ai": dict.fromkeys(AI_FEATURES, True)})
    assert every.ai_features() == AI_FEATURES


def test_document_is_frozen() -> None:
    doc = default_instructions()
    with pytest.raises(ValueError, match="frozen"):
        doc.recording = doc.recording  # type: ignore[misc]


# --- exclude_numbers ----------------------------------------------------------------------


def test_numbers_are_normalised_and_deduplicated_in_order() -> None:
    doc = parse_instructions(
        {
            "exclude_numbers": [
                "+40 712-345-678",
                "+1 (555) 123.4567",
                "+40712345678",
                "+15551234567",
                "+44 20 7946 0958",
            ]
        }
    )
    assert doc.exclude_numbers == ("+40712345678", "+15551234567", "+442079460958")


def test_exclude_numbers_limit() -> None:
    many = [f"+40700{i:06d}" for i in range(MAX_EXCLUDE_NUMBERS)]
    assert len(parse_instructions({"exclude_numbers": many}).exclude_numbers) == 10_000
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"exclude_numbers": [*many, "+40799999999"]})
    assert info.value.field == "exclude_numbers"
    assert "10000" in info.value.message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+40712345678", "+40712345678"),
        ("+40 712-345-678", "+40712345678"),
        ("+40 (712) 345.678", "+40712345678"),
        ("+123456", "+123456"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+",
        "40712345678",  # no country code marker
        "0040712345678",
        "+12345",  # 5 digits
        "+1234567890123456",  # 16 digits
        "+40 712 345 67a",
        "+40/712345678",
        "anonymous",
        "++40712345678",
        "+40712345678\n",
        "+٤٠٧١٢٣٤٥٦٧٨",  # Arabic-Indic digits are digits to str.isdigit, not to us
    ],
)
def test_normalize_number_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="not a phone number"):
        normalize_number(raw)


# --- invalid documents: every refusal names its field -------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # unknown keys
        ({"recordings": {"enabled": True}}, "recordings"),
        ({"recording": {"enable": True}}, "recording.enable"),
        ({"ai": {"translate": True}}, "ai.translate"),
        ({"retention": {"audio": "P1D"}}, "retention.audio"),
        # wrong types
        ({"recording": {"enabled": "true"}}, "recording.enabled"),
        ({"recording": {"enabled": 1}}, "recording.enabled"),
        ({"consent": {"required": None}}, "consent.required"),
        ({"ai": {"transcript": "true"}}, "ai.transcript"),
        ({"retention": {"recordings": 90}}, "retention.recordings"),
        ({"retention": {"transcripts": 1.5}}, "retention.transcripts"),
        ({"recording": [True]}, "recording"),
        ({"ai": ["transcript"]}, "ai"),
        ({"retention": "P90D"}, "retention"),
        ({"consent": None}, "consent"),
        ({"exclude_numbers": "+40712345678"}, "exclude_numbers"),
        ({"exclude_numbers": {"+40712345678": True}}, "exclude_numbers"),
        ({"exclude_numbers": ["+40712345678", 40712345678]}, "exclude_numbers.1"),
        ({"ai": {"language": 7}}, "ai.language"),
        # bad durations
        ({"retention": {"recordings": "P"}}, "retention.recordings"),
        ({"retention": {"recordings": "PT"}}, "retention.recordings"),
        ({"retention": {"recordings": "1D"}}, "retention.recordings"),
        ({"retention": {"recordings": "P-1D"}}, "retention.recordings"),
        ({"retention": {"transcripts": "P0D"}}, "retention.transcripts"),
        ({"retention": {"call_records": "PT0S"}}, "retention.call_records"),
        ({"retention": {"call_records": "p1d"}}, "retention.call_records"),
        ({"retention": {"call_records": "P101Y"}}, "retention.call_records"),
        ({"retention": {"recordings": ""}}, "retention.recordings"),
        # bad language
        ({"ai": {"language": "EN"}}, "ai.language"),
        ({"ai": {"language": "eng"}}, "ai.language"),
        ({"ai": {"language": "en-US"}}, "ai.language"),
        ({"ai": {"language": ""}}, "ai.language"),
        # bad numbers, with their index
        ({"exclude_numbers": ["+40712345678", "0712345678"]}, "exclude_numbers.1"),
        ({"exclude_numbers": ["+40712345678", "+40 712", "junk"]}, "exclude_numbers.1"),
        ({"exclude_numbers": ["x"]}, "exclude_numbers.0"),
    ],
)
def test_invalid_document_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions(body)
    error = info.value
    assert error.field == field
    assert error.code == "invalid_instructions"
    assert http_status(error) == 422
    # A human sentence, not pydantic's boilerplate.
    assert "pydantic" not in error.message
    assert "http" not in error.message
    assert error.message.startswith(f"{field}: ")
    assert len(error.message) > len(field) + 5


@pytest.mark.parametrize("body", [[], "recording", None, 3, [{"recording": {}}]])
def test_body_not_an_object(body: object) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions(body)
    assert info.value.field == "(body)"


def test_first_error_is_reported() -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"recording": {"enabled": "yes"}, "ai": {"topics": "no"}})
    assert info.value.field == "recording.enabled"


def test_messages_are_specific() -> None:
    cases = {
        "unknown field": {"recording": {"enable": True}},
        "true or false": {"ai": {"transcript": "true"}},
        "longer than zero": {"retention": {"recordings": "P0D"}},
        "ISO-8601 duration": {"retention": {"recordings": "P"}},
        "ISO 639-1": {"ai": {"language": "english"}},
        "JSON object": {"retention": []},
        "phone number": {"exclude_numbers": ["12"]},
    }
    for expected, body in cases.items():
        with pytest.raises(InvalidInstructions, match=expected):
            parse_instructions(body)


def test_long_bad_values_are_not_echoed_whole() -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"exclude_numbers": ["x" * 5000]})
    assert len(info.value.message) < 300


def test_server_keys_are_ignored_only_at_top_level() -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"ai": {"version": 2}})
    assert info.value.field == "ai.version"


def test_model_validate_with_a_python_tuple_also_works() -> None:
    # Internal callers (the catalog loading a stored document) may build from Python values.
    doc = InstructionsDoc.model_validate({"exclude_numbers": ("+40712345678",)})
    assert doc.exclude_numbers == ("+40712345678",)


# --- ai.categories ------------------------------------------------------------------------


def test_categories_keep_phrases_as_written_stripped_and_deduplicated_in_order() -> None:
    doc = parse_instructions(
        {
            "ai": {
                "topics": True,
                "categories": {
                    "billing": ["  Invoice ", "charged twice", "Invoice", "invoice", "Ă§ ü"],
                    "cancellation_2": ["cancel"],
                },
            }
        }
    )
    # Case and diacritics are the matcher's business; only exact duplicates go.
    assert doc.ai.categories == {
        "billing": ("Invoice", "charged twice", "invoice", "Ă§ ü"),
        "cancellation_2": ("cancel",),
    }
    # document() is JSON: a dict of lists, in the order written, and it parses back equal.
    assert doc.document()["ai"]["categories"] == {
        "billing": ["Invoice", "charged twice", "invoice", "Ă§ ü"],
        "cancellation_2": ["cancel"],
    }
    assert list(doc.document()["ai"]["categories"]) == ["billing", "cancellation_2"]
    assert parse_instructions(doc.document()) == doc


def test_categories_limits_are_inclusive() -> None:
    fifty = {f"c{i}": ["x"] for i in range(50)}
    assert len(parse_instructions({"ai": {"categories": fifty}}).ai.categories) == 50
    name = "a" * 40
    phrases = [" " + "p" * 99 + "y "] + [f"p{i}" for i in range(49)]
    doc = parse_instructions({"ai": {"categories": {name: phrases}}})
    assert doc.ai.categories[name][0] == "p" * 99 + "y"  # 100 characters once stripped
    assert len(doc.ai.categories[name]) == 50
    # The 50 is counted as written: duplicates removed afterwards do not make room.
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"ai": {"categories": {"a": ["x"] * 51}}})
    assert info.value.field == "ai.categories.a"


@pytest.mark.parametrize(
    ("categories", "field", "words"),
    [
        ({"Billing": ["x"]}, "ai.categories", "'Billing' is not a category name"),
        ({"bill-ing": ["x"]}, "ai.categories", "is not a category name"),
        ({"": ["x"]}, "ai.categories", "is not a category name"),
        ({"a" * 41: ["x"]}, "ai.categories", "is not a category name"),
        ({"ü": ["x"]}, "ai.categories", "is not a category name"),
        ({f"c{i}": ["x"] for i in range(51)}, "ai.categories", "at most 50 entries"),
        ({"a": []}, "ai.categories.a", "at least 1 entry"),
        ({"a": ["x", "   "]}, "ai.categories.a.1", "1 to 100 characters"),
        ({"a": [""]}, "ai.categories.a.0", "1 to 100 characters"),
        ({"a": ["p" * 101]}, "ai.categories.a.0", "1 to 100 characters"),
        ({"a": ["x\x00y"]}, "ai.categories.a.0", "control characters"),
        ({"a": ["line\nbreak"]}, "ai.categories.a.0", "control characters"),
        ({"a": ["x\x85y"]}, "ai.categories.a.0", "control characters"),
        ({"a": ["x", 7]}, "ai.categories.a.1", "must be a string"),
        ({"a": "cancel"}, "ai.categories.a", "JSON array"),
        ({"a": {"cancel": True}}, "ai.categories.a", "JSON array"),
        (["cancel"], "ai.categories", "JSON object"),
        ("cancel", "ai.categories", "JSON object"),
    ],
)
def test_invalid_categories_name_their_field(categories: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"ai": {"categories": categories}})
    assert info.value.field == field
    assert words in info.value.message
    assert len(info.value.message) < 300  # a 41-char name is quoted, shortened


def test_a_huge_category_name_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"ai": {"categories": {"x" * 5000: ["a"]}}})
    assert info.value.field == "ai.categories"
    assert len(info.value.message) < 200


# --- webhook ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/callvault?tenant=acme",
        "http://10.0.0.5:8080/hook",  # private hosts are the sender's concern, not the doc's
        "HTTPS://Example.COM",
        "https://[2001:db8::1]:8443/h",
        "https://example.com/" + "p" * (2000 - len("https://example.com/")),
        "https://example.com./hook",  # the DNS root
        f"https://{'a' * 63}.example/hook",
        f"https://{'a.' * 126}b/hook",  # 253 characters
        "https://bücher.example/hook",  # xn--bcher-kva.example
    ],
)
def test_webhook_urls_accepted_as_written(url: str) -> None:
    doc = parse_instructions({"webhook": {"url": url, "secret": SECRET}})
    assert doc.webhook.url == url
    assert doc.document()["webhook"] == {"url": url, "secret": SECRET}


@pytest.mark.parametrize(
    ("webhook", "field", "words"),
    [
        ({"url": "ftp://example.com/x", "secret": SECRET}, "webhook.url", "http:// or https://"),
        ({"url": "example.com/x", "secret": SECRET}, "webhook.url", "http:// or https://"),
        ({"url": "https:///path", "secret": SECRET}, "webhook.url", "must name a host"),
        ({"url": "https://", "secret": SECRET}, "webhook.url", "must name a host"),
        ({"url": "https://u:hunter2@example.com/", "secret": SECRET}, "webhook.url", "password"),
        ({"url": "https://example.com/#frag", "secret": SECRET}, "webhook.url", "fragment"),
        ({"url": "https://example.com:0/", "secret": SECRET}, "webhook.url", "port"),
        ({"url": "https://example.com:99999/", "secret": SECRET}, "webhook.url", "port"),
        ({"url": "https://exa mple.com/", "secret": SECRET}, "webhook.url", "spaces"),
        ({"url": "https://a..b/hook", "secret": SECRET}, "webhook.url", "not a valid DNS name"),
        ({"url": "https://.a.b/hook", "secret": SECRET}, "webhook.url", "not a valid DNS name"),
        ({"url": "https://a.b../hook", "secret": SECRET}, "webhook.url", "not a valid DNS name"),
        (
            {"url": f"https://{'a' * 64}.example/hook", "secret": SECRET},
            "webhook.url",
            "not a valid DNS name",
        ),
        (
            {"url": f"https://{'a.' * 127}b/hook", "secret": SECRET},  # 255 characters
            "webhook.url",
            "not a valid DNS name",
        ),
        ({"url": "https://example.com/\r\nX: y", "secret": SECRET}, "webhook.url", "control"),
        (
            {"url": "https://example.com/" + "p" * 1981, "secret": SECRET},
            "webhook.url",
            "at most 2000",
        ),
        ({"url": 443, "secret": SECRET}, "webhook.url", "must be a string"),
        ({"url": "https://example.com/"}, "webhook.secret", "required when webhook.url"),
        ({"url": "https://example.com/", "secret": None}, "webhook.secret", "required"),
        ({"url": "https://example.com/", "secret": "s" * 15}, "webhook.secret", "16 to 200"),
        ({"url": "https://example.com/", "secret": "s" * 201}, "webhook.secret", "16 to 200"),
        ({"secret": "0123456789abcdef\n"}, "webhook.secret", "control characters"),
        ({"secret": 1234567890123456789}, "webhook.secret", "must be a string"),
        ({"url": None, "secret": SECRET, "events": ["x"]}, "webhook.events", "unknown field"),
    ],
)
def test_invalid_webhook_names_its_field(webhook: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"webhook": webhook})
    assert info.value.field == field
    assert words in info.value.message


def test_a_stored_url_whose_host_is_no_dns_name_still_reads() -> None:
    # Written by a version that did not check the host: the tenant's instructions still
    # read (the sender refuses the URL for good), rather than failing every call.
    sealed = {"key_id": "whsec_" + "0" * 32, "ciphertext": "AAAA"}
    stored = {"webhook": {"url": "https://a..b/hook", "secret": sealed}}
    assert parse_stored_instructions(stored).webhook.url == "https://a..b/hook"


def test_webhook_messages_never_quote_the_secret_or_the_url() -> None:
    cases = [
        {"url": "https://example.com/", "secret": "tooshort-hunter2"[:15]},
        {"url": "https://example.com/", "secret": "hunter2-" * 30},
        {"url": "https://example.com/", "secret": "hunter2-hunter2-\x07"},
        {"url": "https://u:hunter2@example.com/", "secret": SECRET},
        {"url": "gopher://hunter2.example/", "secret": SECRET},
    ]
    for webhook in cases:
        with pytest.raises(InvalidInstructions) as info:
            parse_instructions({"webhook": webhook})
        assert "hunter2" not in str(info.value), webhook
        assert "tooshort" not in str(info.value), webhook


def test_a_secret_without_url_is_allowed_and_the_default_is_none() -> None:
    assert parse_instructions({}).webhook.url is None
    assert parse_instructions({}).webhook.secret is None
    doc = parse_instructions({"webhook": {"secret": SECRET}})
    assert doc.document()["webhook"] == {"url": None, "secret": SECRET}


def test_an_invalid_url_is_reported_rather_than_the_missing_secret() -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"webhook": {"url": "ftp://example.com/"}})
    assert info.value.field == "webhook.url"


SEALED = {"key_id": "whsec_" + "0f" * 16, "ciphertext": "Q1ZMVA=="}


def test_redacted_is_the_keep_marker_of_a_put() -> None:
    # Resolved to the current sealed secret when the version is stored (the catalog refuses
    # it, naming webhook.secret, when there is none: tests/functional/test_api_instructions).
    doc = parse_instructions({"webhook": {"url": "https://example.com/", "secret": REDACTED}})
    assert doc.webhook.secret == REDACTED


@pytest.mark.parametrize("secret", [SEALED, {"key_id": "whsec_x", "ciphertext": "x"}, {}])
def test_a_put_cannot_hand_in_a_sealed_secret(secret: dict[str, str]) -> None:
    with pytest.raises(InvalidInstructions) as info:
        parse_instructions({"webhook": {"url": "https://example.com/", "secret": secret}})
    assert (info.value.field, info.value.message) == (
        "webhook.secret",
        "webhook.secret: must be a string",
    )


def test_a_stored_document_holds_its_secret_sealed() -> None:
    stored = {"webhook": {"url": "https://example.com/", "secret": SEALED}}
    doc = parse_stored_instructions(stored)
    assert doc.webhook.secret == SealedSecret(**SEALED)
    assert doc.document() == {**DEFAULT_DOCUMENT, **stored}
    # A catalog from before sealing: its clear secret still parses (and is sealed at start).
    legacy = parse_stored_instructions({"webhook": {"url": "https://e.com/", "secret": SECRET}})
    assert legacy.webhook.secret == SECRET
    with pytest.raises(InvalidInstructions) as info:
        parse_stored_instructions({"webhook": {"secret": {**SEALED, "key_id": "obj-1"}}})
    assert info.value.field == "webhook.secret.key_id"


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30S", Duration(0, 0, 0, 30.0)),
        ("P3Y", Duration(3, 0, 0, 0.0)),
        ("P90D", Duration(0, 0, 90, 0.0)),
        ("P365D", Duration(0, 0, 365, 0.0)),
        ("P1Y2M10DT2H30M", Duration(1, 2, 10, 2 * 3600 + 30 * 60)),
        ("P2W", Duration(0, 0, 14, 0.0)),
        ("P1W3D", Duration(0, 0, 10, 0.0)),
        ("PT1H", Duration(0, 0, 0, 3600.0)),
        ("PT1M", Duration(0, 0, 0, 60.0)),
        ("P1M", Duration(0, 1, 0, 0.0)),
        ("PT0.5S", Duration(0, 0, 0, 0.5)),
        ("PT1H1M1.25S", Duration(0, 0, 0, 3661.25)),
        ("P0D", Duration(0, 0, 0, 0.0)),
        ("PT0S", Duration(0, 0, 0, 0.0)),
        ("P100Y", Duration(100, 0, 0, 0.0)),
        ("P1200M", Duration(0, 1200, 0, 0.0)),
        ("P36524D", Duration(0, 0, 36524, 0.0)),
        ("P0001D", Duration(0, 0, 1, 0.0)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "1D",
        "D",
        "P-1D",
        "-P1D",
        "+P1D",
        "p1d",
        "P1d",
        "pt30s",
        "P1.5D",
        "PT1.5H",
        "PT.5S",
        "PT1,5S",
        "P1D2Y",  # designators out of order
        "PT30M1H",
        "P1H",  # time component without T
        "PT1D",
        "P 1D",
        " P1D",
        "P1D\n",
        "P101Y",
        "P1201M",
        "P36525D",
        "PT3155695201S",
        "P99999999999999999999999D",
        "P" + "9" * 5000 + "D",
        "P١D",  # Arabic-Indic one
        "P1Y1Y",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration|years"):
        parse_duration(text)


def test_duration_rejects_negative_parts() -> None:
    with pytest.raises(ValueError, match="negative"):
        Duration(0, 0, -1, 0.0)


def test_is_zero() -> None:
    assert parse_duration("P0D").is_zero()
    assert parse_duration("P0Y0M0DT0H0M0S").is_zero()
    assert not parse_duration("PT0.001S").is_zero()
    assert not parse_duration("P1M").is_zero()


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "text", "expected"),
    [
        (_utc(2026, 1, 31), "P1M", _utc(2026, 2, 28)),
        (_utc(2028, 1, 31), "P1M", _utc(2028, 2, 29)),  # leap year
        (_utc(2026, 3, 31), "P1M", _utc(2026, 4, 30)),
        (_utc(2026, 12, 31), "P2M", _utc(2027, 2, 28)),
        (_utc(2026, 11, 15), "P3M", _utc(2027, 2, 15)),
        (_utc(2028, 2, 29), "P1Y", _utc(2029, 2, 28)),
        (_utc(2028, 2, 29), "P4Y", _utc(2032, 2, 29)),
        (_utc(2026, 1, 31), "P1M1D", _utc(2026, 3, 1)),  # months first, then days
        (_utc(2026, 1, 1, 0, 0, 0), "PT30S", _utc(2026, 1, 1, 0, 0, 30)),
        (_utc(2026, 12, 31, 23, 59, 45), "PT30S", _utc(2027, 1, 1, 0, 0, 15)),
        (_utc(2026, 11, 27, 10), "P3Y", _utc(2029, 11, 27, 10)),
        (_utc(2026, 11, 27, 10), "P90D", _utc(2027, 2, 25, 10)),
        (_utc(2026, 2, 28), "P1D", _utc(2026, 3, 1)),
        (_utc(2028, 2, 28), "P1D", _utc(2028, 2, 29)),
        (_utc(2026, 1, 1), "P1Y2M10DT2H30M", _utc(2027, 3, 11, 2, 30)),
        (_utc(2026, 1, 1), "P2W", _utc(2026, 1, 15)),
    ],
)
def test_after(start: datetime, text: str, expected: datetime) -> None:
    result = parse_duration(text).after(start)
    assert result == expected
    assert result.tzinfo is UTC


def test_after_fractional_seconds() -> None:
    start = _utc(2026, 1, 1)
    assert parse_duration("PT0.25S").after(start) == start + timedelta(milliseconds=250)


def test_after_converts_other_offsets_to_utc() -> None:
    bucharest_winter = timezone(timedelta(hours=2))
    start = datetime(2026, 2, 1, 1, 0, tzinfo=bucharest_winter)  # = Jan 31 23:00 UTC
    result = parse_duration("P1M").after(start)
    # Calendar arithmetic happens in UTC: Jan 31 -> Feb 28, not Feb 1 -> Mar 1.
    assert result == _utc(2026, 2, 28, 23, 0)
    assert result.tzinfo is UTC


def test_after_refuses_naive() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_duration("P1D").after(datetime(2026, 1, 1))


def test_after_out_of_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_duration("P2Y").after(_utc(9998, 6, 1))


@settings(max_examples=150, deadline=None)
@given(
    years=st.integers(0, 40),
    months=st.integers(0, 30),
    weeks=st.integers(0, 60),
    days=st.integers(0, 400),
    hours=st.integers(0, 48),
    minutes=st.integers(0, 120),
    seconds=st.integers(0, 100_000),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_duration_properties(
    years: int,
    months: int,
    weeks: int,
    days: int,
    hours: int,
    minutes: int,
    seconds: int,
    start: datetime,
) -> None:
    text = f"P{years}Y{months}M{weeks}W{days}DT{hours}H{minutes}M{seconds}S"
    duration = parse_duration(text)
    assert duration == Duration(
        years, months, weeks * 7 + days, float(hours * 3600 + minutes * 60 + seconds)
    )
    end = duration.after(start)
    # Never goes backwards; the calendar part never moves the day past the start's day.
    assert end >= start
    calendar_only = Duration(years, months, 0, 0.0).after(start)
    assert calendar_only.day <= start.day
    assert end - calendar_only == timedelta(days=weeks * 7 + days, seconds=duration.seconds)
