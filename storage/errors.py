"""The errors of the storage layer: object stores, the catalog, the media formats and the
tenant's instructions.

They say what went wrong in the data (unknown, conflicting, gone, unavailable), not how the
gateway answers it: ``gateway.errors`` maps each class to its HTTP status.
"""

from __future__ import annotations

from crypto.errors import CallvaultError


class StorageError(CallvaultError):
    """Base of errors of the object stores."""

    code = "storage_error"


class StorageUnavailable(StorageError):
    """The object store failed or could not be reached; ``store_code`` is its own error code
    (an S3 error code such as ``SlowDown`` or ``NoSuchBucket``, or an errno name)."""

    code = "storage_unavailable"

    def __init__(self, message: str, *, store_code: str | None = None) -> None:
        super().__init__(f"{message} ({store_code})" if store_code else message)
        self.store_code = store_code


class ObjectNotFound(StorageError):
    """No object is stored under the key."""

    code = "object_not_found"


class CatalogUnavailable(StorageError):
    """The catalog database failed or could not be reached."""

    code = "catalog_unavailable"


class NotFound(CallvaultError):
    """Unknown resource, or a resource of another tenant (always 404, never 403)."""

    code = "not_found"


class Conflict(CallvaultError):
    """The request conflicts with the current state (duplicate id, legal hold, ...)."""

    code = "conflict"


class HeldByLegalHold(Conflict):
    """Data a legal hold covers cannot be erased; ``hold`` is the hold's id (the API's
    ``hold`` field), so that the admin knows which hold to release."""

    code = "legal_hold"

    def __init__(self, hold: str, message: str) -> None:
        super().__init__(message)
        self.hold = hold


class AdminExists(Conflict):
    """The tenant has, or had, an admin token, and the write was asked to happen only while
    it never had one (the operator's minting of a tenant's first admin; ``gateway.auth``
    turns it into the API's ``break_glass_required``)."""

    code = "admin_exists"


class AuditBroken(Conflict):
    """A tenant's audit chain does not extend its latest checkpoint, so the gateway refuses
    to sign its head; ``seq`` is the first event that is altered, missing or out of place."""

    code = "audit_broken"

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class Gone(CallvaultError):
    """The resource existed but its content was purged or deleted."""

    code = "gone"


class InvalidInstructions(CallvaultError):
    """An instructions document with an unknown field or an invalid value; ``field`` is its
    dotted path (``retention.recordings``, ``exclude_numbers.2``)."""

    code = "invalid_instructions"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnsupportedMedia(CallvaultError):
    """A codec, sample rate or track layout the media formats do not handle; ``code`` says
    which (``unsupported_codec``, ...)."""

    code = "unsupported_media"


class LimitReached(CallvaultError):
    """A tenant's limit would be exceeded by one more call; ``limit`` names it
    (``live_calls``, ``rtp_calls``, ``announces_per_minute``), ``value`` is its value, and
    ``retry_after_s`` says when a retry can succeed where that is known (the rate limit's
    window), else ``None``."""

    code = "limit_exceeded"

    def __init__(
        self, limit: str, value: int, message: str, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.retry_after_s = retry_after_s
