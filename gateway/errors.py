"""The gateway's own errors, and what every error of the tree means on the wire.

The gateway is the only layer that speaks HTTP and WebSocket, so the statuses and close codes
are said here: the API's errors (bad input, no or bad token, a forbidden role, a policy
refusal) and the ingest transports' frame errors are classes of this module, each with its
status and, for ingest, its WebSocket close code; the errors of the layers below (storage,
crypto) get their status from ``HTTP_STATUS``. ``http_status`` is what the error middleware
and every other translation at the boundary ask.
"""

from __future__ import annotations

from pydantic import ValidationError

from crypto.errors import CallvaultError
from storage.errors import (
    CatalogUnavailable,
    Conflict,
    Gone,
    InvalidInstructions,
    LimitReached,
    NotFound,
    ObjectNotFound,
    StorageUnavailable,
    UnsupportedMedia,
)
from storage.validation import first_problem


class GatewayError(CallvaultError):
    """Base of the errors only the gateway raises; ``status`` is its HTTP status."""

    status: int = 500


class BadRequest(GatewayError):
    """The request is malformed: bad JSON, a missing or invalid field, a bad query value."""

    code = "bad_request"
    status = 400


class Unauthorized(GatewayError):
    """No token, or a token that is unknown, revoked or expired (the answer never says
    which)."""

    code = "unauthorized"
    status = 401


class Forbidden(GatewayError):
    """The token's role may not do this (its own tenant's resource, wrong role)."""

    code = "forbidden"
    status = 403


class BreakGlassRequired(Forbidden):
    """The operator minted an admin or processor token for a tenant that has an admin
    already, without ``break_glass`` (a reason, audited and sent to the tenant)."""

    code = "break_glass_required"


class TooLarge(GatewayError):
    """A request or an answer that would exceed a size limit."""

    code = "too_large"
    status = 413


class RangeNotSatisfiable(GatewayError):
    """A ``Range`` header that asks for bytes past the end of the body (RFC 9110 15.5.17)."""

    code = "range_not_satisfiable"
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size
        """The body's length, for the answer's ``Content-Range: bytes */<size>``."""


class PolicyRefused(GatewayError):
    """The tenant's instructions do not allow this call; ``code`` is the refusal code
    (``recording_not_instructed``, ``consent_missing``, ``number_excluded``)."""

    code = "recording_not_instructed"
    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


# --- ingest -------------------------------------------------------------------------------


class IngestError(GatewayError):
    """A message or frame an ingest transport cannot accept. ``close_code`` is the WebSocket
    close code the connection ends with (AudioSocket answers with an 0xff frame instead);
    ``code`` goes into the close reason, so it must stay short (< 123 bytes)."""

    code = "bad_frame"
    status = 400
    close_code = 1007


class MalformedMessage(IngestError):
    """Bad JSON, an unknown event, bad base64, a frame of the wrong type or size (1007)."""

    code = "malformed_message"


class MessageTooBig(IngestError):
    """A message or frame over the 64 KiB limit (1009)."""

    code = "message_too_big"
    status = 413
    close_code = 1009


class MaxDurationReached(IngestError):
    """A frame that would end past the call's maximum duration on its media timeline
    (``CALLVAULT_CALLS__MAX_DURATION``), however its timestamps run, or any frame of a call
    that reached it on the wall clock: refused (1007), and the call is ended with what it
    has, its recording kept."""

    code = "max_duration"
    status = 413
    close_code = 1007


class IngestUnavailable(IngestError):
    """The gateway cannot take this stream now: no RTP port is free (503; the PBX may
    retry or send the call elsewhere)."""

    code = "ingest_unavailable"
    status = 503
    close_code = 1013


class SpoolFull(IngestUnavailable):
    """The spool holds ``CALLVAULT_INGEST__SPOOL_MAX_BYTES`` (the object store has been
    down a while): new calls are refused (503, WebSocket 1013) while current ones go on."""

    code = "spool_full"


class LimitExceeded(IngestError):
    """One more call would exceed a limit of its tenant (``limit``: ``live_calls``,
    ``rtp_calls``, ``announces_per_minute``): 429 with the limit's name (and
    ``Retry-After`` when a retry can succeed at a known time); on a stream that describes an
    unannounced call, close 1013 (try again later) with reason ``limit_exceeded``. Nothing
    is stored but the refusal's call record and audit event."""

    code = "limit_exceeded"
    status = 429
    close_code = 1013

    def __init__(self, limit: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s

    @classmethod
    def of(cls, reached: LimitReached) -> LimitExceeded:
        """The gateway's answer to the catalog's ``LimitReached``."""
        return cls(reached.limit, reached.message, retry_after_s=reached.retry_after_s)


class StreamRefused(IngestError):
    """A stream that may not proceed: bad token, unknown or refused call, a policy refusal
    (1008, the reason names the code)."""

    code = "stream_refused"
    status = 403
    close_code = 1008


# --- the statuses of the layers below -----------------------------------------------------

HTTP_STATUS: dict[type[CallvaultError], int] = {
    StorageUnavailable: 503,
    CatalogUnavailable: 503,
    ObjectNotFound: 404,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    InvalidInstructions: 422,
    UnsupportedMedia: 400,
    LimitReached: 429,
}
"""The HTTP status of each error class below the gateway; a subclass inherits its base's
(``HeldByLegalHold`` is a ``Conflict``: 409). Anything else is a 500."""


def http_status(error: CallvaultError) -> int:
    """The HTTP status that answers ``error``."""
    if isinstance(error, GatewayError):
        return error.status
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def invalid_body(error: ValidationError, code: str) -> BadRequest:
    """The 400 of a request body that fails its model: ``code`` with the first offending
    field and its sentence (``storage.validation``, as the instructions' 422 says them).
    Request handlers and ``gateway.calls.parse_announcement`` both answer through it."""
    field, sentence = first_problem(error)
    return BadRequest(f"{field}: {sentence}.", code=code)
