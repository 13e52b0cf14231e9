"""The one exception tree of callvault.

It lives in ``crypto`` because that is the bottom layer: every other package (storage, ai,
gateway) imports crypto, and crypto imports nothing of theirs, so the tree can be shared
without an upward import. Each error carries a stable ``code`` (the API's ``error`` field)
and the HTTP ``status`` the gateway's middleware answers with. Foreign exceptions
(``InvalidTag``, botocore's ``ClientError``, SQLAlchemy's errors) are translated into these
where they enter our code, never passed through.
"""

from __future__ import annotations


class CallvaultError(Exception):
    """Root of every error callvault raises on purpose."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        """``code`` replaces the class's code for this instance (a refusal or frame error
        that is more precise than its class)."""
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(CallvaultError):
    """A setting is malformed; the process refuses to start and names the setting."""

    code = "invalid_setting"

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


# --- crypto -------------------------------------------------------------------------------


class CryptoError(CallvaultError):
    """Base of errors of the object format and of key handling."""

    code = "crypto_error"


class DecryptionFailed(CryptoError):
    """A sealed object did not verify: corrupt, truncated, reordered, spliced or foreign.

    ``segment`` names the first segment that failed (``None`` when the header itself did).
    No plaintext of a failing segment is ever released.
    """

    code = "decryption_failed"

    def __init__(self, message: str, *, segment: int | None = None) -> None:
        where = "header" if segment is None else f"segment {segment}"
        super().__init__(f"{where}: {message}")
        self.segment = segment


class KeyUnavailable(CryptoError):
    """A key needed to open or seal an object is unknown, destroyed or shredded."""

    code = "key_unavailable"


# --- storage ------------------------------------------------------------------------------


class StorageError(CallvaultError):
    """Base of errors of the object stores."""

    code = "storage_error"


class StorageUnavailable(StorageError):
    """The object store failed or could not be reached; ``store_code`` is its own error code
    (an S3 error code such as ``SlowDown`` or ``NoSuchBucket``, or an errno name)."""

    code = "storage_unavailable"
    status = 503

    def __init__(self, message: str, *, store_code: str | None = None) -> None:
        super().__init__(f"{message} ({store_code})" if store_code else message)
        self.store_code = store_code


class ObjectNotFound(StorageError):
    """No object is stored under the key."""

    code = "object_not_found"
    status = 404


class CatalogUnavailable(StorageError):
    """The catalog database failed or could not be reached."""

    code = "catalog_unavailable"
    status = 503


# --- API-level ----------------------------------------------------------------------------


class NotFound(CallvaultError):
    """Unknown resource, or a resource of another tenant (always 404, never 403)."""

    code = "not_found"
    status = 404


class Conflict(CallvaultError):
    """The request conflicts with the current state (duplicate id, legal hold, ...)."""

    code = "conflict"
    status = 409


class HeldByLegalHold(Conflict):
    """Data a legal hold covers cannot be erased; ``hold`` is the hold's id (the API's
    ``hold`` field), so that the admin knows which hold to release."""

    code = "legal_hold"

    def __init__(self, hold: str, message: str) -> None:
        super().__init__(message)
        self.hold = hold


class BadRequest(CallvaultError):
    """The request is malformed: bad JSON, a missing or invalid field, a bad query value."""

    code = "bad_request"
    status = 400


class Unauthorized(CallvaultError):
    """No token, or a token that is unknown or revoked (the answer never says which)."""

    code = "unauthorized"
    status = 401


class Forbidden(CallvaultError):
    """The token's role may not do this (its own tenant's resource, wrong role)."""

    code = "forbidden"
    status = 403


class Gone(CallvaultError):
    """The resource existed but its content was purged or deleted."""

    code = "gone"
    status = 410


class TooLarge(CallvaultError):
    """A request or an answer that would exceed a size limit."""

    code = "too_large"
    status = 413


class InvalidInstructions(CallvaultError):
    """An instructions document with an unknown field or an invalid value; ``field`` is its
    dotted path (``retention.recordings``, ``exclude_numbers.2``)."""

    code = "invalid_instructions"
    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PolicyRefused(CallvaultError):
    """The tenant's instructions do not allow this call; ``code`` is the refusal code
    (``recording_not_instructed``, ``consent_missing``, ``number_excluded``)."""

    code = "recording_not_instructed"
    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


# --- ingest -------------------------------------------------------------------------------


class IngestError(CallvaultError):
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


class IngestUnavailable(IngestError):
    """The gateway cannot take this stream now: no RTP port is free (503; the PBX may
    retry or send the call elsewhere)."""

    code = "ingest_unavailable"
    status = 503
    close_code = 1013


class StreamRefused(IngestError):
    """A stream that may not proceed: bad token, unknown or refused call, a policy refusal
    (1008, the reason names the code)."""

    code = "stream_refused"
    status = 403
    close_code = 1008
