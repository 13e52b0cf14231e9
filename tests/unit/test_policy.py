"""Tests of the policy (DESIGN.md promise 1): every outcome and refusal code, the order of the
checks, AI-only calls, the instructions version passed through, excluded numbers matched on
either party whatever their formatting, and a property: with recording and all AI off no call
is ever allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import PolicyRefused, http_status
from gateway.policy import CallFacts, Consent, Decision, Refusal, decide
from storage.instructions import (
    AI_FEATURES,
    InstructionsDoc,
    default_instructions,
    parse_instructions,
)

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CALLER = "+40712345678"
CALLEE = "+40212345678"
OTHER = "+44 20 7946 0958"


def call(
    consent: Consent = "granted", from_number: str = CALLER, to_number: str = CALLEE
) -> CallFacts:
    return CallFacts(
        from_number=from_number, to_number=to_number, direction="inbound", consent=consent
    )


def instructions(
    *,
    recording: bool = False,
    ai: tuple[str, ...] = (),
    consent_required: bool = True,
    exclude: tuple[str, ...] = (),
) -> InstructionsDoc:
    body: dict[str, Any] = {
        "recording": {"enabled": recording},
        "consent": {"required": consent_required},
        "ai": dict.fromkeys(ai, True),
        "exclude_numbers": list(exclude),
    }
    return parse_instructions(body)


# --- the table ----------------------------------------------------------------------------

REC = {"recording": True}
AI = {"ai": ("transcript", "sentiment")}
BOTH = {"recording": True, "ai": ("summary",)}
OFF: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("rules", "consent_required", "consent", "exclude", "expected"),
    [
        # nothing instructed: refused whatever the consent
        (OFF, True, "granted", (), "recording_not_instructed"),
        (OFF, True, "denied", (), "recording_not_instructed"),
        (OFF, False, "granted", (), "recording_not_instructed"),
        (OFF, False, "not_asked", (), "recording_not_instructed"),
        # recording on
        (REC, True, "granted", (), (True, ())),
        (REC, True, "denied", (), "consent_missing"),
        (REC, True, "not_asked", (), "consent_missing"),
        (REC, False, "denied", (), (True, ())),
        (REC, False, "not_asked", (), (True, ())),
        # AI only
        (AI, True, "granted", (), (False, ("transcript", "sentiment"))),
        (AI, True, "not_asked", (), "consent_missing"),
        (AI, False, "not_asked", (), (False, ("transcript", "sentiment"))),
        # both
        (BOTH, True, "granted", (), (True, ("summary",))),
        (BOTH, True, "denied", (), "consent_missing"),
        # excluded numbers: either party, beats everything else
        (REC, True, "granted", (CALLER,), "number_excluded"),
        (REC, True, "granted", (CALLEE,), "number_excluded"),
        (REC, False, "granted", (OTHER, CALLEE), "number_excluded"),
        (BOTH, True, "denied", (CALLER,), "number_excluded"),
        (OFF, True, "granted", (CALLER,), "number_excluded"),
        (OFF, False, "not_asked", (CALLEE,), "number_excluded"),
        # an unrelated excluded number changes nothing
        (REC, True, "granted", (OTHER,), (True, ())),
        (OFF, True, "granted", (OTHER,), "recording_not_instructed"),
        (AI, True, "denied", (OTHER,), "consent_missing"),
    ],
)
def test_decision_table(
    rules: dict[str, Any],
    consent_required: bool,
    consent: Consent,
    exclude: tuple[str, ...],
    expected: str | tuple[bool, tuple[str, ...]],
) -> None:
    doc = instructions(consent_required=consent_required, exclude=exclude, **rules)
    result = decide(call(consent), doc, 7, NOW)
    if isinstance(expected, str):
        assert isinstance(result, Refusal)
        assert result.code == expected
        assert result.instructions_version == 7
    else:
        assert result == Decision(
            store_recording=expected[0], ai=expected[1], instructions_version=7
        )


# --- the order of the checks --------------------------------------------------------------


def test_exclusion_is_checked_before_instructions_and_consent() -> None:
    # Every other check would also refuse this call; the exclusion is what is reported.
    doc = instructions(exclude=(CALLER,))
    result = decide(call("denied"), doc, 1, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "number_excluded"


def test_not_instructed_is_checked_before_consent() -> None:
    result = decide(call("denied"), instructions(), 1, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "recording_not_instructed"


def test_consent_is_checked_last() -> None:
    result = decide(call("denied"), instructions(recording=True), 1, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "consent_missing"
    assert "'denied'" in result.message


def plain_rtp(consent: Consent = "granted") -> CallFacts:
    return CallFacts(
        from_number=CALLER,
        to_number=CALLEE,
        direction="inbound",
        consent=consent,
        unencrypted=True,
    )


def test_plain_rtp_is_refused_unless_the_instructions_allow_it() -> None:
    result = decide(plain_rtp(), instructions(recording=True), 1, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "unencrypted_transport"
    assert "srtp" in result.message
    allowing = parse_instructions(
        {"recording": {"enabled": True}, "transport": {"allow_unencrypted_rtp": True}}
    )
    assert isinstance(decide(plain_rtp(), allowing, 2, NOW), Decision)
    # Encrypted calls never need the permission.
    assert isinstance(decide(call(), instructions(recording=True), 1, NOW), Decision)


def test_plain_rtp_is_checked_after_instructions_and_before_consent() -> None:
    not_instructed = decide(plain_rtp("denied"), instructions(), 1, NOW)
    assert isinstance(not_instructed, Refusal)
    assert not_instructed.code == "recording_not_instructed"
    unencrypted = decide(plain_rtp("denied"), instructions(recording=True), 1, NOW)
    assert isinstance(unencrypted, Refusal)
    assert unencrypted.code == "unencrypted_transport"


# --- defaults, versions, AI-only ----------------------------------------------------------


@pytest.mark.parametrize("consent", ["granted", "denied", "not_asked"])
def test_defaults_refuse_every_call(consent: Consent) -> None:
    result = decide(call(consent), default_instructions(), None, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "recording_not_instructed"
    assert result.instructions_version is None
    assert "default instructions" in result.message


@pytest.mark.parametrize("version", [None, 1, 42])
def test_version_is_passed_through(version: int | None) -> None:
    allowed = decide(call(), instructions(recording=True), version, NOW)
    assert isinstance(allowed, Decision)
    assert allowed.instructions_version == version
    refused = decide(call("not_asked"), instructions(recording=True), version, NOW)
    assert isinstance(refused, Refusal)
    assert refused.instructions_version == version


def test_ai_only_decision() -> None:
    result = decide(call(), instructions(ai=("topics", "transcript")), 3, NOW)
    assert isinstance(result, Decision)
    assert result.store_recording is False
    assert result.ai == ("transcript", "topics")  # AI_FEATURES order, not the body's
    assert result.ai_only is True
    assert result.document() == {"store_recording": False, "ai": ["transcript", "topics"]}


def test_recording_with_ai_is_not_ai_only() -> None:
    result = decide(call(), instructions(recording=True, ai=AI_FEATURES), 3, NOW)
    assert isinstance(result, Decision)
    assert result.ai_only is False
    assert result.ai == AI_FEATURES
    assert result.document() == {"store_recording": True, "ai": list(AI_FEATURES)}


def test_recording_only_is_not_ai_only() -> None:
    result = decide(call(), instructions(recording=True), 3, NOW)
    assert isinstance(result, Decision)
    assert result.ai_only is False
    assert result.document() == {"store_recording": True, "ai": []}


# --- excluded numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "party"),
    [
        ("+40 712-345-678", "+40712345678"),
        ("+40712345678", "+40 712-345-678"),
        ("+40 (712) 345.678", "+40-712-345-678"),
    ],
)
@pytest.mark.parametrize("side", ["from", "to"])
def test_excluded_number_matches_either_party_in_any_format(
    listed: str, party: str, side: str
) -> None:
    doc = instructions(recording=True, exclude=(listed,))
    facts = call(from_number=party) if side == "from" else call(to_number=party)
    result = decide(facts, doc, 2, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "number_excluded"


@pytest.mark.parametrize("party", ["anonymous", "", "unknown", "0712345678", "+40"])
def test_invalid_party_simply_does_not_match(party: str) -> None:
    doc = instructions(recording=True, exclude=(CALLEE, "+40712345678"))
    result = decide(call(from_number=party, to_number="+40799999999"), doc, 2, NOW)
    assert isinstance(result, Decision)


def test_near_numbers_do_not_match() -> None:
    doc = instructions(recording=True, exclude=("+40712345678",))
    for party in ("+4071234567", "+407123456789", "+40712345679"):
        assert isinstance(decide(call(from_number=party), doc, 2, NOW), Decision)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "consent"),
    [
        (instructions(recording=True, exclude=(CALLER,)), "granted"),
        (instructions(), "granted"),
        (instructions(recording=True), "not_asked"),
        (instructions(ai=("summary",)), "denied"),
    ],
)
def test_refusal_message_has_no_phone_numbers(doc: InstructionsDoc, consent: Consent) -> None:
    facts = call(consent, from_number="+40 712 345 678", to_number=CALLEE)
    result = decide(facts, doc, 5, NOW)
    assert isinstance(result, Refusal)
    digits = "".join(ch for ch in result.message if ch.isdigit())
    for number in (CALLER, CALLEE):
        assert number not in result.message
        assert number[1:] not in digits
    assert "712" not in result.message
    assert result.message.endswith(".")


def test_refusal_error_is_policy_refused() -> None:
    result = decide(call("denied"), instructions(recording=True), 5, NOW)
    assert isinstance(result, Refusal)
    error = result.error()
    assert isinstance(error, PolicyRefused)
    assert error.code == "consent_missing"
    assert http_status(error) == 403
    assert error.message == result.message


def test_odd_consent_value_is_not_echoed() -> None:
    odd: Any = "+40712345678 said yes"
    result = decide(call(odd), instructions(recording=True), 5, NOW)
    assert isinstance(result, Refusal)
    assert result.code == "consent_missing"
    assert "said yes" not in result.message


# --- now ----------------------------------------------------------------------------------


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        decide(call(), instructions(recording=True), 1, datetime(2026, 1, 1))


def test_aware_non_utc_now_is_accepted() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert isinstance(decide(call(), instructions(recording=True), 1, now), Decision)


# --- promise 1 as a property --------------------------------------------------------------

_numbers = st.one_of(
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.sampled_from([CALLER, CALLEE, "+40 712-345-678", "anonymous", ""]),
)
_durations = st.sampled_from(["P1D", "PT30S", "P90D", "P3Y", "P1Y2M10DT2H30M"])


@st.composite
def _off_instructions(draw: st.DrawFn) -> InstructionsDoc:
    # Everything may vary except the two things that allow a call: recording and AI.
    body: dict[str, Any] = {
        "recording": {"enabled": False},
        "consent": {"required": draw(st.booleans())},
        "ai": {
            **dict.fromkeys(AI_FEATURES, False),
            "language": draw(st.sampled_from(["auto", "en", "ro"])),
        },
        "retention": {
            "recordings": draw(_durations),
            "transcripts": draw(_durations),
            "call_records": draw(_durations),
        },
        "exclude_numbers": draw(st.lists(_numbers.filter(lambda n: n.startswith("+")), max_size=4)),
    }
    if draw(st.booleans()):
        # Omitted sections take their (off) defaults too.
        del body["ai"]
        del body["recording"]
    return parse_instructions(body)


@settings(max_examples=200, deadline=None)
@given(
    doc=_off_instructions(),
    from_number=_numbers,
    to_number=_numbers,
    consent=st.sampled_from(["granted", "denied", "not_asked"]),
    direction=st.sampled_from(["inbound", "outbound"]),
    version=st.one_of(st.none(), st.integers(1, 10_000)),
)
def test_nothing_allowed_when_recording_and_ai_are_off(
    doc: InstructionsDoc,
    from_number: str,
    to_number: str,
    consent: Consent,
    direction: str,
    version: int | None,
) -> None:
    facts = CallFacts(
        from_number=from_number, to_number=to_number, direction=direction, consent=consent
    )
    result = decide(facts, doc, version, NOW)
    assert not isinstance(result, Decision)
    assert isinstance(result, Refusal)
    assert result.code in ("recording_not_instructed", "number_excluded")
    assert result.instructions_version == version
