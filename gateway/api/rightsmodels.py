"""The bodies of the rights routes (legal holds, erasure, the data-subject export), beside
``gateway.api.models``, whose conventions they follow: request models validate what the
handlers of ``gateway.api.rights`` receive, and every model is a component schema of the
OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.api.models import (
    _CLOSED,
    _DOCS,
    HOLD_EXAMPLE,
    MAX_HOLD_CALLS,
    MAX_REASON,
    Count,
    PhoneNumber,
    Timestamp,
    _absent_not_null,
    _text,
)


class LegalHoldCreate(BaseModel):
    """Either `call_ids` or `number`, never both, and a `reason`."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        extra="forbid",
        strict=True,
        json_schema_extra={"oneOf": [{"required": ["call_ids"]}, {"required": ["number"]}]},
    )

    call_ids: (
        Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_HOLD_CALLS),
        ]
        | None
    ) = Field(default=None, json_schema_extra=_absent_not_null)
    """Calls of the tenant, live or finished; duplicates are removed. An unknown id is
    refused with 404."""
    number: PhoneNumber | None = Field(default=None, json_schema_extra=_absent_not_null)
    """International format, normalised as in `exclude_numbers`; the hold covers every call
    where it is a party."""
    reason: _text(MAX_REASON)  # type: ignore[valid-type]
    """Why the data is held (a case, a request); surrounding whitespace is removed."""

    @field_validator("call_ids", "number", mode="before")
    @classmethod
    def _sent_not_null(cls, value: object) -> object:
        if value is None:  # left out is fine (the default is not validated); null is not
            raise ValueError("must not be null; leave the field out instead")
        return value

    @model_validator(mode="after")
    def _one_scope(self) -> LegalHoldCreate:
        if (self.call_ids is None) == (self.number is None):
            raise ValueError("a legal hold names either call_ids or a number")
        return self


class LegalHold(BaseModel):
    """A legal hold: while active, nothing of the calls it covers (by call id, or every call
    where the number is a party, including later ones) is deleted by retention, and erasing
    it is refused."""

    model_config = _DOCS

    id: str = Field(examples=[HOLD_EXAMPLE])
    tenant: str
    number: str | None
    """The held number (normalised); null for a hold on call ids."""
    call_ids: list[str] | None
    """The held calls; null for a hold on a number."""
    reason: str
    active: bool
    """Not released."""
    created_at: Timestamp
    created_by: str
    """The token id that placed it."""
    released_at: Timestamp | None
    released_by: str | None
    """The token id that released it."""


class LegalHoldList(BaseModel):
    items: list[LegalHold]


class ErasureRequest(BaseModel):
    model_config = _CLOSED

    number: PhoneNumber
    """International format; every recording where it is a party is erased."""


class ErasureReceipt(BaseModel):
    """The receipt of an erasure: audio, transcripts and analysis are deleted (their data
    keys shredded, their bytes removed), audited as `erasure.requested` and
    `recording.deleted` (reason `erasure`)."""

    model_config = _DOCS

    id: str = Field(examples=["erasure_5b0e9d2c4a6f8e1d3c7b9a20"])
    tenant: str
    scope: Literal["recording", "number"]
    requested_at: Timestamp
    completed_at: Timestamp
    recordings: list[str]
    """The recordings this request erased."""
    already_deleted: list[str]
    """Recordings in scope that were deleted before."""
    recordings_erased: Count
    objects_shredded: Count
    bytes_deleted: Count
    call_records: str
    """They are kept, without content, until their `call_records` window ends."""


class ExportedRecording(BaseModel):
    model_config = _DOCS

    recording_id: str
    call_id: str
    transcript: bool
    """`transcript.json` is included."""
    analysis: bool
    """`analysis.json` is included."""
    audio: Literal[True] | Annotated[str, Field(pattern="^[a-z][a-z0-9_]*$")]
    """`true`: `audio.wav` is included; otherwise the error code that says why not, as
    `GET /v1/recordings/{recording_id}/audio` would answer."""


class ExportManifest(BaseModel):
    """An export's `manifest.json`: what is in it, and why something is not."""

    model_config = _DOCS

    id: str = Field(examples=["export_7d1f3b5a9c2e4d6f8a0b1c2d"])
    tenant: str
    created_at: Timestamp
    calls: Count
    """Call records exported."""
    recordings: list[ExportedRecording]
