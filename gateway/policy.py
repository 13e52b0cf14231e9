"""The policy: may this call be recorded or analysed, and how? (DESIGN.md promise 1.)

Every ingest path (the announcement, Twilio's ``start`` for calls that were never announced)
asks `decide` before a byte of audio is stored, and stores the `Decision` (with the
instructions version that allowed it) alongside the call. A `Refusal` means nothing is stored
but the call record of the refusal.

The module is pure: no I/O, no clock, no logging. The caller loads the tenant's current
instructions and passes them in with the time, so every rule is tested as a plain function
and one call's decision can never depend on anything but its facts and the instructions.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from gateway.errors import PolicyRefused
from storage.instructions import InstructionsDoc, normalize_number

__all__ = ["CallFacts", "Consent", "Decision", "Refusal", "RefusalCode", "decide"]

Consent = Literal["granted", "denied", "not_asked"]
RefusalCode = Literal[
    "recording_not_instructed", "unencrypted_transport", "consent_missing", "number_excluded"
]
REFUSAL_CODES: tuple[RefusalCode, ...] = typing.get_args(RefusalCode)
"""The refusal codes (403 on announcement, close reason 1008 on ingest)."""


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the PBX tells us about a call, as far as the policy cares."""

    from_number: str
    to_number: str
    direction: str
    consent: Consent
    unencrypted: bool = False
    """The audio would arrive unencrypted (plain RTP rather than SRTP)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A call the instructions allow: what to store and which AI features to run."""

    store_recording: bool
    ai: tuple[str, ...]
    """Instructed AI features, in `AI_FEATURES` order."""
    instructions_version: int | None
    """The version that allowed the call; ``None`` when the tenant never PUT instructions."""
    redact_audio: bool = False
    """The recording's audio is to be redacted after analysis (``ai.redaction.audio``): until
    it is, it is not served."""

    @property
    def ai_only(self) -> bool:
        """Recording off, AI on: the audio is kept only until analysis, then purged."""
        return not self.store_recording and bool(self.ai)

    def document(self) -> dict[str, Any]:
        """The announcement's ``decision`` object."""
        document: dict[str, Any] = {"store_recording": self.store_recording, "ai": list(self.ai)}
        if self.redact_audio:
            document["redact_audio"] = True
        return document


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call the instructions do not allow; ``message`` never contains a phone number
    (refusals are logged and audited, and the numbers are stored only in the call record)."""

    code: RefusalCode
    message: str
    instructions_version: int | None

    def error(self) -> PolicyRefused:
        """The error the API answers with (403, ``error`` = ``code``)."""
        return PolicyRefused(self.code, self.message)


def decide(
    call: CallFacts, instructions: InstructionsDoc, version: int | None, now: datetime
) -> Decision | Refusal:
    """Decide whether ``call`` may be handled under ``instructions`` (``version``; ``None``
    for the defaults, which refuse every call).

    The checks run in this order, and the first that fails is the refusal:

    1. ``number_excluded``: either party is in ``exclude_numbers`` (compared normalised, so
       ``+40 712-345-678`` matches ``+40712345678``; a party that is not a valid number just
       doesn't match). First because it is the tenant's most specific rule: the one number it
       named must be reported as excluded whatever else the instructions say, so the operator
       sees the real reason and does not "fix" consent for a number that must never be taken.
    2. ``recording_not_instructed``: neither recording nor any AI feature is instructed.
       Before consent because it is a tenant-wide setting: asking the PBX to obtain consent
       would be pointless when nothing may be done with the audio anyway.
    3. ``unencrypted_transport``: the audio would arrive as plain RTP and the instructions
       do not allow unencrypted transport (SRTP is required by default). Before consent:
       asking the parties is pointless while the audio could not be taken anyway.
    4. ``consent_missing``: consent is required and the call's consent is not ``granted``
       (``denied`` and ``not_asked`` alike). Last because it is the per-call fact that
       costs the PBX most to change (asking the parties), so it is reported only when it is
       the one thing standing in the way.

    Otherwise the call is allowed; recording off with AI on is an AI-only decision. ``now``
    must be aware; it is taken now so that effective-dated rules can be added without
    changing every caller.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")

    if _is_excluded(call.from_number, instructions) or _is_excluded(call.to_number, instructions):
        return Refusal(
            code="number_excluded",
            message=(
                "A party of this call is on the tenant's exclude_numbers list, so the call "
                "is neither recorded nor analysed; this is expected, do not retry."
            ),
            instructions_version=version,
        )

    features = instructions.ai_features()
    if not instructions.recording.enabled and not features:
        source = "default instructions" if version is None else f"instructions version {version}"
        return Refusal(
            code="recording_not_instructed",
            message=(
                f"The tenant's {source} enable neither recording nor any AI feature; the "
                "tenant admin must enable recording or an AI feature before calls are accepted."
            ),
            instructions_version=version,
        )

    if call.unencrypted and not instructions.transport.allow_unencrypted_rtp:
        return Refusal(
            code="unencrypted_transport",
            message=(
                "The call's audio would arrive as plain RTP and the tenant's instructions "
                "require SRTP; announce it with srtp true, or the tenant admin must set "
                "transport.allow_unencrypted_rtp."
            ),
            instructions_version=version,
        )

    if instructions.consent.required and call.consent != "granted":
        return Refusal(
            code="consent_missing",
            message=(
                f"The tenant's instructions require consent and the call's consent is "
                f"{_consent_word(call.consent)}; announce the call with consent 'granted' "
                "only once the parties have agreed."
            ),
            instructions_version=version,
        )

    return Decision(
        store_recording=instructions.recording.enabled,
        ai=features,
        instructions_version=version,
        redact_audio=instructions.recording.enabled and instructions.ai.redaction.audio,
    )


def _is_excluded(party: str, instructions: InstructionsDoc) -> bool:
    try:
        number = normalize_number(party)
    except ValueError:
        # Withheld or malformed caller IDs ("anonymous", "") cannot be on the list, which
        # only holds valid numbers; refusing them here would silently block every anonymous
        # caller, which the tenant did not instruct.
        return False
    # A linear scan of at most 10 000 short strings, once per party per call: cheap enough
    # that an index would only add state to keep in step with the document.
    return number in instructions.exclude_numbers


def _consent_word(consent: str) -> str:
    # The consent value comes from the PBX; quote only the values we know so that an odd
    # value (possibly holding a number or personal data) is never echoed into logs.
    if consent in ("denied", "not_asked"):
        return f"'{consent}'"
    return "not 'granted'"
