"""The root of callvault's exception tree, and the errors of the crypto layer.

Every package owns its errors (``crypto.errors``, ``storage.errors``, ``gateway.errors``), and
all of them descend from ``CallvaultError``, which lives here because crypto is the bottom
layer: every other package imports crypto, and crypto imports nothing of theirs. An error
carries a stable ``code`` (the API's ``error`` field) and a message written for the person who
reads it; what it means on the wire (an HTTP status, a WebSocket close code) is the gateway's
business and is said in ``gateway.errors``, so that nothing below the gateway knows HTTP.
Foreign exceptions (``InvalidTag``, botocore's ``ClientError``, SQLAlchemy's errors) are
translated into these where they enter our code, never passed through.
"""

from __future__ import annotations


class CallvaultError(Exception):
    """Root of every error callvault raises on purpose."""

    code: str = "internal_error"

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
