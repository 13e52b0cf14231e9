"""The catalogue of error codes the control API documents: when each happens and an example
message. The codes are the contract (``{"error": <code>}``); the messages only show their
shape. ``gateway.api.routes`` names, per route and status, which of these a route answers, and
``gateway.openapi`` turns each into a documented example.
"""

from __future__ import annotations

from gateway.api.models import HOLD_EXAMPLE

# Every error code an operation documents: (when it happens, an example message). The
# examples show the shape of real messages; the wording of messages is not part of the
# contract, the codes are.
ERROR_CODES: dict[str, tuple[str, str]] = {
    "bad_json": ("The body is not valid JSON.", "The body is not valid JSON."),
    "bad_request": (
        "A field is missing, of the wrong type, or out of range.",
        "name: must not be blank.",
    ),
    "request_entity_too_large": (
        "The body is larger than the server accepts (aiohttp's `client_max_size`, 1 MiB).",
        "Request Entity Too Large",
    ),
    "bad_role": (
        "The role is not one a tenant token can have.",
        "role: Input should be 'admin', 'pbx' or 'processor'.",
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
        "No token, a malformed Authorization header, or an unknown, revoked or expired token "
        "(the answer never says which).",
        "A bearer token is required.",
    ),
    "forbidden": (
        "The token's role may not do this, the endpoint needs a tenant token, or a "
        "break-glass token tried to mint a token.",
        "A processor token may not do this (needs admin).",
    ),
    "break_glass_required": (
        "The operator minted an admin or processor token for a tenant that has, or had, an "
        "admin token (revoked and expired ones count), without `break_glass`; nothing was "
        "minted.",
        "Tenant 'acme' has (or had) an admin: an operator-minted admin token needs "
        '"break_glass": {"reason": "..."}; it is audited, sent to the tenant\'s webhook and '
        "expires within PT1H.",
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
    "audit_broken": (
        "The audit log's events since its latest checkpoint do not extend it (altered, removed "
        "or cut off): the gateway signs no new checkpoint; `audit/verify` names the event.",
        "The audit log of 'acme' does not extend its latest checkpoint at event 42; nothing "
        "was signed. Run `callvault audit verify --tenant acme`.",
    ),
    "recording_deleted": (
        "The recording was deleted (retention, erasure or tenant deletion).",
        "Recording 'rec_4f1c2a9b8e7d6c5b4a392817' was deleted.",
    ),
    "audio_purged": (
        "The audio was purged after analysis (an AI-only call).",
        "The audio of 'rec_4f1c2a9b8e7d6c5b4a392817' was purged after analysis.",
    ),
    "audio_not_redacted": (
        "The instructions redact this recording's audio and the analysis has not done it yet "
        "(or failed): until it has, the audio is not served.",
        "The audio of 'rec_4f1c2a9b8e7d6c5b4a392817' is not redacted yet.",
    ),
    "original_not_kept": (
        "No unredacted transcript was kept: the call's instructions did not say "
        "ai.redaction.transcript with keep_original.",
        "No unredacted transcript of 'rec_4f1c2a9b8e7d6c5b4a392817' was kept (its "
        "instructions did not say ai.redaction.transcript with keep_original).",
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
    "range_not_satisfiable": (
        "The `Range` header asks for bytes past the end of the WAV.",
        "The body has 960044 bytes; the range starts at 2000000.",
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
    "token_in_url_needs_tls": (
        "WebSocket ingest only (close 1008 with this reason, after the upgrade): the token "
        "came as `?token=` on a plaintext connection from another machine, and TLS is not "
        "offloaded to a proxy (`CALLVAULT_HTTP__TLS_OFFLOADED`). The token is not checked; "
        "connect with `wss://`, or send it in the `Authorization` header or the first message.",
        "A token in the URL (?token=) is accepted only over TLS (wss://) or from this machine.",
    ),
    "limit_exceeded": (
        "One more call would exceed a limit of the tenant, counted on every node together; "
        "`limit` names it (`live_calls`, `rtp_calls`, `announces_per_minute`; the operator "
        "sets them per tenant, the defaults are `CALLVAULT_LIMITS__*`). Nothing is stored but "
        "the refusal's call record (a later announcement of the same call id replaces it) and "
        "a `call.refused` audit event. For `announces_per_minute` a `Retry-After` header says "
        "in how many seconds the window has room again.",
        "The tenant has 100 live calls, its limit (live_calls = 100); retry when one has ended.",
    ),
    "not_ready": (
        "The catalog does not answer, or not within 1 s.",
        "catalog is not reachable: the catalog database could not be reached.",
    ),
    "spool_full": (
        "The spool holds `CALLVAULT_INGEST__SPOOL_MAX_BYTES` or more: the sealed audio of "
        "the calls in progress and the audio waiting for the object store (which grows "
        "while the store is down): new calls are refused; calls in progress go on "
        "recording. Retry later or on another node. (An unannounced WebSocket stream's "
        "`start` is closed with 1013 and this reason.)",
        "The spool holds 1073741824 bytes (calls in progress and audio waiting for the "
        "object store), at its bound of 1073741824 (CALLVAULT_INGEST__SPOOL_MAX_BYTES): new "
        "calls are refused, calls in progress go on. Retry later or on another node.",
    ),
}

# Codes whose wire value differs from their key above: a 403 and aiohttp's own 400 share
# a code with others but are documented separately because the cause differs.
WIRE_CODE = {"ai_only": "forbidden", "not_websocket": "bad_request"}

EXTRA_FIELDS: dict[str, dict[str, str]] = {
    "invalid_instructions": {"field": "retention.recordings"},
    "legal_hold": {"hold": HOLD_EXAMPLE},
    "limit_exceeded": {"limit": "live_calls"},
}
"""The fields an error body has besides ``error`` and ``message``, by code."""
