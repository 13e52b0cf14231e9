"""The bodies of the control API as pydantic models: what a request may send and what an
answer holds.

They are the one statement of each body: request models validate what handlers receive
(``gateway.api.routes`` reads the body with them before the handler runs), and every model
here is a component schema of the OpenAPI document (``model_json_schema``, with the
attribute docstrings below as the fields' descriptions). The views that build answers
(``tenant_view``, ``recording_view``, ...) are checked against these schemas by
``tests/unit/test_openapi.py``. Request models reuse the domain's own models where one
exists (``CallAnnouncement``, ``InstructionsDoc``) rather than restate them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
)
from pydantic.json_schema import SkipJsonSchema

from gateway.ingest.events import Track
from gateway.policy import RefusalCode as Refusal
from storage.catalog.records import LIMIT_NAMES, AuditReason, LimitName, RecordingStatus, Role
from storage.instructions import (
    DURATION_PATTERN,
    InstructionsDoc,
    normalize_number,
    parse_duration,
)
from storage.retention import DeleteReason

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
MAX_LIMIT = 1_000_000
MAX_HOLD_CALLS = 1000
MAX_REASON = 500
HOLD_EXAMPLE = "hold_9c2e4a1b7d3f5e6a8b0c1d2e"
"""A legal hold id in examples (the `hold` field of a 409 `legal_hold`)."""

_DOCS = ConfigDict(use_attribute_docstrings=True)
_CLOSED = ConfigDict(use_attribute_docstrings=True, extra="forbid", strict=True)

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
"""API timestamps: UTC ISO-8601 with a ``Z`` (``gateway.api.common.iso``)."""
Count = Annotated[int, Field(ge=0)]
Absent = SkipJsonSchema[None]
"""For a field an answer leaves out rather than sets to null."""


def _not_blank(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be blank")
    return stripped


def _text(limit: int) -> Any:
    """A non-blank string of at most ``limit`` characters (as sent), stripped. Blank is what
    ``str.strip`` removes (which includes the separators U+001C-U+001F); the document's
    ``\\S`` pattern says the same to a reader."""
    return Annotated[
        str,
        StringConstraints(max_length=limit),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": r"\S"}),
    ]


def _number(value: str) -> str:
    try:
        return normalize_number(value)
    except ValueError:
        raise ValueError("is not a phone number") from None


def _absent_not_null(schema: dict[str, Any]) -> None:
    """Document an optional request field as its type alone: it may be left out, but a null
    is refused (the field's before-validator), so the document must not offer one."""
    branches = [branch for branch in schema.pop("anyOf") if branch != {"type": "null"}]
    (only,) = branches
    schema.update(only)
    schema.pop("default", None)


def _lifetime(value: str) -> str:
    if parse_duration(value).is_zero():
        raise ValueError("must be longer than zero")
    return value


PhoneNumber = Annotated[str, AfterValidator(_number), Field(examples=["+40712345678"])]
"""International format, normalised as in `exclude_numbers`."""


class Error(BaseModel):
    """Every error answer of the HTTP API."""

    model_config = _DOCS

    error: str = Field(pattern="^[a-z][a-z0-9_]*$")
    """Stable snake_case code; program against this."""
    message: str
    """A human sentence; may change."""
    field: str | Absent = None
    """Only with 422 `invalid_instructions`: the offending field as a dotted path
    (`retention.recordings`, `exclude_numbers.2`)."""
    hold: str | Absent = Field(default=None, examples=[HOLD_EXAMPLE])
    """Only with 409 `legal_hold`: the id of the legal hold that must be released first."""
    limit: LimitName | Absent = None
    """Only with 429 `limit_exceeded`: the tenant's limit one more call would exceed."""


class RefusalCode(RootModel[Refusal]):
    """Why the tenant's instructions refused a call."""


class Status(BaseModel):
    status: str


class Readiness(BaseModel):
    """``/readyz``'s 200: ``ready``, or ``degraded`` while the object store does not answer
    or spooled audio waits to be published to it (the node still takes calls)."""

    status: Literal["ready", "degraded"]
    store: str | Absent = None
    """Only when degraded: `ok`, or why the object store is not usable."""
    spool_bytes: int | Absent = None
    """Only when degraded: bytes in the spool (live calls' audio included)."""
    spool_pending_bytes: int | Absent = None
    """Only when degraded: bytes in the spool waiting to be published to the store."""


# --- tenants and tokens --------------------------------------------------------------------


LimitValue = Annotated[int, Field(ge=0, le=MAX_LIMIT)]


class LimitsChange(BaseModel):
    """The operator's limits of a tenant, counted on every node together; a limit left out
    of a creation, or set to null, follows its default (`CALLVAULT_LIMITS__*`); one left out
    of a PATCH stays as it is. One more call over a limit is refused with 429
    `limit_exceeded` naming it."""

    model_config = _CLOSED

    live_calls: LimitValue | None = Field(default=None, examples=[100])
    """Calls live at once (announced or started, not ended)."""
    rtp_calls: LimitValue | None = Field(default=None, examples=[50])
    """RTP/SRTP calls live at once."""
    announces_per_minute: LimitValue | None = Field(default=None, examples=[600])
    """Calls announced (or started unannounced) in any 60 s; those a limit refused do not
    count."""

    def overrides(self) -> dict[str, int | None]:
        """The limits this body names (null: back to the default)."""
        return {name: getattr(self, name) for name in LIMIT_NAMES if name in self.model_fields_set}


class TenantCreate(BaseModel):
    """The body of a tenant creation; unknown fields are refused."""

    model_config = _CLOSED

    id: str = Field(pattern=TENANT_ID.pattern, examples=["acme"])
    """2-63 lowercase letters, digits or dashes; never reusable."""
    name: _text(200)  # type: ignore[valid-type]
    region: _text(32) = "eu"  # type: ignore[valid-type]
    limits: LimitsChange | None = None
    """Limits that differ from the defaults (`CALLVAULT_LIMITS__*`)."""


class TenantUpdate(BaseModel):
    """The body of a tenant's PATCH (operator): what it names changes, the rest stays.
    Unknown fields (the id, the region) are refused."""

    model_config = _CLOSED

    name: _text(200) | None = None  # type: ignore[valid-type]
    limits: LimitsChange | None = None
    """The limits to change; a limit set to null goes back to its default."""


class Limits(BaseModel):
    """A tenant's limits in force: the operator's values, else the defaults."""

    model_config = _DOCS

    live_calls: Count
    """Calls live at once."""
    rtp_calls: Count
    """RTP/SRTP calls live at once."""
    announces_per_minute: Count
    """Calls announced in any 60 s."""


class Tenant(BaseModel):
    model_config = _DOCS

    id: str = Field(pattern=TENANT_ID.pattern)
    name: str
    region: str
    created_at: Timestamp
    """When the tenant was created."""
    limits: Limits


class TenantList(BaseModel):
    items: list[Tenant]


class TenantErasure(BaseModel):
    """The receipt of a tenant's erasure: its KEKs are destroyed, so nothing sealed under them
    can be opened again, then every object, recording and call record is deleted. The audit
    log is kept."""

    model_config = _DOCS

    tenant: str
    deleted_at: Timestamp
    """When the tenant was erased."""
    keys_destroyed: Literal[True]
    recordings_deleted: Count
    objects_shredded: Count
    bytes_deleted: Count
    """Bytes of sealed objects removed from the object store."""
    call_records_deleted: Count


TenantRole = Literal["admin", "pbx", "processor"]
"""The roles a tenant token can have; operator tokens are minted at `/v1/operator/tokens`."""

Lifetime = Annotated[
    str,
    AfterValidator(_lifetime),
    Field(
        json_schema_extra={"pattern": DURATION_PATTERN, "maxLength": 40},
        examples=["P90D", "PT1H"],
    ),
]
"""An ISO-8601 duration from the minting (`PnYnMnWnDTnHnMnS`), longer than zero and at most
`P1Y`."""


class BreakGlass(BaseModel):
    """Why the operator mints itself access to a tenant that has (or had) an admin."""

    model_config = _CLOSED

    reason: _text(MAX_REASON)  # type: ignore[valid-type]
    """Shown to the tenant: in its audit log (`token.break_glass`) and sent to its webhook."""


class TokenCreate(BaseModel):
    """A tenant token; unknown fields are refused. Operator tokens are minted at
    `/v1/operator/tokens`."""

    model_config = _CLOSED

    role: TenantRole
    break_glass: BreakGlass | None = None
    """Operator only. Needed for an admin or processor token once the tenant has had an
    admin token, revoked and expired ones included (else 403 `break_glass_required`); the
    token is audited as `token.break_glass`, sent to the tenant's webhook, expires within
    `PT1H`, and mints no token."""
    expires_in: Lifetime | None = None
    """How long the token lives; absent or null: until revoked (a break-glass token: `PT1H`,
    and no longer is accepted)."""


class OperatorTokenCreate(BaseModel):
    """An operator token; unknown fields are refused."""

    model_config = _CLOSED

    expires_in: Lifetime | None = None
    """How long the token lives; absent or null: until revoked."""


class Token(BaseModel):
    """A token's record; the secret itself is never shown again."""

    model_config = _DOCS

    id: str = Field(examples=["tok_3f9a1c2b4d5e6f70"])
    role: Role
    tenant: str | None
    """null for operator tokens"""
    created_at: Timestamp
    """When the token was minted."""
    created_by: str
    """The minting actor."""
    revoked_at: Timestamp | None
    """When the token was revoked; null if it was not."""
    expires_at: Timestamp | None
    """When the token stops working (refused from that instant on); null: never."""
    break_glass: bool
    """The operator's break-glass access to the tenant: it expires within `PT1H` and mints
    no token."""


class MintedToken(Token):
    token: str = Field(examples=["cv_5Jq0..."])
    """The secret, shown only in this answer: store it now."""


class TokenList(BaseModel):
    items: list[Token]


# --- instructions --------------------------------------------------------------------------


class InstructionsDocument(InstructionsDoc):
    """The body of an instructions PUT. PUT replaces the whole document: an omitted field
    takes its default (everything off), not the previous version's value. Unknown fields or
    invalid values are refused with 422 naming the field. ``version``, ``created_at`` and
    ``created_by`` are set by the server: accepted and ignored, so a GET answer can be sent
    back."""

    version: Any = None
    """Set by the server; accepted and ignored so a GET answer can be sent back."""
    created_at: Any = None
    """Set by the server; accepted and ignored so a GET answer can be sent back."""
    created_by: Any = None
    """Set by the server; accepted and ignored so a GET answer can be sent back."""


class Instructions(InstructionsDoc):
    """One immutable version of a tenant's documented instructions (the webhook secret
    shows as `<redacted>` when one is set)."""

    # Answers are open (the contract lets fields be added), and send every field.
    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="ignore",
        json_schema_serialization_defaults_required=True,
    )

    version: int = Field(ge=0)
    """Increases by one per PUT; 0 means the tenant never PUT instructions and the defaults
    (refuse every call) apply."""
    created_at: Timestamp | None
    """When this version was stored; null for version 0."""
    created_by: str | None
    """The token id that stored it; null for version 0."""


class InstructionsHistory(BaseModel):
    items: list[Instructions]


# --- calls ---------------------------------------------------------------------------------

AiFeature = Literal["transcript", "summary", "sentiment", "talk_listen", "topics"]
Direction = Literal["inbound", "outbound"]
Codec = Literal["pcmu", "pcma", "opus", "l16"]


class Decision(BaseModel):
    """What the instructions allowed for a call. Recording off with AI on is an AI-only call:
    its audio is purged after analysis."""

    model_config = _DOCS

    store_recording: bool
    ai: list[AiFeature]
    """The AI features that run on the call."""
    redact_audio: bool | Absent = None
    """Present (true) when the instructions redact the recording's audio
    (`ai.redaction.audio`): until the analysis has, the audio is not served (409
    `audio_not_redacted`)."""


class RtpCrypto(BaseModel):
    """A fresh SDES key per call and per track (RFC 4568 crypto attribute values)."""

    inbound: str = Field(pattern="^AES_CM_128_HMAC_SHA1_80 inline:[A-Za-z0-9+/]{40}$")
    outbound: str = Field(pattern="^AES_CM_128_HMAC_SHA1_80 inline:[A-Za-z0-9+/]{40}$")


class RtcpPorts(BaseModel):
    """RTCP ports (RTP port + 1): bound, counted, dropped."""

    inbound: int
    outbound: int


class RtpOffer(BaseModel):
    """rtp calls only: where each track's RTP goes and its SRTP key (null for plain RTP).
    The call ends on `POST /v1/calls/{call_id}/end`, after `rtp.timeout` without packets
    (also when none ever came: its ports go back), or at `calls.max_duration` (audio past it
    is dropped and counted as `max_duration` in `callvault_rtp_datagrams_total`)."""

    model_config = _DOCS

    host: str = Field(examples=["127.0.0.1"])
    """The node's RTP host: `CALLVAULT_RTP__ADVERTISE_HOST`, else `CALLVAULT_NODE__PUBLIC_HOST`,
    else `CALLVAULT_RTP__HOST`."""
    inbound: int
    """UDP port of the inbound track's RTP."""
    outbound: int
    """UDP port of the outbound track's RTP."""
    rtcp: RtcpPorts
    srtp: bool
    crypto: RtpCrypto | None


class AudioSocketOffer(BaseModel):
    """audiosocket calls only: where to connect, and the id to send in the 0x01 frame
    (Asterisk: `AudioSocket(<id>,<address>)`). The id is the stream's only credential: a
    secret, shown in this answer only and never again (the call id is refused in its place).
    While one connection carries the call another is refused (`already_attached`); a
    reconnect after a drop must come from the first connection's address. Both hold on
    every node sharing the catalog and across restarts."""

    model_config = _DOCS

    address: str = Field(examples=["127.0.0.1:9092"])
    """`host:port` of the AudioSocket listener of the node that answered (its public host
    when `CALLVAULT_NODE__PUBLIC_HOST` is set)."""
    id: str = Field(
        examples=["5f0c6f7e-3b1a-4d2c-9e8f-7a6b5c4d3e2f"],
        json_schema_extra={"format": "uuid"},
    )
    """A random UUID minted for this call."""


class Ingest(BaseModel):
    """Where to send the call's audio."""

    model_config = _DOCS

    websocket: Literal["/v1/ingest/twilio", "/v1/ingest/fork"] | None
    """The WebSocket path for twilio and fork calls."""
    websocket_url: str | Absent = Field(
        default=None, examples=["wss://gw2.example.net:8443/v1/ingest/twilio"]
    )
    """twilio and fork calls, when the node has a public host
    (`CALLVAULT_NODE__PUBLIC_HOST`): the full URL of that path on the node that answered,
    which takes the call (`ws://`, or `wss://` with TLS; the node's port)."""
    audiosocket: AudioSocketOffer | Absent = None
    """audiosocket calls; absent for other calls and when the AudioSocket listener is off."""
    rtp: RtpOffer | Absent = None


class Announced(BaseModel):
    """An accepted call."""

    model_config = _DOCS

    call_id: str
    recording_id: str = Field(examples=["rec_4f1c2a9b8e7d6c5b4a392817"])
    instructions_version: int | None
    """The version that allowed the call."""
    decision: Decision
    ingest: Ingest
    node: str = Field(examples=["gw2-5f0c6f7e"])
    """The id of the node that answered and takes the call (`CALLVAULT_NODE__ID`): `ingest`
    names its listeners, so a load balancer may send announcements to any node."""


class Call(BaseModel):
    """A call record (CDR); refused calls have one too."""

    model_config = ConfigDict(use_attribute_docstrings=True, populate_by_name=True)

    call_id: str
    tenant: str
    from_: str = Field(alias="from")
    to: str
    direction: Direction
    consent: Literal["granted", "denied", "not_asked"]
    transport: Literal["twilio", "fork", "audiosocket", "rtp"]
    codec: Codec
    sample_rate: int
    instructions_version: int | None
    decision: Decision
    refusal: RefusalCode | None
    """Why the call was refused; null if not."""
    started_at: Timestamp
    """When the call was announced."""
    ended_at: Timestamp | None
    """When the call ended; null while live."""


class CallPauseState(BaseModel):
    call_id: str
    paused: bool


# --- recordings ----------------------------------------------------------------------------


class Expiry(BaseModel):
    """When each data class's window under the tenant's current instructions ends (a changed
    window applies to stored recordings too). A legal hold keeps data past these times."""

    model_config = _DOCS

    recordings: Timestamp | None
    """When the audio's window ends; null while live or deleted."""
    transcripts: Timestamp | None
    """When the transcript's and analysis' window ends; null while live or deleted."""
    call_records: Timestamp | None
    """When the call record's window ends; null while the call is live."""


class Recording(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, populate_by_name=True)

    id: str = Field(examples=["rec_4f1c2a9b8e7d6c5b4a392817"])
    call_id: str
    tenant: str
    from_: str = Field(alias="from")
    to: str
    direction: Direction
    started_at: Timestamp
    """When the call started."""
    ended_at: Timestamp | None
    """When the recording ended; null while live."""
    duration_s: float | None = Field(ge=0)
    codec: Codec
    sample_rate: int
    tracks: list[Track]
    """The tracks that have stored audio."""
    instructions_version: int | None
    decision: Decision
    status: RecordingStatus
    """`recording` (live), then `recorded` (no AI instructed) or `processing` then `analyzed`
    or `failed`; `deleted` once retention has removed all of its content, or from the moment
    an erasure or the tenant's deletion is requested."""
    delete_reason: DeleteReason | None
    """Why it was deleted; null while it is not."""
    deleted_at: Timestamp | None
    """When its last content was deleted; null before (also while an erasure runs)."""
    expires_at: Timestamp | None
    """When retention deletes its last content; null while live, deleted or held."""
    expires: Expiry
    legal_hold: bool
    """An active legal hold covers the call: retention deletes nothing of it, and erasing it
    is refused with 409 `legal_hold`."""
    legal_holds: list[str]
    """The ids of the active legal holds that cover it, oldest first."""
    audio_purged: bool


class RecordingList(BaseModel):
    model_config = _DOCS

    items: list[Recording]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null at the end."""


class Segment(BaseModel):
    """One utterance of one track: `inbound` is the caller, `outbound` the agent."""

    model_config = _DOCS

    track: Track
    start: float = Field(ge=0)
    """Seconds from call start."""
    end: float = Field(ge=0)
    text: str


class RedactedSpan(BaseModel):
    """Where personal data was redacted: its type and time, never its value."""

    type: str = Field(examples=["card_number"])
    """`card_number`, `iban`, `phone_number`, `email`, `ro_cnp`, `person_name` or
    `postal_address`."""
    track: Track
    start: float = Field(ge=0)
    """Seconds from call start (of the words that said it, unpadded)."""
    end: float = Field(ge=0)


class Redaction(BaseModel):
    """What the instructions' `ai.redaction` removed (present only when instructed)."""

    model_config = _DOCS

    transcript: bool
    """Whether the transcript (and the analysis computed from it) holds tags such as
    `[CARD_NUMBER]` in place of what was found."""
    audio: bool
    """Whether the stored audio was redacted too."""
    entities: list[RedactedSpan]
    """In time order."""


class Transcript(BaseModel):
    model_config = _DOCS

    language: str
    """ISO 639-1 code of the call."""
    model: str
    """The Whisper model that transcribed."""
    duration_s: float | Absent = None
    segments: list[Segment]
    """In time order."""
    redaction: Redaction | Absent = None


class Score(BaseModel):
    score: float = Field(ge=-1, le=1)
    label: Literal["negative", "neutral", "positive"]


class TrackScores(BaseModel):
    """Per track (only tracks that spoke)."""

    inbound: Score | Absent = None
    outbound: Score | Absent = None


class Sentiment(BaseModel):
    """Lexicon sentiment (English and Romanian) with negation, intensifiers and but-clauses,
    plus intent cues, so a polite cancellation reads negative."""

    model_config = _DOCS

    method: str | Absent = Field(default=None, examples=["lexicon+cues"])
    overall: Score
    tracks: TrackScores
    segments: list[dict[str, Any]] | Absent = None
    timeline: list[dict[str, Any]] | Absent = None
    cues: list[dict[str, Any]] | Absent = None
    """Churn or complaint phrases that made a segment negative however politely it was
    worded (`cancel`, `refund`, `reziliez`, ...)."""


class TalkTrack(BaseModel):
    talk_s: float
    talk_share: float
    wpm: int
    longest_monologue_s: float
    turns: int | Absent = None


class TalkTracks(BaseModel):
    """From each track's voice activity (Silero VAD)."""

    inbound: TalkTrack | Absent = None
    outbound: TalkTrack | Absent = None


class TalkListen(BaseModel):
    model_config = _DOCS

    tracks: TalkTracks
    talk_to_listen: float | None
    """Outbound (agent) talk / inbound (caller)."""
    silence_s: float
    overlap_s: float
    """Both talking at once."""
    interruptions: int
    interruptions_by_track: dict[str, Any] | Absent = None


class KeyPhrase(BaseModel):
    phrase: str | Absent = None
    count: int | Absent = None
    score: float | Absent = None


class CategoryMatch(BaseModel):
    name: str | Absent = None
    count: int | Absent = None
    phrases: list[str] | Absent = None
    tracks: dict[str, Any] | Absent = None
    first_at: float | Absent = None
    evidence: list[dict[str, Any]] | Absent = None
    """Per rule of the category, what matched: the rule's index and type, the track, the
    time (`start`, `end`) and the segment's `text`, or the measured `value`."""


class Topics(BaseModel):
    model_config = _DOCS

    key_phrases: list[KeyPhrase]
    categories: list[CategoryMatch]
    """The tenant's categories (`ai.categories`) that matched."""


class Analysis(BaseModel):
    """Only the features the call's instructions asked for; the keys of the others are
    absent. Returned as the AI worker sealed it."""

    model_config = _DOCS

    language: str
    model: str
    duration_s: float | Absent = None
    summary: str | Absent = None
    """3-5 sentences of the call, speaker-labelled (extractive)."""
    sentiment: Sentiment | Absent = None
    talk_listen: TalkListen | Absent = None
    topics: Topics | Absent = None
    redaction: Redaction | Absent = None


# --- audit ---------------------------------------------------------------------------------


class AuditEvent(BaseModel):
    model_config = _DOCS

    seq: int = Field(ge=1)
    """1, 2, 3, ... per tenant."""
    at: Timestamp
    actor: str
    """Who: a token id, `gateway`, `cli`, ..."""
    action: str = Field(examples=["audio.read", "ai.purged"])
    object: str | None
    """What it concerned."""
    detail: dict[str, Any]
    """Ids and small metadata, no content."""
    prev_hash: str
    """The previous event's hash."""
    hash: str
    """HMAC-SHA256, under the tenant's audit key, of the previous hash and this event's
    canonical JSON."""


class AuditPage(BaseModel):
    model_config = _DOCS

    items: list[AuditEvent]
    next_since: int | None
    """Pass as `since` for the next page; null at the end."""


class AuditCheck(BaseModel):
    model_config = _DOCS

    ok: bool
    events: int
    """How many events the log holds."""
    broken_at: int | Absent = None
    """When not ok: the first event altered, removed, moved, or cut off behind the latest
    checkpoint (absent when no event is to blame: a forged checkpoint)."""
    reason: AuditReason | Absent = None
    """When not ok: which check failed."""
    checkpoint: int | Absent = None
    """The sequence number of the latest checkpoint the log was checked against."""


class AuditCheckpoint(BaseModel):
    model_config = _DOCS

    seq: int = Field(ge=1)
    """The chain's head when the checkpoint was made."""
    hash: str
    """The head event's hash then."""
    at: str = Field(examples=["2026-11-27T10:05:00.000000Z"])
    """When it was made, exactly as signed (UTC, microseconds, `Z`)."""
    key_id: str = Field(examples=["ed25519-3f1c2a9b8e7d6c5b"])
    """The signing key (`GET /v1/audit/public-key`)."""
    signature: str
    """Base64 Ed25519 signature of `callvault-audit-checkpoint/v1` and a newline, then the
    canonical JSON of `{at, hash, key_id, seq, tenant}`."""


class AuditCheckpointList(BaseModel):
    model_config = _DOCS

    items: list[AuditCheckpoint]
    next_since: int | None
    """Pass as `since` for the next page; null at the end."""


class AuditPublicKey(BaseModel):
    model_config = _DOCS

    algorithm: Literal["Ed25519"]
    key_id: str = Field(examples=["ed25519-3f1c2a9b8e7d6c5b"])
    """`ed25519-` and the first 16 hex digits of SHA-256 of the raw public key."""
    public_key: str
    """The raw 32-byte public key, base64."""
    public_key_pem: str
    """The same key as a PEM `PUBLIC KEY` (for OpenSSL)."""
