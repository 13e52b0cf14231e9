"""The ``ai.redaction`` section of the instructions: which personal data leaves the results.

A processor keeps only what the controller instructs it to keep, and a card number a caller
read out is exactly what a privacy notice promises to minimise. So a tenant may instruct
that what callvault finds of the listed kinds (``ENTITY_TYPES``) is replaced in the
transcript by a tag (``[CARD_NUMBER]``), and in the stored audio by silence or a tone,
before anything is sealed; the unredacted transcript and audio are then not kept
(``keep_original``). Off by default, like every feature (DESIGN.md promise 1).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "ENTITY_TYPES",
    "PADDING_MS",
    "RedactionRule",
    "entity_tag",
]

PADDING_MS: tuple[int, int] = (200, 2000)
"""Fewest and most milliseconds of audio redacted either side of a span's words: word
timestamps are approximate (tens of milliseconds), so a span is widened to cover them."""

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

Entity = Literal[
    "all",
    "card_number",
    "iban",
    "phone_number",
    "email",
    "ro_cnp",
    "person_name",
    "postal_address",
]

ENTITY_TYPES: tuple[str, ...] = tuple(e for e in get_args(Entity) if e != "all")
"""What redaction can find: payment card numbers (Luhn-valid, 13 to 19 digits), IBANs
(checksum-valid), phone numbers (valid for their country), e-mail addresses, Romanian
personal numeric codes (CNP, checksum-valid), person names, postal addresses."""


def entity_tag(entity: str) -> str:
    """What a redacted span of ``entity`` reads as in a transcript: ``[CARD_NUMBER]``."""
    return f"[{entity.upper()}]"


class RedactionRule(BaseModel):
    """Personal data removed from the transcript and the recording before they are sealed."""

    model_config = _STRICT

    transcript: bool = False
    """Replace each span found in the transcript by its tag (`[CARD_NUMBER]`); summary,
    topics and sentiment are computed on the redacted text."""
    audio: bool = False
    """Replace each span found in the stored audio by `fill`, padded by `padding_ms`."""
    entities: Annotated[tuple[Entity, ...], Field(strict=False, min_length=1, max_length=8)] = (
        "all",
    )
    """The kinds redacted: `card_number`, `iban`, `phone_number`, `email`, `ro_cnp`,
    `person_name`, `postal_address`, or `all`."""
    fill: Literal["silence", "tone"] = "silence"
    """What replaces a span in the audio: silence, or a 1 kHz tone (audibly redacted)."""
    padding_ms: Annotated[int, Field(ge=PADDING_MS[0], le=PADDING_MS[1])] = 250
    """Milliseconds redacted before and after each span in the audio (200 to 2000)."""
    keep_original: bool = False
    """Keep the unredacted transcript as well (readable by admins only); needs `transcript`.
    With false (the default) the unredacted transcript is never stored. The unredacted audio
    is never kept: it is crypto-shredded once the redacted audio is committed."""

    @field_validator("entities")
    @classmethod
    def _dedupe(cls, entities: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entities))

    @field_validator("keep_original")
    @classmethod
    def _original_of_a_redacted_transcript(cls, keep: bool, info: ValidationInfo) -> bool:
        if keep and not info.data.get("transcript"):
            raise ValueError("needs transcript: true (only a redacted transcript has an original)")
        return keep

    @property
    def enabled(self) -> bool:
        """Whether anything is redacted."""
        return self.transcript or self.audio

    def kinds(self) -> frozenset[str]:
        """The entity types to find (``all`` expanded)."""
        if "all" in self.entities:
            return frozenset(ENTITY_TYPES)
        return frozenset(self.entities)
