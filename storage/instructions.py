"""The tenant's documented instructions: the document, its validation, and ISO-8601 durations.

Under GDPR Art. 28 callvault may handle call audio only on the tenant's documented
instructions, so this document is the single source of what is allowed: recording, each AI
feature, the consent rule, retention windows and numbers never to record. It is validated
strictly and completely when an admin PUTs it (an invalid document is refused with the
offending field named, never half-applied), so everything downstream (the policy, the
retention sweeper) can trust it without checking again.

Everything is **off by default** (DESIGN.md promise 1): a tenant that never PUT instructions
gets `default_instructions()`, which records and analyses nothing.

Two sections configure integrations rather than permissions: ``ai.categories`` (the
tenant's own topic categories, matched by the AI worker) and ``webhook`` (where analysis and
deletion events are POSTed). The webhook secret is part of the document because it belongs to
the same tenant decision, but it is write-only: the API shows `REDACTED` in its place, and the
catalog holds it only sealed (a `SealedSecret`, see ``storage.webhooksecret``), so a document
comes in two forms: as PUT (``parse_instructions``: the secret in clear, or `REDACTED` to keep
the current one) and as stored (``parse_stored_instructions``: the secret sealed).

Durations live here too because retention windows are their main user; the parser is a small
regex over the subset of ISO 8601 we document, not a new dependency.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from storage.categoryrules import MAX_CATEGORY_PHRASES, MAX_PHRASE_CHARS, CategoryDefinition
from storage.categoryrules import has_control as _has_control
from storage.errors import InvalidInstructions
from storage.redactionrules import RedactionRule
from storage.validation import first_problem

__all__ = [
    "AI_FEATURES",
    "MAX_CATEGORIES",
    "MAX_CATEGORY_PHRASES",
    "MAX_EXCLUDE_NUMBERS",
    "MAX_PHRASE_CHARS",
    "MAX_WEBHOOK_URL_CHARS",
    "REDACTED",
    "SEALED_SECRET_PREFIX",
    "WEBHOOK_SECRET_CHARS",
    "AiRule",
    "ConsentRule",
    "Duration",
    "InstructionsDoc",
    "RecordingRule",
    "RetentionRule",
    "SealedSecret",
    "TransportRule",
    "WebhookRule",
    "default_instructions",
    "normalize_number",
    "parse_duration",
    "parse_instructions",
    "parse_stored_instructions",
    "webhook_host_problem",
]

AI_FEATURES: tuple[str, ...] = ("transcript", "summary", "sentiment", "talk_listen", "topics")
"""Every AI feature a tenant can instruct, in the order decisions and documents list them."""

MAX_EXCLUDE_NUMBERS = 10_000
"""Most entries `exclude_numbers` may hold (counted before duplicates are removed)."""

MAX_CATEGORIES = 50
"""Most topic categories `ai.categories` may hold."""

MAX_WEBHOOK_URL_CHARS = 2000
"""Longest webhook URL (a common limit of proxies and browsers)."""

WEBHOOK_SECRET_CHARS = (16, 200)
"""Shortest and longest webhook secret. 16 characters is a floor against guessing; the
secret is an HMAC key, so any longer value works as well as a random one of that length."""

REDACTED = "<redacted>"
"""What GET shows instead of a set webhook secret; a PUT that sends it back keeps the secret.
Shorter than the shortest valid secret, so it can never be mistaken for a real one."""

SEALED_SECRET_PREFIX = "whsec_"  # noqa: S105 - an id prefix, not a secret
"""How the key-table id of a sealed webhook secret begins (``whsec_`` and 32 hex digits), so
that its row is never taken for an object's."""

# The validation context of a stored document: only there may a secret be sealed.
_STORED = "stored"

# Keys a client may echo back from GET on PUT; the server sets them, so they are dropped.
_SERVER_KEYS = frozenset({"version", "created_at", "created_by"})


# --- durations ----------------------------------------------------------------------------

# PnYnMnWnDTnHnMnS with integer components and an optional fraction on seconds only. Only
# ASCII digits ([0-9], not \d, which also matches other scripts' digits) and only uppercase
# designators: "p1d" is refused rather than guessed at. A fraction is written with a dot;
# ISO 8601's comma alternative is not accepted (nobody sends it and JSON numbers use dots).
_DURATION_RE = re.compile(
    r"P(?:(?P<years>[0-9]+)Y)?(?:(?P<months>[0-9]+)M)?(?:(?P<weeks>[0-9]+)W)?"
    r"(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?"
    r"(?:(?P<seconds>[0-9]+(?:\.[0-9]+)?)S)?)?"
)
# Longer than any sensible duration; keeps pathological inputs (a 5000-digit count) out of
# int() and the error message short.
_MAX_DURATION_TEXT = 40
# "Absurd" is measured in Gregorian mean years (365.2425 days = 31 556 952 s exactly, a month
# being a twelfth of that), so the bound is exact integer arithmetic: P100Y and P1200M pass,
# P36525D (a little over 100 mean years) does not.
_MEAN_YEAR_S = 31_556_952
_MEAN_MONTH_S = _MEAN_YEAR_S // 12
_MAX_YEARS = 100


@dataclass(frozen=True, slots=True)
class Duration:
    """A parsed ISO-8601 duration, kept in calendar units because a month or a year has no
    fixed length: "P1M" after Jan 31 is the end of February, not 30 days later.

    Weeks are folded into days, hours and minutes into seconds; days are not folded into
    seconds, but since all arithmetic is in UTC a day is always 86 400 s anyway.
    """

    years: int
    months: int
    days: int
    seconds: float

    def __post_init__(self) -> None:
        # Durations are never negative in this product (a retention window, an interval);
        # refusing here also protects values built directly, not through parse_duration.
        if min(self.years, self.months, self.days, self.seconds) < 0:
            raise ValueError("a duration cannot be negative")

    def after(self, start: datetime) -> datetime:
        """The instant this duration after ``start`` (aware; converted to UTC first).

        Years and months are added first, clamping the day to the target month's length
        (Jan 31 + P1M = Feb 28, or Feb 29 in a leap year; Feb 29 + P1Y = Feb 28), then days
        and seconds as an exact timedelta. This is the order ISO 8601 and most calendar
        libraries use, and it makes P1M after a month end land on a month end, not spill over.
        """
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be an aware datetime (UTC)")
        start = start.astimezone(UTC)
        month_index = start.month - 1 + self.months
        year = start.year + self.years + month_index // 12
        month = month_index % 12 + 1
        try:
            day = min(start.day, calendar.monthrange(year, month)[1])
            shifted = start.replace(year=year, month=month, day=day)
            return shifted + timedelta(days=self.days, seconds=self.seconds)
        except (ValueError, OverflowError) as exc:
            # Only reachable near year 9999; translated so callers handle one error type.
            raise ValueError(f"{start.isoformat()} plus this duration is out of range") from exc

    def shortest(self) -> timedelta:
        """A lower bound of the duration's length from any start: a year is at least 365
        days and a month at least 28 (the retention sweep pre-selects with it)."""
        return timedelta(days=self.years * 365 + self.months * 28 + self.days, seconds=self.seconds)

    def is_zero(self) -> bool:
        """Whether the duration is empty (P0D, PT0S): nothing would ever be kept."""
        return self.years == 0 and self.months == 0 and self.days == 0 and self.seconds == 0


def parse_duration(text: str) -> Duration:
    """Parse an ISO-8601 duration such as ``P90D``, ``PT30S``, ``P3Y`` or ``P1Y2M10DT2H30M``.

    Raises ``ValueError`` with a sentence for: an empty string, a bare ``P`` or a ``T`` with
    nothing after it, a sign, lowercase designators, fractions anywhere but the seconds, and
    anything over 100 years. ``P0D`` is a valid (zero) duration; callers that need a positive
    one check ``is_zero()``.
    """
    if len(text) > _MAX_DURATION_TEXT:
        raise ValueError(f"is not an ISO-8601 duration (longer than {_MAX_DURATION_TEXT} chars)")
    match = _DURATION_RE.fullmatch(text)
    # The regex makes every part optional, so "P" and "P1DT" match it; a duration needs at
    # least one component, and a "T" needs at least one time component after it.
    if (
        match is None
        or all(value is None for value in match.groupdict().values())
        or text.endswith("T")
    ):
        raise ValueError(
            f"{text!r} is not an ISO-8601 duration such as 'P90D', 'PT30S' or 'P1Y2M10DT2H30M'"
        )

    def count(name: str) -> int:
        value = match[name]
        return int(value) if value is not None else 0

    seconds_text = match["seconds"]
    seconds = float(seconds_text) if seconds_text is not None else 0.0
    duration = Duration(
        years=count("years"),
        months=count("months"),
        days=count("weeks") * 7 + count("days"),
        seconds=count("hours") * 3600 + count("minutes") * 60 + seconds,
    )
    approx_s = (
        (duration.years * 12 + duration.months) * _MEAN_MONTH_S
        + duration.days * 86_400
        + duration.seconds
    )
    if approx_s > _MAX_YEARS * _MEAN_YEAR_S:
        raise ValueError(f"{text!r} is longer than {_MAX_YEARS} years")
    return duration


# --- phone numbers ------------------------------------------------------------------------

# Error messages quote the offending value so the admin can find it, but never a huge one.
_QUOTE_LIMIT = 40


def _quote(value: str) -> str:
    return repr(value) if len(value) <= _QUOTE_LIMIT else repr(value[:_QUOTE_LIMIT] + "...")


# Formatting people type into numbers; removed before checking and comparing.
_NUMBER_PUNCTUATION = str.maketrans("", "", " -.()")
# E.164 allows at most 15 digits; 6 is a floor that still admits short national numbers
# written with a country code while refusing obvious garbage like "+1".
_NUMBER_RE = re.compile(r"\+[0-9]{6,15}")


def normalize_number(number: str) -> str:
    """The canonical form of a phone number: ``+`` and 6 to 15 digits, formatting removed.

    ``"+40 712-345-678"`` and ``"+40 (712) 345.678"`` both become ``"+40712345678"``; this is
    how `exclude_numbers` is stored and how call parties are compared with it. Raises
    ``ValueError`` for anything else (no leading ``+``, letters, too short or too long): a
    national-format number cannot be compared safely without knowing the country.
    """
    normalized = number.translate(_NUMBER_PUNCTUATION)
    if _NUMBER_RE.fullmatch(normalized) is None:
        raise ValueError(
            f"{_quote(number)} is not a phone number in international format ('+' then 6 to 15 "
            "digits; spaces, dashes, dots and parentheses are allowed)"
        )
    return normalized


# --- the document -------------------------------------------------------------------------

# Strict: JSON true/false only (no "true", no 1), unknown keys refused, values immutable so a
# document read once can be shared between concurrent calls without copying.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

_LANGUAGE_RE = re.compile(r"[a-z]{2}")


def _check_language(language: str) -> str:
    if language != "auto" and _LANGUAGE_RE.fullmatch(language) is None:
        raise ValueError(
            f"{_quote(language)} is not 'auto' or a two-letter ISO 639-1 code like 'en'"
        )
    return language


def _check_retention(text: str) -> str:
    if parse_duration(text).is_zero():
        raise ValueError(f"{text!r} is zero; a retention window must be longer than zero")
    # The text is kept as the tenant wrote it (GET shows it back unchanged).
    return text


# Category names become labels in analysis results and filters, so they are identifier-like.
_CATEGORY_NAME_RE = re.compile(r"[a-z0-9_]{1,40}")


def _check_category_name(name: str) -> str:
    if _CATEGORY_NAME_RE.fullmatch(name) is None:
        raise ValueError(
            f"{_quote(name)} is not a category name: 1 to 40 of lowercase a-z, 0-9 and _"
        )
    return name


def webhook_host_problem(host: str) -> str | None:
    """Why a webhook URL's host (as ``urlsplit`` gives it) can never be looked up, or None:
    it must encode to IDNA (the form resolvers send), in dot-separated labels of 1 to 63
    characters, at most 253 in all; one trailing dot (the DNS root) is allowed."""
    name = host[:-1] if host.endswith(".") else host
    try:
        encoded = name.encode("idna")
    except UnicodeError:
        encoded = b""
    if (
        not encoded
        or len(encoded) > 253
        or not all(1 <= len(label) <= 63 for label in encoded.split(b"."))
    ):
        return (
            "has a host that is not a valid DNS name (labels of 1 to 63 characters "
            "between the dots, at most 253 in all)"
        )
    return None


def _check_webhook_url(url: str, info: ValidationInfo) -> str:
    # The URL is never quoted back: it may carry credentials or tokens the admin pasted in.
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise ValueError(f"must be at most {MAX_WEBHOOK_URL_CHARS} characters")
    if _has_control(url) or any(char.isspace() for char in url):
        raise ValueError("cannot contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        # user:password@ would be sent to every redirect target and logged by proxies; the
        # signature header is how a receiver authenticates callvault.
        raise ValueError("cannot contain a user name or password (user@host)")
    if "#" in url:
        raise ValueError("cannot contain a fragment (#...); it is never sent to a server")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("has an invalid port (1 to 65535)")
    if not parts.hostname:
        raise ValueError("must name a host (https://host/path)")
    # A stored version is read as it was written: an older callvault did not check the host,
    # and the sender refuses such a URL for good (gateway.egress) instead.
    if not (info.context or {}).get(_STORED) and (problem := webhook_host_problem(parts.hostname)):
        raise ValueError(problem)
    return url


def _check_webhook_secret(secret: str) -> str:
    # Messages never quote the value: this is a credential.
    if secret == REDACTED:
        return secret  # "keep the current secret", resolved when the version is stored
    shortest, longest = WEBHOOK_SECRET_CHARS
    if not shortest <= len(secret) <= longest:
        raise ValueError(f"must be {shortest} to {longest} characters")
    if _has_control(secret):
        raise ValueError("cannot contain control characters")
    return secret


_RetentionText = Annotated[str, AfterValidator(_check_retention)]
_CategoryName = Annotated[str, AfterValidator(_check_category_name)]
# Items stay strict strings even though the tuple itself is lax (see exclude_numbers).
_PhoneNumber = Annotated[str, Strict(), AfterValidator(normalize_number)]


class RecordingRule(BaseModel):
    """Whether call audio is stored as a recording."""

    model_config = _STRICT

    enabled: bool = False
    """Store call audio as a recording."""


class ConsentRule(BaseModel):
    """Whether a call needs the parties' consent (announced by the PBX) to be handled."""

    model_config = _STRICT

    required: bool = True
    """Accept a call only with consent `granted`."""


class AiRule(BaseModel):
    """Which AI features run on a call's audio, and the transcription language."""

    model_config = _STRICT

    transcript: bool = False
    """Transcribe the call."""
    summary: bool = False
    """Summarize the transcript."""
    sentiment: bool = False
    """Sentiment overall, per track and over time."""
    talk_listen: bool = False
    """Talk/listen ratio, talk time, monologues, overlaps, interruptions."""
    topics: bool = False
    """Key phrases and matched categories."""
    language: Annotated[str, AfterValidator(_check_language)] = "auto"
    """`auto` or a two-letter ISO 639-1 code for transcription."""
    redaction: RedactionRule = RedactionRule()
    """Personal data (card numbers, IBANs, phone numbers, e-mail addresses, CNPs, names,
    postal addresses) removed from the transcript and the stored audio. Needs an AI feature:
    what is redacted is found in the transcription."""

    @field_validator("redaction")
    @classmethod
    def _redaction_needs_ai(cls, redaction: RedactionRule, info: ValidationInfo) -> RedactionRule:
        # info.data holds the feature flags (declared above): what is redacted is found in
        # the transcription, which runs only for an instructed feature.
        if redaction.enabled and not any(info.data.get(f) for f in AI_FEATURES):
            raise ValueError(
                "needs an AI feature (transcript, summary, sentiment, talk_listen or topics): "
                "what is redacted is found in the call's transcription"
            )
        if redaction.keep_original and not info.data.get("transcript"):
            raise ValueError("keep_original needs ai.transcript: no transcript, no original")
        return redaction

    # A dict, not a tuple of pairs, so the document is the JSON object tenants write. It is
    # the one mutable value in the document; nothing writes to it after validation.
    categories: dict[_CategoryName, CategoryDefinition] = Field(
        default={}, max_length=MAX_CATEGORIES
    )
    """The tenant's topic categories (reported by `topics`): a name (1 to 40 of `a-z`, `0-9`,
    `_`) mapped to 1 to 50 phrases (a call whose transcript contains one is in the category;
    duplicates are removed), or to `{"rules": [...]}`, 1 to 20 rules (`phrase`, `non_talk`,
    `interruptions`, `sentiment`) that must all match."""


class RetentionRule(BaseModel):
    """How long each kind of object is kept after the call ends (ISO-8601 durations > 0)."""

    model_config = _STRICT

    recordings: _RetentionText = "P90D"
    """How long recordings' audio is kept."""
    transcripts: _RetentionText = "P365D"
    """How long transcripts and analysis are kept."""
    call_records: _RetentionText = "P3Y"
    """How long call records (CDRs) are kept."""


class TransportRule(BaseModel):
    """How call audio may travel to the gateway."""

    model_config = _STRICT

    allow_unencrypted_rtp: bool = False
    """Accept rtp calls announced with `srtp` false (plain RTP)."""


class SealedSecret(BaseModel):
    """A webhook secret as the catalog stores it: sealed (``crypto.objectformat``) under a DEK
    of its own, whose wrapped form is the key table's row ``key_id`` and nowhere else. Deleting
    that row, or the tenant's KEKs, makes ``ciphertext`` unreadable for good."""

    model_config = _STRICT

    key_id: Annotated[str, Field(pattern=f"^{SEALED_SECRET_PREFIX}[0-9a-f]{{32}}$")]
    """The key-table row (object id) of the secret's DEK."""
    ciphertext: Annotated[str, Field(min_length=1, max_length=4096)]
    """The sealed secret, base64."""


def _check_secret_field(value: object, info: ValidationInfo) -> str | SealedSecret | None:
    # The sealed form only in a stored document: a client cannot hand in a sealed secret (one
    # it copied, or made up); the catalog writes those.
    if value is None:
        return None
    if isinstance(value, dict) and (info.context or {}).get(_STORED):
        return SealedSecret.model_validate(value)
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return _check_webhook_secret(value)


def _dump_secret_field(value: str | SealedSecret | None) -> str | dict[str, str] | None:
    return value.model_dump() if isinstance(value, SealedSecret) else value


class WebhookRule(BaseModel):
    """Where events about the tenant's recordings are POSTed, and the key that signs them."""

    model_config = _STRICT

    url: Annotated[str, AfterValidator(_check_webhook_url)] | None = None
    """Where events (`analysis.completed`, `analysis.failed`, `recording.deleted`) are POSTed
    as JSON: https (http only where the operator allows it), a host that is a DNS name
    (labels of 1 to 63 characters) and not a private address, no user name or password, no
    fragment. null: no webhook."""
    # validate_default so that a url without a secret reaches _require_secret (and the error
    # names webhook.secret, which a model validator could not). One validator, not a union:
    # a union's errors would name its branches, not the field.
    secret: Annotated[
        str | SkipJsonSchema[SealedSecret] | None,
        PlainValidator(_check_secret_field),
        PlainSerializer(_dump_secret_field, return_type=Any),
    ] = Field(default=None, validate_default=True)
    """The HMAC-SHA256 key of the `Callvault-Signature` header, 16 to 200 characters;
    required with `url`. Write-only: GET shows `<redacted>` when one is set, and a PUT that
    sends `<redacted>` keeps the current secret."""

    @field_validator("secret")
    @classmethod
    def _require_secret(
        cls, secret: str | SealedSecret | None, info: ValidationInfo
    ) -> str | SealedSecret | None:
        # info.data has url only when it was valid; an invalid url is reported on its own.
        if secret is None and info.data.get("url") is not None:
            raise ValueError("is required when webhook.url is set (16 to 200 characters)")
        return secret


class InstructionsDoc(BaseModel):
    """One version of a tenant's instructions, without the server-set version metadata."""

    model_config = _STRICT

    recording: RecordingRule = RecordingRule()
    consent: ConsentRule = ConsentRule()
    ai: AiRule = AiRule()
    retention: RetentionRule = RetentionRule()
    transport: TransportRule = TransportRule()
    webhook: WebhookRule = WebhookRule()
    # strict=False only for the container: strict mode wants a Python tuple, but a decoded
    # JSON body has lists. Items are still strict strings (_PhoneNumber).
    exclude_numbers: tuple[_PhoneNumber, ...] = Field(
        default=(), strict=False, max_length=MAX_EXCLUDE_NUMBERS
    )
    """Numbers never recorded nor analysed; either party matches. Stored normalised and
    without duplicates."""

    @field_validator("exclude_numbers")
    @classmethod
    def _dedupe_numbers(cls, numbers: tuple[str, ...]) -> tuple[str, ...]:
        # dict.fromkeys keeps first occurrences in order; "+40 712..." and "+40712..." are
        # already the same string here because items were normalised first.
        return tuple(dict.fromkeys(numbers))

    def ai_features(self) -> tuple[str, ...]:
        """The instructed AI features, in `AI_FEATURES` order."""
        return tuple(feature for feature in AI_FEATURES if getattr(self.ai, feature))

    def document(self) -> dict[str, Any]:
        """The JSON-ready document (lists, not tuples); the API adds version/created_*.

        It includes the webhook secret as it is held: in clear in a document as PUT (which
        ``storage.webhooksecret.store_instructions`` seals before the catalog sees it),
        sealed in a stored one. Views redact it."""
        return self.model_dump(mode="json")


def default_instructions() -> InstructionsDoc:
    """The instructions of a tenant that never PUT any: nothing recorded, no AI."""
    return InstructionsDoc()


def parse_instructions(data: object) -> InstructionsDoc:
    """Validate the decoded JSON body of a PUT into a whole new document.

    PUT replaces the document, so an omitted field takes its default (not the previous
    version's value). ``version``, ``created_at`` and ``created_by`` are accepted and ignored
    so that clients can send back what GET gave them; any other unknown key is refused.
    Raises `InvalidInstructions` naming the first offending field as a dotted path
    (``retention.recordings``, ``exclude_numbers.2``; ``(body)`` when the body is not an
    object).
    """
    if not isinstance(data, dict):
        raise InvalidInstructions("(body)", "the instructions must be a JSON object")
    fields = {key: value for key, value in data.items() if key not in _SERVER_KEYS}
    try:
        document = InstructionsDoc.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInstructions(*first_problem(exc)) from None
    if document.ai.redaction.audio and not document.recording.enabled:
        raise InvalidInstructions(
            "ai.redaction.audio",
            "needs recording.enabled: only a stored recording has audio to redact (an AI-only "
            "call's audio is purged after analysis)",
        )
    return document


def parse_stored_instructions(document: dict[str, Any]) -> InstructionsDoc:
    """A document as the catalog stores it: like a PUT's, except that its webhook secret is a
    `SealedSecret` (or, in a catalog from before secrets were sealed, still the secret in
    clear, until ``storage.webhooksecret.seal_clear_secrets`` seals it at start)."""
    try:
        return InstructionsDoc.model_validate(document, context={_STORED: True})
    except ValidationError as exc:
        raise InvalidInstructions(*first_problem(exc)) from None


# --- the rules above, as JSON Schema (for the API document) --------------------------------
# Introspection sees only `str` where a validator above checks in code; these are the
# ECMA-262 twins of those checks, kept beside them so that a changed rule is seen to change
# its pattern. gateway.openapi puts them into the document; tests/unit/test_openapi.py checks
# the duration pattern against parse_duration.

DURATION_PATTERN = (
    # parse_duration's designators and digits, plus the two rules it checks in code (at least
    # one component; a "T" needs a time component after it) as lookaheads. The 100-year cap
    # and "not zero" cannot be said in a pattern; DURATION's description says them.
    r"^P(?!$)(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+W)?(?:[0-9]+D)?"
    r"(?:T(?=[0-9])(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:\.[0-9]+)?S)?)?$"
)
DURATION: dict[str, Any] = {
    "type": "string",
    "pattern": DURATION_PATTERN,
    "maxLength": _MAX_DURATION_TEXT,
    "description": "ISO-8601 duration counted from the call's end: `PnYnMnWnDTnHnMnS`, "
    "integer components, a fraction only on seconds, uppercase designators, no sign. Must be "
    f"longer than zero and at most {_MAX_YEARS} years.",
    "examples": ["P90D", "PT30S", "P3Y"],
}
CATEGORY_NAME: dict[str, Any] = {"pattern": f"^{_CATEGORY_NAME_RE.pattern}$"}
_SHORTEST, _LONGEST = WEBHOOK_SECRET_CHARS
_SECRET = f"^[^\\x00-\\x1f\\x7f-\\x9f]{{{_SHORTEST},{_LONGEST}}}$"
CODE_CHECKED: dict[tuple[str, str], dict[str, Any]] = {
    **{("RetentionRule", n): {"allOf": [{"$ref": "#/components/schemas/Duration"}]}
       for n in RetentionRule.model_fields},
    ("AiRule", "language"): {"type": "string", "pattern": "^(auto|[a-z]{2})$"},
    ("WebhookRule", "url"): {
        "type": ["string", "null"], "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
        "maxLength": MAX_WEBHOOK_URL_CHARS,
    },
    # Longer than REDACTED and without control characters, so the branches never overlap.
    ("WebhookRule", "secret"): {
        "oneOf": [{"type": "string", "pattern": _SECRET}, {"const": REDACTED}, {"type": "null"}]
    },
}  # fmt: skip
"""(model, field) -> the JSON Schema of what its validator checks in code."""
