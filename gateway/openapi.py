"""The OpenAPI 3.1 document of callvault's external contract (../shared/API.md).

PBX vendors, tenant admins and processors program against this document, so it must say
exactly what the handlers do. It is built here, in code, from the same constants the
handlers validate with (roles, refusal codes, instruction defaults, transports and codecs,
the tenant id and call id patterns, the AudioSocket frame kinds), so a change there changes
the document; ``tests/unit/test_openapi.py`` then fails until the checked-in copy is
regenerated, and checks that every route the app registers is documented and vice versa.

The checked-in ``gateway/openapi.json`` is what ``GET /v1/openapi.json`` serves; it is
written by ``python -m gateway.openapi > gateway/openapi.json``. Serving a file rather than
building the document per request keeps the served contract reviewable in diffs.

The document is assembled from small helpers (a schema per resource, one error-response
helper, one operation helper) rather than one literal, so each piece can be read next to the
handler it describes.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from importlib.metadata import version
from typing import Any

from gateway.api.calls import WEBSOCKET_PATHS
from gateway.api.rights import MAX_HOLD_CALLS, MAX_REASON
from gateway.api.tenants import TENANT_ID, TENANT_ROLES
from gateway.calls import (
    CALL_ID_PATTERN,
    RTP_CODEC_RATES,
    TRANSPORT_CODECS,
    TRANSPORT_RATES,
    CallAnnouncement,
    RtpPayloadTypes,
)
from gateway.ingest import audiosocket
from gateway.ingest.events import DTMF_DIGITS, MAX_MESSAGE, Track
from gateway.policy import RefusalCode
from gateway.settings import AudioSocketSettings
from storage.catalog.records import RECORDING_STATUSES, ROLES
from storage.instructions import (
    AI_FEATURES,
    MAX_CATEGORIES,
    MAX_CATEGORY_PHRASES,
    MAX_EXCLUDE_NUMBERS,
    MAX_PHRASE_CHARS,
    MAX_WEBHOOK_URL_CHARS,
    REDACTED,
    WEBHOOK_SECRET_CHARS,
    default_instructions,
)
from storage.retention import DeleteReason

__all__ = [
    "DURATION_PATTERN",
    "ERROR_CODES",
    "REFUSAL_CODES",
    "build_document",
    "main",
    "render",
]

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"

REFUSAL_CODES: tuple[str, ...] = typing.get_args(RefusalCode)
"""The policy's refusal codes (403 on announcement, close reason 1008 on ingest)."""

# The ECMA-262 twin of storage.instructions' duration regex: the same designators and digits,
# plus the two rules that function checks in code (at least one component; a "T" needs a
# time component after it), written as lookaheads. The 100-year cap and "not zero" cannot be
# said in a pattern; the Duration schema's description says them.
DURATION_PATTERN = (
    r"^P(?!$)(?:[0-9]+Y)?(?:[0-9]+M)?(?:[0-9]+W)?(?:[0-9]+D)?"
    r"(?:T(?=[0-9])(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+(?:\.[0-9]+)?S)?)?$"
)

ROLE_WORDS: dict[str, str] = {
    "operator": "runs the gateway: tenants and tokens, never tenant audio or transcripts",
    "admin": "a tenant's administrator: instructions, tokens, recordings including audio, "
    "legal holds, erasure and export",
    "pbx": "a tenant's PBX: announces calls, pushes audio, pauses, resumes and ends calls",
    "processor": "a tenant's downstream system: lists recordings, reads transcripts (no audio)",
}

# Every error code an operation documents: (when it happens, an example message). The
# examples show the shape of real messages; the wording of messages is not part of the
# contract, the codes are.
ERROR_CODES: dict[str, tuple[str, str]] = {
    "bad_json": ("The body is not valid JSON.", "The body is not valid JSON."),
    "bad_request": (
        "A field is missing, of the wrong type, or out of range.",
        "name must be a non-empty string of at most 200 characters.",
    ),
    "bad_role": (
        "The role is not one a tenant token can have.",
        "role must be one of admin, pbx, processor.",
    ),
    "bad_query": (
        "A query parameter is malformed (a time without a zone, a limit out of range, a cursor "
        "this API did not hand out, a number that is not a phone number).",
        "limit must be an integer from 1 to 200.",
    ),
    "invalid_call": (
        "The announcement has an unknown field, a missing field or an invalid value.",
        "from: Field required.",
    ),
    "unsupported_codec": (
        "The codec or sample rate is not one the transport carries.",
        "codec: twilio carries pcmu, not opus.",
    ),
    "not_websocket": (
        "The request is not a WebSocket upgrade (the code is aiohttp's reason, `bad_request`).",
        "Bad Request",
    ),
    "unauthorized": (
        "No token, a malformed Authorization header, or an unknown or revoked token (the "
        "answer never says which).",
        "A bearer token is required.",
    ),
    "forbidden": (
        "The token's role may not do this, or the endpoint needs a tenant token.",
        "A processor token may not do this (needs admin).",
    ),
    "recording_not_instructed": (
        "The tenant's instructions enable neither recording nor any AI feature.",
        "The tenant's instructions version 3 enable neither recording nor any AI feature; the "
        "tenant admin must enable recording or an AI feature before calls are accepted.",
    ),
    "unencrypted_transport": (
        "The call would send plain RTP (`srtp` false) and the instructions do not set "
        "`transport.allow_unencrypted_rtp`.",
        "The call's audio would arrive as plain RTP and the tenant's instructions require "
        "SRTP; announce it with srtp true, or the tenant admin must set "
        "transport.allow_unencrypted_rtp.",
    ),
    "consent_missing": (
        "Consent is required and the call's consent is `denied` or `not_asked`.",
        "The tenant's instructions require consent and the call's consent is 'not_asked'; "
        "announce the call with consent 'granted' only once the parties have agreed.",
    ),
    "number_excluded": (
        "A party of the call is on the tenant's `exclude_numbers`.",
        "A party of this call is on the tenant's exclude_numbers list, so the call is neither "
        "recorded nor analysed; this is expected, do not retry.",
    ),
    "ai_only": (
        "The call was accepted for AI processing only: no recording exists to export (the "
        "code is `forbidden`).",
        "The tenant's instructions allowed AI processing of this call, not a recording.",
    ),
    "not_found": (
        "The resource is unknown, or belongs to another tenant (never 403 for that).",
        "Tenant 'acme' not found.",
    ),
    "conflict": (
        "The request conflicts with the current state (an id already taken, a call that is "
        "not live, a recording still in progress).",
        "Tenant 'acme' already exists.",
    ),
    "recording_deleted": (
        "The recording was deleted (retention, erasure or tenant deletion).",
        "Recording 'rec_4f1c2a9b8e7d6c5b4a392817' was deleted.",
    ),
    "audio_purged": (
        "The audio was purged after analysis (an AI-only call).",
        "The audio of 'rec_4f1c2a9b8e7d6c5b4a392817' was purged after analysis.",
    ),
    "not_instructed": (
        "The instructions that accepted the call did not ask for this (a transcript, or "
        "any analysis feature).",
        "The instructions that accepted recording 'rec_4f1c2a9b8e7d6c5b4a392817' did not "
        "ask for a transcript.",
    ),
    "analysis_pending": (
        "The call is live or its analysis has not finished.",
        "Recording 'rec_4f1c2a9b8e7d6c5b4a392817' is processing; its transcript is not ready yet.",
    ),
    "analysis_failed": (
        "Every attempt of the analysis failed; the message gives the reason.",
        "The analysis of recording 'rec_4f1c2a9b8e7d6c5b4a392817' failed: ...",
    ),
    "transcript_deleted": (
        "The transcript was deleted (its retention window ended).",
        "The transcript of 'rec_4f1c2a9b8e7d6c5b4a392817' was deleted.",
    ),
    "analysis_deleted": (
        "The analysis was deleted (its retention window ended).",
        "The analysis of 'rec_4f1c2a9b8e7d6c5b4a392817' was deleted.",
    ),
    "invalid_instructions": (
        "The instructions have an unknown field or an invalid value; `field` names it as a "
        "dotted path.",
        "retention.recordings: 'P90' is not an ISO-8601 duration such as 'P90D', 'PT30S' or "
        "'P1Y2M10DT2H30M'",
    ),
    "catalog_unavailable": (
        "The catalog database failed or could not be reached.",
        "The catalog database could not be reached.",
    ),
    "storage_unavailable": (
        "The object store failed or could not be reached, or (audio export) part of the "
        "recording is still being published from the spool after a store outage.",
        "The object store could not be reached (SlowDown).",
    ),
    "audio_deleted": (
        "The audio was deleted (its retention window ended); the transcript and analysis may "
        "still be there.",
        "The audio of 'rec_4f1c2a9b8e7d6c5b4a392817' was deleted: its retention window ended.",
    ),
    "legal_hold": (
        "A legal hold covers data the request would delete (a call, a number, or, for a tenant "
        "deletion, any of the tenant's data); `hold` names the hold to release first. Nothing "
        "was deleted.",
        "Legal hold 'hold_9c2e4a1b7d3f5e6a8b0c1d2e' covers call 'call-1'; release it first.",
    ),
    "hold_released": (
        "The legal hold was released already.",
        "Legal hold 'hold_9c2e4a1b7d3f5e6a8b0c1d2e' was released already.",
    ),
    "recording_in_progress": (
        "A recording to erase is still being recorded (its call has not finished ending); "
        "nothing was deleted. Retry shortly.",
        "Recording 'rec_4f1c2a9b8e7d6c5b4a392817' is still being recorded; end the call first.",
    ),
    "too_large": (
        "The recording is too long for one WAV file (RIFF sizes are 32-bit).",
        "Recording 'rec_4f1c2a9b8e7d6c5b4a392817' is too long for one WAV file.",
    ),
    "rtp_ports_exhausted": (
        "No RTP port pair is free for the call's tracks; the call is ended empty.",
        "No RTP port pair is free; retry later, or the operator must widen rtp.port_min..port_max.",
    ),
    "rtp_unavailable": (
        "RTP ports cannot be opened (out of file descriptors, or `rtp.host` is not an "
        "address of this host); the call is ended empty.",
        "RTP ports cannot be opened: Too many open files.",
    ),
    "not_ready": (
        "The catalog or the object store does not answer.",
        "store is not reachable: the object store could not be reached.",
    ),
}

HOLD_EXAMPLE = "hold_9c2e4a1b7d3f5e6a8b0c1d2e"
"""A legal hold id in examples (the `hold` field of a 409 `legal_hold`)."""

# Codes whose wire value differs from their key above: a 403 and aiohttp's own 400 share
# a code with others but are documented separately because the cause differs.
_WIRE_CODE = {"ai_only": "forbidden", "not_websocket": "bad_request"}


# --- small builders -----------------------------------------------------------------------


def _ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null (OpenAPI 3.1 spells nullability as a type union)."""
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _obj(
    properties: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    closed: bool = False,
    description: str | None = None,
) -> Schema:
    """An object schema. ``closed`` for request bodies the server refuses unknown keys of;
    response objects stay open, since the contract lets fields be added."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _time(description: str) -> Schema:
    return {"type": "string", "format": "date-time", "description": description}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": _json(schema)}


def _literal_values(annotation: Any) -> list[str]:
    """The strings of a ``Literal[...]`` annotation, also inside ``Literal[...] | None``."""
    values: list[str] = []
    for arg in typing.get_args(annotation):
        if isinstance(arg, str):
            values.append(arg)
        elif arg is not type(None):
            values.extend(_literal_values(arg))
    return values


def _announcement_enum(field: str) -> list[str]:
    return _literal_values(CallAnnouncement.model_fields[field].annotation)


def _code_list(codes: Sequence[str]) -> str:
    return "\n".join(f"- `{_WIRE_CODE.get(c, c)}`: {ERROR_CODES[c][0]}" for c in codes)


def error_response(status: int, *codes: str) -> Schema:
    """An error response of ``status`` that can carry ``codes``: the shared Error schema, the
    codes listed in the description, and one example per code."""
    examples: dict[str, Schema] = {}
    for code in codes:
        when, message = ERROR_CODES[code]
        value: dict[str, str] = {"error": _WIRE_CODE.get(code, code), "message": message}
        if code == "invalid_instructions":
            value["field"] = "retention.recordings"
        elif code == "legal_hold":
            value["hold"] = HOLD_EXAMPLE
        examples[code] = {"summary": when, "value": value}
    return {
        "description": f"{HTTPStatus(status).phrase}:\n\n{_code_list(codes)}",
        "content": {"application/json": {"schema": _ref("Error"), "examples": examples}},
    }


def _roles_text(roles: Sequence[str]) -> str:
    if not roles:
        return "No token needed."
    return "Roles: " + ", ".join(f"`{r}`" for r in roles) + "."


def _operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    roles: Sequence[str],
    description: str,
    responses: Mapping[str, Schema],
    parameters: Sequence[Schema] = (),
    body: Schema | None = None,
    public: bool = False,
) -> Schema:
    """One operation; the roles go into the description (for readers) and ``x-roles`` (for
    tools). ``public`` operations need no token; others inherit the document's bearerAuth."""
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{description}\n\n{_roles_text(roles)}",
        "tags": [tag],
        "x-roles": list(roles),
        "responses": dict(responses),
    }
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if public:
        operation["security"] = []
    return operation


def _authed(*extra: tuple[str, Schema]) -> dict[str, Schema]:
    """An authenticated operation's responses: ``extra`` (status, response) pairs, plus the
    401 and 503 that every one of them can give, in status order."""
    responses: dict[str, Schema] = dict(extra)
    responses.setdefault("401", _ref("Unauthorized", "responses"))
    responses.setdefault("503", _ref("Unavailable", "responses"))
    return dict(sorted(responses.items()))


_FORBIDDEN = ("403", _ref("Forbidden", "responses"))
_NOT_FOUND = ("404", _ref("NotFound", "responses"))


# --- schemas ------------------------------------------------------------------------------


def error_schema() -> Schema:
    return _obj(
        {
            "error": {
                "type": "string",
                "pattern": "^[a-z][a-z0-9_]*$",
                "description": "Stable snake_case code; program against this.",
            },
            "message": {"type": "string", "description": "A human sentence; may change."},
            "field": {
                "type": "string",
                "description": "Only with 422 `invalid_instructions`: the offending field as a "
                "dotted path (`retention.recordings`, `exclude_numbers.2`).",
            },
            "hold": {
                "type": "string",
                "description": "Only with 409 `legal_hold`: the id of the legal hold that must "
                "be released first.",
                "examples": [HOLD_EXAMPLE],
            },
        },
        required=("error", "message"),
        description="Every error answer of the HTTP API.",
    )


def tenant_schema() -> Schema:
    return _obj(
        {
            "id": {"type": "string", "pattern": TENANT_ID.pattern},
            "name": {"type": "string"},
            "region": {"type": "string"},
            "created_at": _time("When the tenant was created."),
        },
        required=("id", "name", "region", "created_at"),
    )


def tenant_create_schema() -> Schema:
    return _obj(
        {
            "id": {
                "type": "string",
                "pattern": TENANT_ID.pattern,
                "description": "2-63 lowercase letters, digits or dashes; never reusable.",
                "examples": ["acme"],
            },
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "region": {"type": "string", "minLength": 1, "maxLength": 32, "default": "eu"},
        },
        required=("id", "name"),
        closed=True,
    )


def tenant_erasure_schema() -> Schema:
    return _obj(
        {
            "tenant": {"type": "string"},
            "deleted_at": _time("When the tenant was erased."),
            "keys_destroyed": {"type": "boolean", "const": True},
            "recordings_deleted": {"type": "integer", "minimum": 0},
            "objects_shredded": {"type": "integer", "minimum": 0},
            "bytes_deleted": {
                "type": "integer",
                "minimum": 0,
                "description": "Bytes of sealed objects removed from the object store.",
            },
            "call_records_deleted": {"type": "integer", "minimum": 0},
        },
        required=(
            "tenant",
            "deleted_at",
            "keys_destroyed",
            "recordings_deleted",
            "objects_shredded",
            "bytes_deleted",
            "call_records_deleted",
        ),
        description="The receipt of a tenant's erasure: its KEKs are destroyed, so nothing "
        "sealed under them can be opened again, then every object, recording and call record "
        "is deleted. The audit log is kept.",
    )


def token_schema() -> Schema:
    return _obj(
        {
            "id": {"type": "string", "examples": ["tok_3f9a1c2b4d5e6f70"]},
            "role": {"type": "string", "enum": list(ROLES)},
            "tenant": _nullable({"type": "string", "description": "null for operator tokens"}),
            "created_at": _time("When the token was minted."),
            "created_by": {"type": "string", "description": "The minting actor."},
            "revoked_at": _nullable(_time("When the token was revoked; null while active.")),
        },
        required=("id", "role", "tenant", "created_at", "created_by", "revoked_at"),
        description="A token's record; the secret itself is never shown again.",
    )


def minted_token_schema() -> Schema:
    return {
        "allOf": [
            _ref("Token"),
            _obj(
                {
                    "token": {
                        "type": "string",
                        "description": "The secret, shown only in this answer: store it now.",
                        "examples": ["cv_5Jq0..."],
                    }
                },
                required=("token",),
            ),
        ]
    }


def token_create_schema() -> Schema:
    return _obj(
        {"role": {"type": "string", "enum": sorted(TENANT_ROLES)}},
        required=("role",),
        description="Operator tokens are minted with the CLI, not here.",
    )


def duration_schema() -> Schema:
    return {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 40,
        "description": "ISO-8601 duration counted from the call's end: `PnYnMnWnDTnHnMnS`, "
        "integer components, a fraction only on seconds, uppercase designators, no sign. "
        "Must be longer than zero and at most 100 years.",
        "examples": ["P90D", "PT30S", "P3Y"],
    }


def instruction_section_schemas() -> dict[str, Schema]:
    """The sections of the instructions document, each with its defaults (all off)."""
    defaults = default_instructions().document()
    ai_words = {
        "transcript": "Transcribe the call.",
        "summary": "Summarize the transcript.",
        "sentiment": "Sentiment overall, per track and over time.",
        "talk_listen": "Talk/listen ratio, talk time, monologues, overlaps, interruptions.",
        "topics": "Key phrases and matched categories.",
    }
    ai_properties: dict[str, Schema] = {
        feature: {"type": "boolean", "default": defaults["ai"][feature], "description": words}
        for feature, words in ((f, ai_words[f]) for f in AI_FEATURES)
    }
    ai_properties["language"] = {
        "type": "string",
        "pattern": "^(auto|[a-z]{2})$",
        "default": defaults["ai"]["language"],
        "description": "`auto` or a two-letter ISO 639-1 code for transcription.",
    }
    ai_properties["categories"] = {
        "type": "object",
        "maxProperties": MAX_CATEGORIES,
        "propertyNames": {"pattern": "^[a-z0-9_]{1,40}$"},
        "additionalProperties": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_CATEGORY_PHRASES,
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PHRASE_CHARS,
                "description": "Kept as written, surrounding whitespace removed; no control "
                "characters.",
            },
        },
        "default": defaults["ai"]["categories"],
        "description": "The tenant's topic categories: a name (1 to 40 of `a-z`, `0-9`, `_`) "
        f"mapped to 1 to {MAX_CATEGORY_PHRASES} phrases; a call whose transcript contains a "
        "phrase is in the category (reported by `topics`). Duplicate phrases in a category "
        "are removed.",
        "examples": [{"cancellation": ["cancel", "terminate"], "billing": ["invoice"]}],
    }
    shortest, longest = WEBHOOK_SECRET_CHARS
    retention_words = {
        "recordings": "How long recordings' audio is kept.",
        "transcripts": "How long transcripts and analysis are kept.",
        "call_records": "How long call records (CDRs) are kept.",
    }
    return {
        "RecordingRule": _obj(
            {
                "enabled": {
                    "type": "boolean",
                    "default": defaults["recording"]["enabled"],
                    "description": "Store call audio as a recording.",
                }
            },
            closed=True,
        ),
        "ConsentRule": _obj(
            {
                "required": {
                    "type": "boolean",
                    "default": defaults["consent"]["required"],
                    "description": "Accept a call only with consent `granted`.",
                }
            },
            closed=True,
        ),
        "AiRule": _obj(ai_properties, closed=True),
        "TransportRule": _obj(
            {
                "allow_unencrypted_rtp": {
                    "type": "boolean",
                    "default": defaults["transport"]["allow_unencrypted_rtp"],
                    "description": "Accept rtp calls announced with `srtp` false (plain RTP).",
                }
            },
            closed=True,
        ),
        "RetentionRule": _obj(
            {
                name: {
                    "allOf": [_ref("Duration")],
                    "default": defaults["retention"][name],
                    "description": words,
                }
                for name, words in retention_words.items()
            },
            closed=True,
        ),
        "WebhookRule": _obj(
            {
                "url": {
                    "type": ["string", "null"],
                    "format": "uri",
                    "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
                    "maxLength": MAX_WEBHOOK_URL_CHARS,
                    "default": defaults["webhook"]["url"],
                    "description": "Where events (`analysis.completed`, `analysis.failed`, "
                    "`recording.deleted`) are POSTed as JSON: http or https, a host, no "
                    "user name or password, no fragment. null: no webhook.",
                },
                "secret": {
                    "oneOf": [
                        {
                            "type": "string",
                            # Not a control character, and longer than REDACTED, so the
                            # branches never overlap.
                            "pattern": f"^[^\\x00-\\x1f\\x7f-\\x9f]{{{shortest},{longest}}}$",
                        },
                        {"const": REDACTED},
                        {"type": "null"},
                    ],
                    "default": defaults["webhook"]["secret"],
                    "description": f"The HMAC-SHA256 key of the `Callvault-Signature` header, "
                    f"{shortest} to {longest} characters; required with `url`. Write-only: "
                    f"GET shows `{REDACTED}` when one is set, and a PUT that sends "
                    f"`{REDACTED}` keeps the current secret.",
                },
            },
            closed=True,
            description="Signed event notifications (ids and metadata, never content).",
        ),
    }


def _document_properties() -> dict[str, Schema]:
    defaults = default_instructions().document()
    return {
        "recording": {**_ref("RecordingRule"), "default": defaults["recording"]},
        "consent": {**_ref("ConsentRule"), "default": defaults["consent"]},
        "ai": {**_ref("AiRule"), "default": defaults["ai"]},
        "retention": {**_ref("RetentionRule"), "default": defaults["retention"]},
        "transport": {**_ref("TransportRule"), "default": defaults["transport"]},
        "webhook": {**_ref("WebhookRule"), "default": defaults["webhook"]},
        "exclude_numbers": {
            "type": "array",
            "items": {
                "type": "string",
                "description": "International format: `+` then 6 to 15 digits; spaces, "
                "dashes, dots and parentheses are removed before storing.",
                "examples": ["+40712345678", "+40 712-345-678"],
            },
            "maxItems": MAX_EXCLUDE_NUMBERS,
            "default": defaults["exclude_numbers"],
            "description": "Numbers never recorded nor analysed; either party matches. "
            "Stored normalised and without duplicates.",
        },
    }


def instructions_document_schema() -> Schema:
    ignored = "Set by the server; accepted and ignored so a GET answer can be sent back."
    return _obj(
        {
            **_document_properties(),
            "version": {"description": ignored},
            "created_at": {"description": ignored},
            "created_by": {"description": ignored},
        },
        closed=True,
        description="The body of an instructions PUT. PUT replaces the whole document: an "
        "omitted field takes its default (everything off), not the previous version's value. "
        "Unknown fields or invalid values are refused with 422 naming the field.",
    )


def instructions_schema() -> Schema:
    properties = {
        "version": {
            "type": "integer",
            "minimum": 0,
            "description": "Increases by one per PUT; 0 means the tenant never PUT "
            "instructions and the defaults (refuse every call) apply.",
        },
        "created_at": _nullable(_time("When this version was stored; null for version 0.")),
        "created_by": _nullable(
            {"type": "string", "description": "The token id that stored it; null for 0."}
        ),
        **_document_properties(),
    }
    return _obj(
        properties,
        required=tuple(properties),
        description="One immutable version of a tenant's documented instructions.",
    )


def decision_schema() -> Schema:
    return _obj(
        {
            "store_recording": {"type": "boolean"},
            "ai": {
                "type": "array",
                "items": {"type": "string", "enum": list(AI_FEATURES)},
                "description": "The AI features that run on the call.",
            },
        },
        required=("store_recording", "ai"),
        description="What the instructions allowed for a call. Recording off with AI on is "
        "an AI-only call: its audio is purged after analysis.",
    )


def call_announcement_schema() -> Schema:
    codecs = "; ".join(f"{t}: {', '.join(c)}" for t, c in TRANSPORT_CODECS.items())
    rates = "; ".join(f"{t}: {', '.join(map(str, r))}" for t, r in TRANSPORT_RATES.items())
    fields = CallAnnouncement.model_fields
    return _obj(
        {
            "call_id": _nullable(
                {
                    "type": "string",
                    "pattern": CALL_ID_PATTERN,
                    "description": "Optional, else a UUID is generated. An AudioSocket call "
                    "id must be a UUID (Asterisk names the call by it).",
                }
            ),
            "from": {"type": "string", "minLength": 1, "maxLength": 64},
            "to": {"type": "string", "minLength": 1, "maxLength": 64},
            "direction": {
                "type": "string",
                "enum": _announcement_enum("direction"),
                "default": fields["direction"].default,
            },
            "consent": {
                "type": "string",
                "enum": _announcement_enum("consent"),
                "default": fields["consent"].default,
                "description": "`denied` and `not_asked` are refused when consent is required.",
            },
            "transport": {"type": "string", "enum": _announcement_enum("transport")},
            "codec": _nullable(
                {
                    "type": "string",
                    "enum": [*_announcement_enum("codec"), None],
                    "description": f"Default: the transport's first. Carried: {codecs}.",
                }
            ),
            "sample_rate": _nullable(
                {
                    "type": "integer",
                    "description": f"Hz. Default: the transport's first. Carried: {rates}.",
                }
            ),
            "srtp": _nullable(
                {
                    "type": "boolean",
                    "description": "rtp only. Default true: the gateway hands out an SDES key "
                    "per track. false (plain RTP) needs the instructions' "
                    "`transport.allow_unencrypted_rtp`, else 403 `unencrypted_transport`.",
                }
            ),
            "payload_types": _nullable(
                _obj(
                    {
                        "opus": _nullable(
                            {
                                "type": "integer",
                                "minimum": 96,
                                "maximum": 127,
                                "description": "Opus's dynamic payload type. Default: any "
                                "dynamic type but the telephone events'.",
                            }
                        ),
                        "telephone_event": {
                            "type": "integer",
                            "minimum": 96,
                            "maximum": 127,
                            "default": RtpPayloadTypes.model_fields["telephone_event"].default,
                            "description": "RFC 4733 telephone events' payload type (DTMF: "
                            "counted, never stored).",
                        },
                    },
                    closed=True,
                    description="rtp only: the dynamic payload types the PBX negotiated.",
                )
            ),
        },
        required=("from", "to", "transport"),
        closed=True,
        description="The body of a call announcement; unknown fields are refused so a "
        "misspelt field cannot silently take its default.",
    )


def announced_schema() -> Schema:
    return _obj(
        {
            "call_id": {"type": "string"},
            "recording_id": {"type": "string", "examples": ["rec_4f1c2a9b8e7d6c5b4a392817"]},
            "instructions_version": _nullable(
                {"type": "integer", "description": "The version that allowed the call."}
            ),
            "decision": _ref("Decision"),
            "ingest": _obj(
                {
                    "websocket": _nullable(
                        {
                            "type": "string",
                            "enum": [*WEBSOCKET_PATHS.values(), None],
                            "description": "The WebSocket path for twilio and fork calls.",
                        }
                    ),
                    "audiosocket": {
                        "type": "string",
                        "description": "`host:port` of the AudioSocket listener; absent when "
                        "it is off.",
                        "examples": ["127.0.0.1:9092"],
                    },
                    "rtp": _ref("RtpOffer"),
                },
                required=("websocket",),
                description="Where to send the call's audio.",
            ),
        },
        required=("call_id", "recording_id", "instructions_version", "decision", "ingest"),
        description="An accepted call.",
    )


def rtp_offer_schema() -> Schema:
    track_ports = {
        track: {"type": "integer", "description": f"UDP port of the {track} track's RTP."}
        for track in typing.get_args(Track)
    }
    sdes = {
        "type": "string",
        "pattern": "^AES_CM_128_HMAC_SHA1_80 inline:[A-Za-z0-9+/]{40}$",
        "description": "The SDES crypto attribute value (RFC 4568): master key and salt.",
    }
    return _obj(
        {
            "host": {"type": "string", "examples": ["127.0.0.1"]},
            **track_ports,
            "rtcp": _obj(
                {track: {"type": "integer"} for track in typing.get_args(Track)},
                required=typing.get_args(Track),
                description="RTCP ports (RTP port + 1): bound, counted, dropped.",
            ),
            "srtp": {"type": "boolean"},
            "crypto": _nullable(
                _obj(
                    {track: sdes for track in typing.get_args(Track)},
                    required=typing.get_args(Track),
                    description="A fresh key per call and per track; null for plain RTP.",
                )
            ),
        },
        required=("host", *typing.get_args(Track), "rtcp", "srtp", "crypto"),
        description="rtp calls only: where each track's RTP goes and its SRTP key. Payload "
        "types: 0 PCMU, 8 PCMA, a dynamic one for Opus; 13 (comfort noise) is ignored. "
        "Clock rates: "
        + ", ".join(f"{codec} {rate} Hz" for codec, rate in RTP_CODEC_RATES.items())
        + ". The call ends on `POST /v1/calls/{call_id}/end` or after `rtp.timeout` (30 s) "
        "without packets; its ports then return to the pool.",
    )


def _party_properties() -> dict[str, Schema]:
    return {
        "call_id": {"type": "string"},
        "tenant": {"type": "string"},
        "from": {"type": "string"},
        "to": {"type": "string"},
        "direction": {"type": "string", "enum": _announcement_enum("direction")},
    }


def call_schema() -> Schema:
    properties = {
        **_party_properties(),
        "consent": {"type": "string", "enum": _announcement_enum("consent")},
        "transport": {"type": "string", "enum": _announcement_enum("transport")},
        "codec": {"type": "string", "enum": _announcement_enum("codec")},
        "sample_rate": {"type": "integer"},
        "instructions_version": _nullable({"type": "integer"}),
        "decision": _ref("Decision"),
        "refusal": _nullable(
            {**_ref("RefusalCode"), "description": "Why the call was refused; null if not."}
        ),
        "started_at": _time("When the call was announced."),
        "ended_at": _nullable(_time("When the call ended; null while live.")),
    }
    return _obj(
        properties,
        required=tuple(properties),
        description="A call record (CDR); refused calls have one too.",
    )


def recording_schema() -> Schema:
    properties = {
        "id": {"type": "string", "examples": ["rec_4f1c2a9b8e7d6c5b4a392817"]},
        **_party_properties(),
        "started_at": _time("When the call started."),
        "ended_at": _nullable(_time("When the recording ended; null while live.")),
        "duration_s": _nullable({"type": "number", "minimum": 0}),
        "codec": {"type": "string", "enum": _announcement_enum("codec")},
        "sample_rate": {"type": "integer"},
        "tracks": {
            "type": "array",
            "items": {"type": "string", "enum": list(typing.get_args(Track))},
            "description": "The tracks that have stored audio.",
        },
        "instructions_version": _nullable({"type": "integer"}),
        "decision": _ref("Decision"),
        "status": {
            "type": "string",
            "enum": list(RECORDING_STATUSES),
            "description": "`recording` (live), then `recorded` (no AI instructed) or "
            "`processing` then `analyzed` or `failed`; `deleted` once retention has removed all "
            "of its content, or from the moment an erasure or the tenant's deletion is "
            "requested.",
        },
        "delete_reason": _nullable(
            {
                "type": "string",
                "enum": [*typing.get_args(DeleteReason), None],
                "description": "Why it was deleted; null while it is not.",
            }
        ),
        "deleted_at": _nullable(
            _time("When its last content was deleted; null before (also while an erasure runs).")
        ),
        "expires_at": _nullable(
            _time(
                "When retention deletes its last content (audio, transcript, analysis); null "
                "while live, deleted or under a legal hold."
            )
        ),
        "expires": _obj(
            {
                "recordings": _nullable(
                    _time("When the audio's window ends; null while live or deleted.")
                ),
                "transcripts": _nullable(
                    _time(
                        "When the transcript's and analysis' window ends; null while live or "
                        "deleted."
                    )
                ),
                "call_records": _nullable(
                    _time("When the call record's window ends; null while the call is live.")
                ),
            },
            required=("recordings", "transcripts", "call_records"),
            description="When each data class's window under the tenant's current "
            "instructions ends (a changed window applies to stored recordings too). No data "
            "class outlives the call record. A legal hold keeps data past these times.",
        ),
        "legal_hold": {
            "type": "boolean",
            "description": "An active legal hold covers the call: nothing of it is deleted by "
            "retention, and erasing it is refused with 409 `legal_hold`.",
        },
        "legal_holds": {
            "type": "array",
            "items": {"type": "string", "examples": [HOLD_EXAMPLE]},
            "description": "The ids of the active legal holds that cover it, oldest first.",
        },
        "audio_purged": {"type": "boolean"},
    }
    # The recording view names the call ``call_id`` and the recording ``id``.
    return _obj(properties, required=tuple(properties))


def _track_map(schema: Schema, description: str) -> Schema:
    return _obj({track: schema for track in typing.get_args(Track)}, description=description)


def transcript_schema() -> Schema:
    segment = _obj(
        {
            "track": {"type": "string", "enum": list(typing.get_args(Track))},
            "start": {"type": "number", "minimum": 0, "description": "Seconds from call start."},
            "end": {"type": "number", "minimum": 0},
            "text": {"type": "string"},
        },
        required=("track", "start", "end", "text"),
        description="One utterance of one track: `inbound` is the caller, `outbound` the "
        "agent (no diarization involved).",
    )
    return _obj(
        {
            "language": {"type": "string", "description": "ISO 639-1 code of the call."},
            "model": {"type": "string", "description": "The Whisper model that transcribed."},
            "duration_s": {"type": "number"},
            "segments": {"type": "array", "items": segment, "description": "In time order."},
        },
        required=("language", "model", "segments"),
    )


def analysis_schema() -> Schema:
    score = _obj(
        {
            "score": {"type": "number", "minimum": -1, "maximum": 1},
            "label": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        },
        required=("score", "label"),
    )
    sentiment = _obj(
        {
            "method": {"type": "string", "examples": ["lexicon+cues"]},
            "overall": score,
            "tracks": _track_map(score, "Per track (only tracks that spoke)."),
            "segments": {"type": "array", "items": {"type": "object"}},
            "timeline": {"type": "array", "items": {"type": "object"}},
            "cues": {
                "type": "array",
                "items": {"type": "object"},
                "description": "Churn or complaint phrases that made a segment negative "
                "however politely it was worded (`cancel`, `refund`, `reziliez`, ...).",
            },
        },
        required=("overall", "tracks"),
        description="Lexicon sentiment (English and Romanian) with negation, intensifiers "
        "and but-clauses, plus intent cues, so a polite cancellation reads negative.",
    )
    talk_track = _obj(
        {
            "talk_s": {"type": "number"},
            "talk_share": {"type": "number"},
            "wpm": {"type": "integer"},
            "longest_monologue_s": {"type": "number"},
            "turns": {"type": "integer"},
        },
        required=("talk_s", "talk_share", "wpm", "longest_monologue_s"),
    )
    talk_listen = _obj(
        {
            "tracks": _track_map(talk_track, "From each track's voice activity (Silero VAD)."),
            "talk_to_listen": _nullable(
                {"type": "number", "description": "Outbound (agent) talk / inbound (caller)."}
            ),
            "silence_s": {"type": "number"},
            "overlap_s": {"type": "number", "description": "Both talking at once."},
            "interruptions": {"type": "integer"},
            "interruptions_by_track": {"type": "object"},
        },
        required=("tracks", "talk_to_listen", "silence_s", "overlap_s", "interruptions"),
    )
    topics = _obj(
        {
            "key_phrases": {
                "type": "array",
                "items": _obj(
                    {
                        "phrase": {"type": "string"},
                        "count": {"type": "integer"},
                        "score": {"type": "number"},
                    },  # fmt: skip
                ),
            },
            "categories": {
                "type": "array",
                "items": _obj(
                    {
                        "name": {"type": "string"},
                        "count": {"type": "integer"},
                        "phrases": {"type": "array", "items": {"type": "string"}},
                        "tracks": {"type": "object"},
                        "first_at": {"type": "number"},
                    }
                ),
                "description": "The tenant's categories (`ai.categories`) that matched.",
            },
        },
        required=("key_phrases", "categories"),
    )
    return _obj(
        {
            "language": {"type": "string"},
            "model": {"type": "string"},
            "duration_s": {"type": "number"},
            "summary": {
                "type": "string",
                "description": "3-5 sentences of the call, speaker-labelled (extractive).",
            },
            "sentiment": sentiment,
            "talk_listen": talk_listen,
            "topics": topics,
        },
        required=("language", "model"),
        description="Only the features the call's instructions asked for; the keys of the "
        "others are absent.",
    )


def _list_schema(item: str, *, paged: bool) -> Schema:
    properties: dict[str, Schema] = {"items": {"type": "array", "items": _ref(item)}}
    if paged:
        properties["next_cursor"] = _nullable(
            {"type": "string", "description": "Pass as `cursor` for the next page; null at end."}
        )
    return _obj(properties, required=tuple(properties))


def schemas() -> dict[str, Schema]:
    return {
        "Error": error_schema(),
        "Tenant": tenant_schema(),
        "TenantCreate": tenant_create_schema(),
        "TenantList": _list_schema("Tenant", paged=False),
        "TenantErasure": tenant_erasure_schema(),
        "Token": token_schema(),
        "TokenCreate": token_create_schema(),
        "TokenList": _list_schema("Token", paged=False),
        "MintedToken": minted_token_schema(),
        "Duration": duration_schema(),
        **instruction_section_schemas(),
        "InstructionsDocument": instructions_document_schema(),
        "Instructions": instructions_schema(),
        "InstructionsHistory": _list_schema("Instructions", paged=False),
        "RefusalCode": {
            "type": "string",
            "enum": list(REFUSAL_CODES),
            "description": "Why the tenant's instructions refused a call.",
        },
        "Decision": decision_schema(),
        "CallAnnouncement": call_announcement_schema(),
        "Announced": announced_schema(),
        "RtpOffer": rtp_offer_schema(),
        "Call": call_schema(),
        "CallPauseState": _obj(
            {"call_id": {"type": "string"}, "paused": {"type": "boolean"}},
            required=("call_id", "paused"),
        ),
        "Recording": recording_schema(),
        "RecordingList": _list_schema("Recording", paged=True),
        "Transcript": transcript_schema(),
        "Analysis": analysis_schema(),
        **rights_schemas(),
        **audit_schemas(),
        "Status": _obj({"status": {"type": "string"}}, required=("status",)),
    }


# --- parameters and shared responses ------------------------------------------------------


def parameters() -> dict[str, Schema]:
    def path(name: str, schema: Schema, description: str) -> Schema:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schema,
            "description": description,
        }

    def query(name: str, schema: Schema, description: str) -> Schema:
        return {"name": name, "in": "query", "schema": schema, "description": description}

    return {
        "tenant": path(
            "tenant",
            {"type": "string"},
            "The tenant's id. A tenant token naming another tenant gets 404.",
        ),
        "token_id": path("token_id", {"type": "string"}, "The token's id (`tok_...`)."),
        "hold_id": path(
            "hold_id", {"type": "string"}, "The legal hold's id (`hold_...`) in the tenant."
        ),
        "call_id": path(
            "call_id", {"type": "string", "pattern": CALL_ID_PATTERN}, "The call's id."
        ),
        "recording_id": path(
            "recording_id",
            {"type": "string"},
            "The recording's id (`rec_...`), looked up in the token's tenant.",
        ),
        "number": query(
            "number",
            {"type": "string"},
            "Only recordings where this number (international format) is a party.",
        ),
        "since": query(
            "since",
            {"type": "string", "format": "date-time"},
            "Only recordings that started at or after this time (with a zone).",
        ),
        "until": query(
            "until",
            {"type": "string", "format": "date-time"},
            "Only recordings that started before this time (with a zone).",
        ),
        "limit": query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            "Page size.",
        ),
        "cursor": query(
            "cursor", {"type": "string"}, "The `next_cursor` of the previous page, as given."
        ),
    }


def shared_responses() -> dict[str, Schema]:
    return {
        "Unauthorized": error_response(401, "unauthorized"),
        "Forbidden": error_response(403, "forbidden"),
        "NotFound": error_response(404, "not_found"),
        "Unavailable": error_response(503, "catalog_unavailable", "storage_unavailable"),
    }


def _p(name: str) -> Schema:
    return _ref(name, "parameters")


# --- operations ---------------------------------------------------------------------------


def operational_paths() -> dict[str, Schema]:
    return {
        "/healthz": {
            "get": _operation(
                "getHealthz",
                "Liveness",
                tag="operations",
                roles=(),
                public=True,
                description="The process is up; no dependency is checked.",
                responses={"200": _ok("Up.", {**_ref("Status"), "examples": [{"status": "ok"}]})},
            )
        },
        "/readyz": {
            "get": _operation(
                "getReadyz",
                "Readiness",
                tag="operations",
                roles=(),
                public=True,
                description="The catalog and the object store answer.",
                responses={
                    "200": _ok("Ready.", {**_ref("Status"), "examples": [{"status": "ready"}]}),
                    "503": error_response(503, "not_ready"),
                },
            )
        },
        "/metrics": {
            "get": _operation(
                "getMetrics",
                "Prometheus metrics",
                tag="operations",
                roles=(),
                public=True,
                description="Prometheus text exposition: active calls, frames in, audio "
                "discarded while paused, refusals by code, ingest errors by code, jobs queued, "
                "flush failures, and the stores' and catalog's own metrics.",
                responses={
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/v1/openapi.json": {
            "get": _operation(
                "getOpenapi",
                "This document",
                tag="operations",
                roles=(),
                public=True,
                description="The OpenAPI 3.1 document of the API (the checked-in "
                "`gateway/openapi.json`).",
                responses={"200": _ok("The document.", {"type": "object"})},
            )
        },
    }


_CLOSE_CODES = {
    "1000": "Normal closure after the stream's `stop` (reason `stop`); the call is ended.",
    "1001": "The server is shutting down (reason `server_shutdown`). Reconnect: the call "
    "waits for its stream to come back for the reconnect grace period.",
    "1007": "Malformed message (reason = the error code): bad JSON (`bad_json`), an unknown "
    "event (`unknown_event`), bad base64 (`bad_base64`), a missing or mistyped field "
    "(`bad_field`), a frame of the wrong size (`bad_frame_length`), a second start "
    "(`duplicate_start`), anything after stop (`stream_stopped`).",
    "1008": "Policy refusal or bad token (reason = the error code): `unauthorized`, "
    "`forbidden` (not a pbx token), `unknown_call`, `call_ended`, `codec_mismatch`, "
    "`transport_mismatch` (the call was announced for another transport), "
    "`stream_not_started` (audio before start), `invalid_call`, or a policy refusal: "
    + ", ".join(f"`{c}`" for c in REFUSAL_CODES)
    + ". Nothing of a refused stream is stored.",
    "1009": f"A message over {MAX_MESSAGE // 1024} KiB (reason `message_too_big`).",
    "1011": "A server-side failure (reason = the error code, e.g. `storage_unavailable`).",
}

_WS_COMMON = f"""
**Authentication** (a `pbx` token of the call's tenant), one of:
`Authorization: Bearer <token>` on the upgrade request; `?token=<token>` in the URL; or, for
PBXs that cannot set either, inside the first message (`token` above). Nothing is
accepted before authentication; a token that is given and invalid closes with 1008.

**Messages** are at most {MAX_MESSAGE} bytes ({MAX_MESSAGE // 1024} KiB).

**Unannounced calls**: a stream may describe a call that was never announced with `from`,
`to`, `direction` and `consent` in its first message; the tenant's instructions are checked
then, exactly as for an announcement.

**Close codes**:
""" + "\n".join(f"- {code}: {words}" for code, words in _CLOSE_CODES.items())

_TWILIO = """Twilio Media Streams (`<Connect><Stream>`): text messages only.

- `connected`: ignored.
- `start`: the call id is `start.customParameters.call_id`, else `start.callSid`;
  `start.tracks` (default both), `start.mediaFormat` must be 8 kHz mono `audio/x-mulaw`;
  `start.customParameters` may carry `token`, `from`, `to`, `direction`, `consent`.
- `media`: `media.track` (`inbound`/`outbound`, one announced in start), `media.payload`
  base64 µ-law, `media.timestamp` (ms).
- `dtmf`: checked (`0-9*#A-D`), never stored (a digit may be a card number).
- `mark`: ignored. `stop`: ends the call (close 1000).
"""

_FORK = """mod_audio_fork (FreeSWITCH) or jambonz `listen`.

- First a text frame of JSON metadata: the call id as `call_id` (else `callSid`, else
  `uuid`); `sample_rate`/`sampleRate` (8000, 16000, 24000, 48000; default 8000);
  `channels` (1 or 2) or `mixType` (`mono`, `stereo`, `mixed`); optionally `token`, `from`,
  `to`, `direction`, `consent`.
- Then binary frames of L16 (signed 16-bit little-endian) audio: mono is the `inbound`
  track; stereo interleaves caller (`inbound`) and callee (`outbound`) sample by sample.
- Later text frames: `{"event": "dtmf", "digit": "5"}` (never stored) or
  `{"event": "stop"}` (ends the call, close 1000).
"""


def ingest_paths() -> dict[str, Schema]:
    def websocket(operation_id: str, summary: str, protocol: str) -> Schema:
        operation = _operation(
            operation_id,
            summary,
            tag="ingest",
            roles=("pbx",),
            description=protocol + _WS_COMMON,
            responses={
                "101": {"description": "Switching Protocols: the WebSocket is open."},
                "400": error_response(400, "not_websocket"),
            },
        )
        # Any of the three ways authenticates; `{}` says the upgrade itself may carry none
        # (the token then comes in the first message).
        operation["security"] = [{"bearerAuth": []}, {"ingestToken": []}, {}]
        operation["x-websocket"] = {
            "max_message_bytes": MAX_MESSAGE,
            "close_codes": dict(_CLOSE_CODES),
        }
        return {"get": operation}

    return {
        WEBSOCKET_PATHS["twilio"]: websocket(
            "ingestTwilio", "Twilio Media Streams ingest (WebSocket)", _TWILIO
        ),
        WEBSOCKET_PATHS["fork"]: websocket(
            "ingestFork", "mod_audio_fork / jambonz listen ingest (WebSocket)", _FORK
        ),
    }


def tenant_paths() -> dict[str, Schema]:
    tenant = _p("tenant")
    return {
        "/v1/tenants": {
            "post": _operation(
                "createTenant",
                "Create a tenant",
                tag="tenants",
                roles=("operator",),
                description="Create a tenant. Its id can never be used again, even after the "
                "tenant is deleted.",
                body=_ref("TenantCreate"),
                responses=_authed(
                    ("201", _ok("Created.", _ref("Tenant"))),
                    ("400", error_response(400, "bad_json", "bad_request")),
                    _FORBIDDEN,
                    ("409", error_response(409, "conflict")),
                ),
            ),
            "get": _operation(
                "listTenants",
                "List tenants",
                tag="tenants",
                roles=("operator",),
                description="Every tenant that is not deleted.",
                responses=_authed(("200", _ok("The tenants.", _ref("TenantList"))), _FORBIDDEN),
            ),
        },
        "/v1/tenants/{tenant}": {
            "parameters": [tenant],
            "get": _operation(
                "getTenant",
                "Get a tenant",
                tag="tenants",
                roles=("operator", "admin"),
                description="The tenant.",
                responses=_authed(
                    ("200", _ok("The tenant.", _ref("Tenant"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
            "delete": _operation(
                "deleteTenant",
                "Erase a tenant",
                tag="tenants",
                roles=("operator",),
                description="Erase everything of the tenant: live calls end, its tokens stop "
                "working, its keys (KEKs) are destroyed first (so every object is unreadable "
                "from that moment, backups included), then every object, recording and call "
                "record is deleted. Refused with 409 `legal_hold` while any legal hold of the "
                "tenant is active. The audit log stays, with `keys.destroyed`, a "
                "`recording.deleted` (reason `tenant`) per recording, a `call_record.deleted` "
                "per call record and a final `tenant.deleted`.",
                responses=_authed(
                    ("200", _ok("Erased.", _ref("TenantErasure"))),
                    _FORBIDDEN,
                    _NOT_FOUND,
                    ("409", error_response(409, "legal_hold")),
                ),
            ),
        },
        "/v1/tenants/{tenant}/tokens": {
            "parameters": [tenant],
            "post": _operation(
                "createToken",
                "Mint a token",
                tag="tokens",
                roles=("operator", "admin"),
                description="Mint a token of the tenant; its secret is in this answer only.",
                body=_ref("TokenCreate"),
                responses=_authed(
                    ("201", _ok("Minted.", _ref("MintedToken"))),
                    ("400", error_response(400, "bad_json", "bad_role")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
            "get": _operation(
                "listTokens",
                "List tokens",
                tag="tokens",
                roles=("operator", "admin"),
                description="The tenant's tokens, revoked ones included (never secrets).",
                responses=_authed(
                    ("200", _ok("The tokens.", _ref("TokenList"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
        },
        "/v1/tenants/{tenant}/tokens/{token_id}": {
            "parameters": [tenant, _p("token_id")],
            "delete": _operation(
                "revokeToken",
                "Revoke a token",
                tag="tokens",
                roles=("operator", "admin"),
                description="Revoke the token; repeating it keeps the first revocation time.",
                responses=_authed(("200", _ok("Revoked.", _ref("Token"))), _FORBIDDEN, _NOT_FOUND),
            ),
        },
        "/v1/tenants/{tenant}/instructions": {
            "parameters": [tenant],
            "get": _operation(
                "getInstructions",
                "Current instructions",
                tag="instructions",
                roles=("operator", "admin"),
                description="The current version; version 0 (the defaults, which refuse "
                "every call) when none was ever stored.",
                responses=_authed(
                    ("200", _ok("The current version.", _ref("Instructions"))),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
            "put": _operation(
                "putInstructions",
                "Store new instructions",
                tag="instructions",
                roles=("admin",),
                description="Store a new immutable version of the whole document (an omitted "
                "field takes its default) and return it. Audited as `instructions.updated`.",
                body=_ref("InstructionsDocument"),
                responses=_authed(
                    ("200", _ok("The new version.", _ref("Instructions"))),
                    ("400", error_response(400, "bad_json")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                    ("422", error_response(422, "invalid_instructions")),
                ),
            ),
        },
        "/v1/tenants/{tenant}/instructions/history": {
            "parameters": [tenant],
            "get": _operation(
                "listInstructionsHistory",
                "Every instructions version",
                tag="instructions",
                roles=("operator", "admin"),
                description="Every stored version, so the one that allowed a call can be shown.",
                responses=_authed(
                    ("200", _ok("The versions.", _ref("InstructionsHistory"))),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
        },
    }


def call_paths() -> dict[str, Schema]:
    live = "Only a live call; a call that ended or was refused answers 409."

    def control(operation_id: str, summary: str, description: str) -> Schema:
        return _operation(
            operation_id,
            summary,
            tag="calls",
            roles=("pbx",),
            description=description,
            responses=_authed(
                ("200", _ok("Done.", _ref("CallPauseState"))),
                _FORBIDDEN,
                _NOT_FOUND,
                ("409", error_response(409, "conflict")),
            ),
        )

    return {
        "/v1/tenants/{tenant}/calls": {
            "parameters": [_p("tenant")],
            "post": _operation(
                "announceCall",
                "Announce a call",
                tag="calls",
                roles=("pbx",),
                description="Run the tenant's instructions on the call before any audio "
                "exists. Accepted: 201 with the decision and where to send audio. Refused: "
                "403 with the refusal code, and nothing is stored but the call record (CDR) "
                "of the refusal and an audit event.",
                body=_ref("CallAnnouncement"),
                responses=_authed(
                    ("201", _ok("Accepted.", _ref("Announced"))),
                    (
                        "400",
                        error_response(
                            400,
                            "bad_json",
                            "invalid_call",
                            "unsupported_codec",
                        ),
                    ),
                    ("403", error_response(403, "forbidden", *REFUSAL_CODES)),
                    _NOT_FOUND,
                    ("409", error_response(409, "conflict")),
                    ("503", error_response(503, "rtp_ports_exhausted", "rtp_unavailable")),
                ),
            ),
        },
        "/v1/tenants/{tenant}/calls/{call_id}": {
            "parameters": [_p("tenant"), _p("call_id")],
            "get": _operation(
                "getCall",
                "Get a call record",
                tag="calls",
                roles=("pbx", "admin"),
                description="The call record, refused calls included.",
                responses=_authed(("200", _ok("The call.", _ref("Call"))), _FORBIDDEN, _NOT_FOUND),
            ),
        },
        "/v1/calls/{call_id}/pause": {
            "parameters": [_p("call_id")],
            "post": control(
                "pauseCall",
                "Pause a call's recording",
                "From now until resume the call's audio is discarded, never stored (e.g. "
                "while a card number is read out); the gap is kept as silence in exports. " + live,
            ),
        },
        "/v1/calls/{call_id}/resume": {
            "parameters": [_p("call_id")],
            "post": control(
                "resumeCall", "Resume a call's recording", "Store audio again. " + live
            ),
        },
        "/v1/calls/{call_id}/end": {
            "parameters": [_p("call_id")],
            "post": _operation(
                "endCall",
                "End a call",
                tag="calls",
                roles=("pbx",),
                description="End the call and finalize its recording. Idempotent: 200 also "
                "when the transport already ended it, or the call was refused.",
                responses=_authed(("200", _ok("Ended.", _ref("Call"))), _FORBIDDEN, _NOT_FOUND),
            ),
        },
    }


def recording_paths() -> dict[str, Schema]:
    return {
        "/v1/tenants/{tenant}/recordings": {
            "parameters": [_p("tenant")],
            "get": _operation(
                "listRecordings",
                "List recordings",
                tag="recordings",
                roles=("admin", "processor"),
                description="The tenant's recordings, newest first, a page at a time.",
                parameters=[_p(n) for n in ("number", "since", "until", "limit", "cursor")],
                responses=_authed(
                    ("200", _ok("A page.", _ref("RecordingList"))),
                    ("400", error_response(400, "bad_query")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
        },
        "/v1/recordings/{recording_id}": {
            "parameters": [_p("recording_id")],
            "get": _operation(
                "getRecording",
                "Get a recording",
                tag="recordings",
                roles=("admin", "processor"),
                description="The recording's metadata (no audio).",
                responses=_authed(
                    ("200", _ok("The recording.", _ref("Recording"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
            "delete": erase_recording_operation(),
        },
        "/v1/recordings/{recording_id}/audio": {
            "parameters": [_p("recording_id")],
            "get": _operation(
                "getRecordingAudio",
                "Export a recording's audio",
                tag="recordings",
                roles=("admin",),
                description="A WAV of 16-bit PCM, stereo (inbound left, outbound right) at the "
                "call's sample rate, decrypted on the fly; paused stretches are silence. Every "
                "read is audited (`audio.read`) before the first byte is sent. If a sealed "
                "object fails to verify mid-stream the connection is closed early: the body is "
                "shorter than Content-Length and nothing unverified was sent.",
                responses=_authed(
                    (
                        "200",
                        {
                            "description": "The audio.",
                            "content": {
                                "audio/wav": {
                                    "schema": {"type": "string", "contentMediaType": "audio/wav"}
                                }
                            },
                        },
                    ),
                    ("403", error_response(403, "forbidden", "ai_only")),
                    _NOT_FOUND,
                    ("409", error_response(409, "conflict")),
                    (
                        "410",
                        error_response(410, "recording_deleted", "audio_purged", "audio_deleted"),
                    ),
                    ("413", error_response(413, "too_large")),
                ),
            ),
        },
        "/v1/recordings/{recording_id}/transcript": _result_path(
            "getTranscript",
            "Get a recording's transcript",
            "The transcript per track (inbound = caller, outbound = agent), decrypted from "
            "its sealed object; every read is audited (`transcript.read`).",
            "Transcript",
            "transcript_deleted",
        ),
        "/v1/recordings/{recording_id}/analysis": _result_path(
            "getAnalysis",
            "Get a recording's analysis",
            "Summary, sentiment, talk/listen metrics and topics: only the features the call's "
            "instructions asked for. Decrypted from its sealed object; every read is audited "
            "(`analysis.read`).",
            "Analysis",
            "analysis_deleted",
        ),
    }


def _result_path(
    operation_id: str, summary: str, description: str, schema: str, deleted: str
) -> Schema:
    return {
        "parameters": [_p("recording_id")],
        "get": _operation(
            operation_id,
            summary,
            tag="recordings",
            roles=("admin", "processor"),
            description=description,
            responses=_authed(
                ("200", _ok(f"The {schema.lower()}.", _ref(schema))),
                _FORBIDDEN,
                ("404", error_response(404, "not_found", "not_instructed")),
                ("409", error_response(409, "analysis_pending", "analysis_failed")),
                ("410", error_response(410, "recording_deleted", deleted)),
            ),
        ),
    }


# --- AudioSocket --------------------------------------------------------------------------


def audiosocket_extension() -> Schema:
    """The AudioSocket TCP protocol, which OpenAPI cannot describe as an operation."""
    settings = AudioSocketSettings()
    frames = {
        f"0x{audiosocket.KIND_HANGUP:02x}": "hangup, empty payload: ends the call.",
        f"0x{audiosocket.KIND_UUID:02x}": "the call's UUID, 16 bytes; must be the first frame, "
        "and name a call announced with transport `audiosocket`.",
        f"0x{audiosocket.KIND_DTMF:02x}": "one DTMF digit, 1 ASCII byte ("
        + "".join(sorted(DTMF_DIGITS))
        + "); never stored.",
        f"0x{audiosocket.KIND_AUDIO:02x}": "audio: signed linear 16-bit little-endian 8 kHz "
        "mono (an even number of bytes), stored as the `inbound` track.",
        f"0x{audiosocket.KIND_ERROR:02x}": "error. Sent by callvault before it closes the "
        "connection, with the ASCII error code as payload (e.g. `unknown_call`, "
        + ", ".join(f"`{c}`" for c in REFUSAL_CODES)
        + ", `unknown_frame_type`, `bad_frame_length`, `forbidden_network`); from Asterisk it "
        "ends the stream.",
    }
    return {
        "description": "Asterisk AudioSocket over TCP (the `AudioSocket()` dialplan "
        "application), on its own port beside the HTTP server. Each frame is "
        "`kind u8 | payload length u16 big-endian | payload`. AudioSocket has no "
        "authentication of its own: callvault accepts only UUIDs a tenant announced, and only "
        "from the allowed networks (loopback by default). Frames out of order (anything "
        "before the UUID, a second UUID, anything after hangup), unknown kinds and wrong "
        "lengths are answered with an error frame and the connection is closed; nothing of a "
        "refused call is stored.",
        "frame": "kind u8 | payload length u16 big-endian | payload",
        "default_port": settings.port,
        "port_setting": "CALLVAULT_AUDIOSOCKET__PORT (0 turns it off)",
        "frame_kinds": frames,
    }


# --- the document -------------------------------------------------------------------------

DESCRIPTION = """callvault records and analyses PBX call audio on each tenant's **documented
instructions** (GDPR Art. 28): a tenant admin PUTs an instructions document (recording, each
AI feature, the consent rule, retention windows, numbers never to record), every version is
kept, and every call is checked against the current version before a byte of its audio is
stored. Everything is off by default, so a tenant that never stored instructions has every
call refused; a refused call leaves only its call record. Audio, transcripts and analysis are
**encrypted at rest**: each object is sealed in segments with AES-256-GCM under its own data
key, which is wrapped by the tenant's key (KEK); deleting a tenant destroys its KEKs, so
nothing of it can be opened again. Retention windows delete data as the instructions say,
unless a **legal hold** covers it; data subjects' erasure and export requests are served per
number.

Authenticate with `Authorization: Bearer <token>`; each token has one role (`x-roles` on
every operation) and, except `operator`, one tenant. A resource of another tenant is always
404, never 403. Errors are `{"error": <code>, "message": <sentence>}` (`field` too on 422,
`hold` too on 409 `legal_hold`).
Audio arrives over the WebSocket ingest routes below, or over Asterisk AudioSocket TCP,
described in the top-level `x-audiosocket` extension."""


def audit_schemas() -> dict[str, Schema]:
    event = _obj(
        {
            "seq": {"type": "integer", "minimum": 1, "description": "1, 2, 3, ... per tenant."},
            "at": _time("When it happened."),
            "actor": {"type": "string", "description": "Who: a token id, `gateway`, `cli`, ..."},
            "action": {"type": "string", "examples": ["audio.read", "ai.purged"]},
            "object": _nullable({"type": "string", "description": "What it concerned."}),
            "detail": {"type": "object", "description": "Ids and small metadata, no content."},
            "prev_hash": {"type": "string", "description": "The previous event's hash."},
            "hash": {
                "type": "string",
                "description": "SHA-256 over the previous hash and this event's canonical JSON.",
            },
        },
        required=("seq", "at", "actor", "action", "object", "detail", "prev_hash", "hash"),
    )
    page = _obj(
        {
            "items": {"type": "array", "items": _ref("AuditEvent")},
            "next_since": _nullable(
                {"type": "integer", "description": "Pass as `since` for the next page."}
            ),
        },
        required=("items", "next_since"),
    )
    check = _obj(
        {
            "ok": {"type": "boolean"},
            "events": {"type": "integer", "description": "How many events the log holds."},
            "broken_at": {
                "type": "integer",
                "description": "When not ok: the first event altered, removed or moved.",
            },
        },
        required=("ok", "events"),
    )
    return {"AuditEvent": event, "AuditPage": page, "AuditCheck": check}


def audit_paths() -> dict[str, Schema]:
    since = {
        "name": "since",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "default": 0},
        "description": "Events after this sequence number (0: from the first).",
    }
    limit = {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "description": "Page size.",
    }
    return {
        "/v1/tenants/{tenant}/audit": {
            "parameters": [_p("tenant")],
            "get": _operation(
                "listAudit",
                "Read the audit log",
                tag="audit",
                roles=("admin",),
                description="The tenant's hash-chained events, oldest first, a page at a time.",
                parameters=[since, limit],
                responses=_authed(
                    ("200", _ok("A page.", _ref("AuditPage"))),
                    ("400", error_response(400, "bad_query")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
        },
        "/v1/tenants/{tenant}/audit/verify": {
            "parameters": [_p("tenant")],
            "get": _operation(
                "verifyAudit",
                "Check the audit log's chain",
                tag="audit",
                roles=("admin",),
                description="Recompute every link; name the first event that was altered, "
                "removed or moved (also a removed tail, against the head kept on the tenant).",
                responses=_authed(
                    ("200", _ok("The result.", _ref("AuditCheck"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
        },
    }


def rights_schemas() -> dict[str, Schema]:
    hold = _obj(
        {
            "id": {"type": "string", "examples": [HOLD_EXAMPLE]},
            "tenant": {"type": "string"},
            "number": _nullable(
                {
                    "type": "string",
                    "description": "The held number (normalised); null for a hold on call ids.",
                }
            ),
            "call_ids": _nullable(
                {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The held calls; null for a hold on a number.",
                }
            ),
            "reason": {"type": "string"},
            "active": {"type": "boolean", "description": "Not released."},
            "created_at": _time("When the hold was placed."),
            "created_by": {"type": "string", "description": "The token id that placed it."},
            "released_at": _nullable(_time("When it was released; null while active.")),
            "released_by": _nullable(
                {"type": "string", "description": "The token id that released it."}
            ),
        },
        required=(
            "id",
            "tenant",
            "number",
            "call_ids",
            "reason",
            "active",
            "created_at",
            "created_by",
            "released_at",
            "released_by",
        ),
        description="A legal hold: while active, nothing of the calls it covers (by call id, "
        "or every call where the number is a party, including later ones) is deleted by "
        "retention, and erasing it is refused.",
    )
    hold_create = {
        **_obj(
            {
                "call_ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_HOLD_CALLS,
                    "items": {"type": "string", "minLength": 1},
                    "description": "Calls of the tenant, live or finished; duplicates are "
                    "removed. An unknown id is refused with 404.",
                },
                "number": {
                    "type": "string",
                    "description": "International format, normalised as in "
                    "`exclude_numbers`; the hold covers every call where it is a party.",
                    "examples": ["+40712345678"],
                },
                "reason": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_REASON,
                    "pattern": "\\S",
                    "description": "Why the data is held (a case, a request); surrounding "
                    "whitespace is removed.",
                },
            },
            required=("reason",),
            closed=True,
            description="Either `call_ids` or `number`, never both, and a `reason`.",
        ),
        "oneOf": [{"required": ["call_ids"]}, {"required": ["number"]}],
    }
    erasure_request = _obj(
        {
            "number": {
                "type": "string",
                "description": "International format; every recording where it is a party "
                "is erased.",
                "examples": ["+40712345678"],
            }
        },
        required=("number",),
        closed=True,
    )
    recording_ids = {"type": "array", "items": {"type": "string"}}
    receipt = _obj(
        {
            "id": {"type": "string", "examples": ["erasure_5b0e9d2c4a6f8e1d3c7b9a20"]},
            "tenant": {"type": "string"},
            "scope": {"type": "string", "enum": ["recording", "number"]},
            "requested_at": _time("When the erasure was requested."),
            "completed_at": _time("When it was carried out."),
            "recordings": {**recording_ids, "description": "The recordings this request erased."},
            "already_deleted": {
                **recording_ids,
                "description": "Recordings in scope that were deleted before.",
            },
            "recordings_erased": {"type": "integer", "minimum": 0},
            "objects_shredded": {"type": "integer", "minimum": 0},
            "bytes_deleted": {"type": "integer", "minimum": 0},
            "call_records": {
                "type": "string",
                "description": "What happens to the call records: they are kept, without "
                "content, until their `call_records` retention window ends.",
            },
        },
        required=(
            "id",
            "tenant",
            "scope",
            "requested_at",
            "completed_at",
            "recordings",
            "already_deleted",
            "recordings_erased",
            "objects_shredded",
            "bytes_deleted",
            "call_records",
        ),
        description="The receipt of an erasure: audio, transcripts and analysis are deleted "
        "(their data keys shredded, their bytes removed), and audited as `erasure.requested` "
        "and `recording.deleted` (reason `erasure`).",
    )
    exported_recording = _obj(
        {
            "recording_id": {"type": "string"},
            "call_id": {"type": "string"},
            "transcript": {"type": "boolean", "description": "`transcript.json` is included."},
            "analysis": {"type": "boolean", "description": "`analysis.json` is included."},
            "audio": {
                "oneOf": [{"const": True}, {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"}],
                "description": "`true`: `audio.wav` is included. Otherwise the error code "
                "that says why not, as `GET /v1/recordings/{recording_id}/audio` would answer "
                "(`recording_deleted`, `audio_purged`, `audio_deleted`, `forbidden` for an "
                "AI-only call, `conflict` while it is recorded, ...).",
            },
        },
        required=("recording_id", "call_id", "transcript", "analysis", "audio"),
    )
    manifest = _obj(
        {
            "id": {"type": "string", "examples": ["export_7d1f3b5a9c2e4d6f8a0b1c2d"]},
            "tenant": {"type": "string"},
            "created_at": _time("When the export was made."),
            "calls": {"type": "integer", "minimum": 0, "description": "Call records exported."},
            "recordings": {"type": "array", "items": exported_recording},
        },
        required=("id", "tenant", "created_at", "calls", "recordings"),
        description="An export's `manifest.json`: what is in it, and why something is not.",
    )
    return {
        "LegalHold": hold,
        "LegalHoldCreate": hold_create,
        "LegalHoldList": _list_schema("LegalHold", paged=False),
        "ErasureRequest": erasure_request,
        "ErasureReceipt": receipt,
        "ExportManifest": manifest,
    }


def erase_recording_operation() -> Schema:
    """``DELETE /v1/recordings/{recording_id}``, which shares its path with the recording."""
    return _operation(
        "eraseRecording",
        "Erase a recording",
        tag="rights",
        roles=("admin",),
        description="Erase the recording's audio, transcript and analysis (a live call is "
        "ended first) and return the receipt; the call record stays, without content, until "
        "its `call_records` window ends. Erasing a deleted recording answers a receipt that "
        "lists it in `already_deleted`. Refused whole with 409 `legal_hold` while a legal "
        "hold covers the call.",
        responses=_authed(
            ("200", _ok("Erased.", _ref("ErasureReceipt"))),
            _FORBIDDEN,
            _NOT_FOUND,
            ("409", error_response(409, "legal_hold", "recording_in_progress")),
        ),
    )


def rights_paths() -> dict[str, Schema]:
    active = {
        "name": "active",
        "in": "query",
        "schema": {"type": "boolean", "default": False},
        "description": "`true` (or `1`): only the holds not released.",
    }
    number = {
        "name": "number",
        "in": "query",
        "required": True,
        "schema": {"type": "string"},
        "description": "The data subject's number, international format.",
    }
    entries = {
        "manifest.json": {"schema": _ref("ExportManifest")},
        "calls.json": {
            "schema": {"type": "array", "items": _ref("Call")},
            "description": "Every call record where the number is a party, refused calls included.",
        },
        "recordings/{recording_id}/recording.json": {"schema": _ref("Recording")},
        "recordings/{recording_id}/transcript.json": {
            "schema": _ref("Transcript"),
            "description": "Where one is stored.",
        },
        "recordings/{recording_id}/analysis.json": {
            "schema": _ref("Analysis"),
            "description": "Where one is stored.",
        },
        "recordings/{recording_id}/audio.wav": {
            "contentMediaType": "audio/wav",
            "description": "Where the audio can be exported: the WAV of "
            "`GET /v1/recordings/{recording_id}/audio`.",
        },
    }
    return {
        "/v1/tenants/{tenant}/legal-holds": {
            "parameters": [_p("tenant")],
            "post": _operation(
                "placeLegalHold",
                "Place a legal hold",
                tag="holds",
                roles=("admin",),
                description="Hold calls (by id, live or finished) or every call where a number "
                "is a party, so that retention deletes nothing of them and erasure is refused "
                "until the hold is released. Audited as `hold.placed` (without the number).",
                body=_ref("LegalHoldCreate"),
                responses=_authed(
                    ("201", _ok("Placed.", _ref("LegalHold"))),
                    ("400", error_response(400, "bad_json", "bad_request")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
            "get": _operation(
                "listLegalHolds",
                "List legal holds",
                tag="holds",
                roles=("admin",),
                description="The tenant's legal holds, released ones included unless `active`, "
                "oldest first.",
                parameters=[active],
                responses=_authed(
                    ("200", _ok("The holds.", _ref("LegalHoldList"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
        },
        "/v1/tenants/{tenant}/legal-holds/{hold_id}": {
            "parameters": [_p("tenant"), _p("hold_id")],
            "get": _operation(
                "getLegalHold",
                "Get a legal hold",
                tag="holds",
                roles=("admin",),
                description="The legal hold.",
                responses=_authed(
                    ("200", _ok("The hold.", _ref("LegalHold"))), _FORBIDDEN, _NOT_FOUND
                ),
            ),
            "delete": _operation(
                "releaseLegalHold",
                "Release a legal hold",
                tag="holds",
                roles=("admin",),
                description="Release the hold: what it kept follows its retention windows "
                "again (from the next sweep on), and can be erased. Audited as "
                "`hold.released`.",
                responses=_authed(
                    ("200", _ok("Released.", _ref("LegalHold"))),
                    _FORBIDDEN,
                    _NOT_FOUND,
                    ("409", error_response(409, "hold_released")),
                ),
            ),
        },
        "/v1/tenants/{tenant}/erasure-requests": {
            "parameters": [_p("tenant")],
            "post": _operation(
                "requestErasure",
                "Erase a data subject's recordings",
                tag="rights",
                roles=("admin",),
                description="Erase the audio, transcript and analysis of every recording "
                "where the number is a party (live calls are ended first) and return the "
                "receipt; the call records stay, without content, until their "
                "`call_records` window ends. Refused whole with 409 `legal_hold` when a "
                "legal hold covers the number or any of those calls.",
                body=_ref("ErasureRequest"),
                responses=_authed(
                    ("200", _ok("Erased.", _ref("ErasureReceipt"))),
                    ("400", error_response(400, "bad_json", "bad_request")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                    ("409", error_response(409, "legal_hold", "recording_in_progress")),
                ),
            ),
        },
        "/v1/tenants/{tenant}/export": {
            "parameters": [_p("tenant")],
            "get": _operation(
                "exportNumber",
                "Export a data subject's calls",
                tag="rights",
                roles=("admin",),
                description="A ZIP (portability, GDPR Art. 20) of every call where the number "
                "is a party: `manifest.json`, `calls.json`, and per recording a folder "
                "`recordings/{recording_id}/` with `recording.json`, `transcript.json`, "
                "`analysis.json` and `audio.wav` where they exist (`x-zip-entries`). It is "
                "streamed as it is built; nothing decrypted is written anywhere else. Every "
                "read is audited (`export.created`, `transcript.read`, `analysis.read`, "
                "`audio.read`) before the first byte is sent. If a sealed object fails to "
                "verify mid-stream the connection is closed early: the ZIP has no central "
                "directory and nothing unverified was sent.",
                parameters=[number],
                responses=_authed(
                    (
                        "200",
                        {
                            "description": "The export.",
                            "content": {
                                "application/zip": {
                                    "schema": {
                                        "type": "string",
                                        "contentMediaType": "application/zip",
                                    },
                                    "x-zip-entries": entries,
                                }
                            },
                        },
                    ),
                    ("400", error_response(400, "bad_query")),
                    _FORBIDDEN,
                    _NOT_FOUND,
                ),
            ),
        },
    }


def build_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document as JSON-ready data."""
    paths = {
        **operational_paths(),
        **ingest_paths(),
        **tenant_paths(),
        **call_paths(),
        **recording_paths(),
        **rights_paths(),
        **audit_paths(),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "callvault",
            "version": version("callvault"),
            "description": DESCRIPTION,
        },
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "ingest", "description": "Audio streams from PBXs."},
            {"name": "tenants", "description": "Tenants (operator)."},
            {"name": "tokens", "description": "API tokens; secrets are shown once."},
            {"name": "instructions", "description": "The tenant's documented instructions."},
            {"name": "calls", "description": "Announcing and controlling calls."},
            {"name": "recordings", "description": "Recordings and their audio."},
            {"name": "holds", "description": "Legal holds: data kept past retention and erasure."},
            {"name": "rights", "description": "Data subjects' rights: erasure and export."},
            {"name": "audit", "description": "The tenant's hash-chained audit log."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token minted by the API (or the bootstrap operator "
                    "token). Roles: "
                    + "; ".join(f"`{role}`: {ROLE_WORDS[role]}" for role in ROLES)
                    + ".",
                },
                "ingestToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "WebSocket ingest only: a pbx token in the URL, for PBXs "
                    "that cannot set headers. The control API refuses it.",
                },
            },
            "schemas": schemas(),
            "parameters": parameters(),
            "responses": shared_responses(),
        },
        "x-audiosocket": audiosocket_extension(),
    }


def render(document: Mapping[str, Any] | None = None) -> str:
    """The checked-in text: sorted keys, indent 2, ASCII only, trailing newline. ASCII keeps
    the file byte-identical whatever the locale of the shell that redirects it."""
    data = build_document() if document is None else document
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
