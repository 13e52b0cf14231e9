"""The ingest protocols in words, for the OpenAPI document: the WebSocket messages and close
codes, and the AudioSocket frames. OpenAPI has no way to describe a WebSocket's messages or a
TCP protocol, and nothing here can be introspected from a model, so this is prose, kept next
to the protocols it describes and built from their constants.
"""

from __future__ import annotations

from typing import Any

from gateway.api.codes import ERROR_CODES
from gateway.attachments import LEASE_TTL
from gateway.calls import TICK_S
from gateway.ingest import audiosocket
from gateway.ingest.events import DTMF_DIGITS, MAX_MESSAGE
from gateway.policy import REFUSAL_CODES
from gateway.revalidation import REVALIDATE
from gateway.settings import AudioSocketSettings, CallsSettings

ATTACHMENT_CODES = {
    "already_attached": "While a connection carries a call, another connection with its id "
    "is refused (`already_attached`), on every node sharing the catalog; nothing it sends is "
    "stored. A connection whose node crashed keeps the call until its lease runs out "
    f"({int(LEASE_TTL.total_seconds())} s); the PBX's own reconnect to the node that carried "
    "the call, also once that node restarted, is accepted at once. A connection whose lease "
    "ran out (its node could not renew it) or was lost meets it too: none of its later "
    "frames is stored.",
    "peer_mismatch": "A reconnect after a drop, on any node and after a restart, is accepted "
    "only from the first connection's IP address (`peer_mismatch` otherwise).",
}
"""AudioSocket's refusals of a second connection for a call, and why each happens."""


MAX_DURATION = (
    "a frame that would lie past the call's maximum duration on its media timeline "
    "(`CALLVAULT_CALLS__MAX_DURATION`, default "
    f"`{CallsSettings().model_dump(mode='json')['max_duration']}`), "
    "however its timestamps run, or any frame of a call whose wall-clock time since its first "
    "stream reached it. Nothing past the limit is stored; the call is ended with what it has "
    "(its recording kept, its AI job queued) and a reconnect meets `call_ended`. Sending "
    "faster than real time is allowed up to the limit"
)
"""When ``max_duration`` ends a stream, the same words for both protocols."""


def _when(code: str) -> str:
    """When ``code`` happens, from the one catalogue of error codes (without the sentence's
    full stop, to sit in parentheses)."""
    return ERROR_CODES[code][0].rstrip(".")


CLOSE_CODES = {
    "1000": "Normal closure after the stream's `stop` (reason `stop`); the call is ended.",
    "1001": "The server is shutting down (reason `server_shutdown`). Reconnect: the call "
    "waits for its stream to come back for the reconnect grace period.",
    "1007": "Malformed message (reason = the error code): bad JSON (`bad_json`), an unknown "
    "event (`unknown_event`), bad base64 (`bad_base64`), a missing or mistyped field "
    "(`bad_field`), a frame of the wrong size (`bad_frame_length`), a second start "
    "(`duplicate_start`), anything after stop (`stream_stopped`). Also `max_duration`: "
    + MAX_DURATION
    + ".",
    "1008": "Policy refusal or bad token (reason = the error code): `unauthorized`, "
    "`forbidden` (not a pbx token), `token_in_url_needs_tls` ("
    + _when("token_in_url_needs_tls")
    + "), `unknown_call`, `call_ended`, `call_in_progress` (another stream carries the call: "
    "see one stream per call), `codec_mismatch`, "
    "`transport_mismatch` (the call was announced for another transport), "
    "`stream_not_started` (audio before start), `invalid_call`, or a policy refusal: "
    + ", ".join(f"`{c}`" for c in REFUSAL_CODES)
    + ". Nothing of a refused stream is stored.",
    "1009": f"A message over {MAX_MESSAGE // 1024} KiB (reason `message_too_big`).",
    "1011": "A server-side failure (reason = the error code, e.g. `storage_unavailable`).",
    "1013": "Try again later (reason = the error code): `spool_full`, the stream's `start` "
    "describes a new call while the spool is full (at its bound with the audio of calls in "
    "progress and audio waiting for the object store; nothing is stored; calls already "
    "recording are not affected); `limit_exceeded`, a "
    "stream that describes an unannounced call while its tenant is at a limit (`live_calls`, "
    "`announces_per_minute`; the announcement's 429 says which); only the refusal's call "
    "record is stored. Retry the stream later.",
}

WS_COMMON = f"""
**Authentication** (a `pbx` token of the call's tenant), one of:
`Authorization: Bearer <token>` on the upgrade request, checked before the upgrade (a bad,
revoked or expired token is answered HTTP 401 `unauthorized`, another role's 403 `forbidden`,
and no WebSocket opens); `?token=<token>` in the URL, over TLS only (`wss://`, or a proxy that
terminates TLS: `CALLVAULT_HTTP__TLS_OFFLOADED`) or from this machine, else close 1008
`token_in_url_needs_tls`; or, for PBXs that cannot set either, inside the first message
(`token` above). Nothing is accepted before authentication; a token in the URL or the first
message that is invalid closes with 1008. A token revoked or expired while its stream runs
(through any node) is found within {int(REVALIDATE.total_seconds())} s plus one ticker round
({TICK_S} s), and the stream's next frame or `stop` closes it with 1008 `unauthorized` (a
stream so cut cannot end the call); the call waits for a reconnect with an active token, as
after a drop. A connection that has not started its stream
within `CALLVAULT_INGEST__HANDSHAKE_TIMEOUT` (10 s) closes with 1008 `start_timeout`.

**Messages** are at most {MAX_MESSAGE} bytes ({MAX_MESSAGE // 1024} KiB).

**One stream per call**: while a stream carries a call, a second stream of the same call is
refused with 1008 `call_in_progress`, on every node sharing the catalog (the call's lease is
kept there: a load balancer may send the two streams to two nodes), and nothing it sends is
stored. A reconnect after a drop carries the same recording on, on any node: at once when the
dropped stream's node released the call (it does as the connection closes, after putting the
audio it holds in its spool), or once that node's lease ran out
({int(LEASE_TTL.total_seconds())} s, when it crashed or cannot reach the catalog; the node
itself, restarted, takes the reconnect at once), within the reconnect grace
(`CALLVAULT_INGEST__RECONNECT_GRACE`); the outage is kept as silence. A stream whose node lost
the call's lease (it could not renew it in time and another stream took the call) is closed
with 1008 `call_in_progress` at its next message; none of its later audio is stored.

**Unannounced calls**: a stream may describe a call that was never announced with `from`,
`to`, `direction` and `consent` in its first message; the tenant's instructions are checked
then, exactly as for an announcement.

**Close codes**:
""" + "\n".join(f"- {code}: {words}" for code, words in CLOSE_CODES.items())

TWILIO = """Twilio Media Streams (`<Connect><Stream>`): text messages only.

- `connected`: ignored.
- `start`: the call id is `start.customParameters.call_id`, else `start.callSid`;
  `start.tracks` (default both), `start.mediaFormat` must be 8 kHz mono `audio/x-mulaw`;
  `start.customParameters` may carry `token`, `from`, `to`, `direction`, `consent`.
- `media`: `media.track` (`inbound`/`outbound`, one announced in start), `media.payload`
  base64 µ-law, `media.timestamp` (ms).
- `dtmf`: checked (`0-9*#A-D`), never stored (a digit may be a card number).
- `mark`: ignored. `stop`: ends the call (close 1000).
"""

FORK = """mod_audio_fork (FreeSWITCH) or jambonz `listen`.

- First a text frame of JSON metadata: the call id as `call_id` (else `callSid`, else
  `uuid`); `sample_rate`/`sampleRate` (8000, 16000, 24000, 48000; default 8000);
  `channels` (1 or 2) or `mixType` (`mono`, `stereo`, `mixed`); optionally `token`, `from`,
  `to`, `direction`, `consent`.
- Then binary frames of L16 (signed 16-bit little-endian) audio: mono is the `inbound`
  track; stereo interleaves caller (`inbound`) and callee (`outbound`) sample by sample.
- Later text frames: `{"event": "dtmf", "digit": "5"}` (never stored) or
  `{"event": "stop"}` (ends the call, close 1000).
"""


def audiosocket_extension() -> dict[str, Any]:
    """The AudioSocket TCP protocol, which OpenAPI cannot describe as an operation."""
    settings = AudioSocketSettings()
    frames = {
        f"0x{audiosocket.KIND_HANGUP:02x}": "hangup, empty payload: ends the call.",
        f"0x{audiosocket.KIND_UUID:02x}": "the call's AudioSocket id, 16 bytes: the UUID the "
        "announcement answered as `ingest.audiosocket.id` (never the call id). Must be the "
        "first frame.",
        f"0x{audiosocket.KIND_DTMF:02x}": "one DTMF digit, 1 ASCII byte ("
        + "".join(sorted(DTMF_DIGITS))
        + "); never stored.",
        f"0x{audiosocket.KIND_AUDIO:02x}": "audio: signed linear 16-bit little-endian 8 kHz "
        "mono (an even number of bytes), stored as the `inbound` track.",
        f"0x{audiosocket.KIND_ERROR:02x}": "error. Sent by callvault before it closes the "
        "connection, with the ASCII error code as payload (e.g. `unknown_call`, `call_ended`, "
        "`start_timeout` (no 0x01 frame within `CALLVAULT_INGEST__HANDSHAKE_TIMEOUT`), "
        "`unknown_frame_type`, `bad_frame_length`, `forbidden_network`, "
        + ", ".join(f"`{code}`" for code in ATTACHMENT_CODES)
        + ", `too_many_connections` (over `CALLVAULT_AUDIOSOCKET__MAX_CONNECTIONS` or "
        "`__MAX_CONNECTIONS_PER_PEER`), or `max_duration`: "
        + MAX_DURATION
        + "); from Asterisk it ends the stream.",
    }
    return {
        "description": "Asterisk AudioSocket over TCP (the `AudioSocket()` dialplan "
        "application), on its own port beside the HTTP server. Each frame is "
        "`kind u8 | payload length u16 big-endian | payload`. AudioSocket has no "
        "authentication of its own, so callvault mints a random id per `audiosocket` call and "
        "answers it once, in the announcement (`ingest.audiosocket.id`; Asterisk: "
        "`AudioSocket(<id>,<address>)`). That id is a secret: it is never logged nor shown "
        "again, and a connection must send it in its first frame; any other UUID (the call "
        "id, another tenant's id, an id never minted) is the same `unknown_call`. Connections "
        "come only from the allowed networks (loopback by default). "
        + " ".join(ATTACHMENT_CODES.values())
        + " Frames out of order (anything "
        "before the UUID, a second UUID, anything after hangup), unknown kinds and wrong "
        "lengths are answered with an error frame and the connection is closed; nothing of a "
        "refused call is stored.",
        "frame": "kind u8 | payload length u16 big-endian | payload",
        "default_port": settings.port,
        "port_setting": "CALLVAULT_AUDIOSOCKET__PORT (0 turns it off)",
        "frame_kinds": frames,
    }
