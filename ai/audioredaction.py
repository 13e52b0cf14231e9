"""Redacting a recording's stored audio: each track rewritten, the original crypto-shredded.

When a tenant's instructions say ``ai.redaction.audio``, what the analysis found
(``ai.redaction``: its spans, with the seconds their words took) is taken out of the sealed
recording itself, so that an export, the console's player and everything after them only
ever see the redacted audio: each span, padded by ``padding_ms`` either side (word
timestamps are approximate), is overwritten by silence or a 1 kHz tone
(``storage.media.masking``) in a new object per track, and the original objects are then
crypto-shredded (DEK first, then the bytes). ``audio.redacted`` in the tenant's audit log
says what was redacted where (types and times, never values) and which objects went.

The swap is written so that an attempt killed anywhere is finished by the next one (the
worker retries the job): the new object is sealed under the kind ``audio.redacting``,
which nothing reads as the recording's audio; once it is committed the originals are
shredded, and only then is it relabelled ``audio``. A retry that finds originals still
there shreds any half-made new object and starts over; one that finds only the
``audio.redacting`` object relabels it. Redacting twice is harmless: the same spans are
overwritten with the same fill.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ai.transcript import TRACKS
from storage.catalog import Call, Catalog, Recording, StoredObject
from storage.media.codecs import codec
from storage.media.masking import Mask, TrackMasker
from storage.media.tracks import AUDIO_KIND, encode_record, track_records
from storage.redactionrules import RedactionRule
from storage.vault import MediaVault

REDACTING_KIND = "audio.redacting"
"""The kind of a redacted track while the swap is under way (never served as audio)."""


@dataclass(frozen=True, slots=True)
class TimedSpan:
    """A redacted stretch of one track, in seconds, as the analysis lists it."""

    entity: str
    track: str
    start: float
    end: float

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> TimedSpan:
        return cls(str(view["type"]), str(view["track"]), float(view["start"]), float(view["end"]))


class AudioRedaction:
    """Rewrites a recording's audio tracks without the redacted spans (see the module)."""

    def __init__(self, *, catalog: Catalog, vault: MediaVault, actor: str) -> None:
        self._catalog = catalog
        self._vault = vault
        self._actor = actor

    async def redact(
        self,
        recording: Recording,
        call: Call,
        spans: Sequence[TimedSpan],
        rule: RedactionRule,
        *,
        now: datetime,
    ) -> None:
        """Redact ``spans`` from the recording's audio as ``rule`` says; audited."""
        tenant = recording.tenant_id
        objects = await self._catalog.objects.list(tenant, recording_id=recording.id)
        rate = call.sample_rate
        pad = rule.padding_ms / 1000
        padded = [TimedSpan(s.entity, s.track, max(0.0, s.start - pad), s.end + pad) for s in spans]
        created: list[str] = []
        shredded: list[str] = []
        masked = 0
        for track in TRACKS:
            intervals = [
                (math.floor(s.start * rate), math.ceil(s.end * rate))
                for s in padded
                if s.track == track
            ]
            originals = _of(objects, AUDIO_KIND, track, committed=True)
            pending = _of(objects, REDACTING_KIND, track, committed=False)
            if not intervals or not (originals or pending):
                continue
            if originals:
                for leftover in pending:  # a killed attempt's half-made copy
                    await self._vault.shred_object(tenant, leftover.id, now=now)
                mask = Mask.build(intervals, rule.fill, rate)
                replacement, count = await self._rewrite(
                    recording, call, track, originals, mask, now
                )
                masked += count
                for original in originals:
                    await self._vault.shred_object(tenant, original.id, now=now)
                    shredded.append(original.id)
            else:  # the originals are gone: the copy a killed attempt committed is the audio
                committed = [o for o in pending if o.state == "committed"]
                for leftover in pending:
                    if leftover.state != "committed":
                        await self._vault.shred_object(tenant, leftover.id, now=now)
                if not committed:
                    continue
                replacement = committed[-1]
            await self._catalog.objects.relabel(
                replacement.id, tenant_id=tenant, kind=AUDIO_KIND, from_kind=REDACTING_KIND
            )
            created.append(replacement.id)
        if not created:
            return
        await self._catalog.audit.append(
            tenant,
            actor=self._actor,
            action="audio.redacted",
            object=recording.id,
            detail={
                "spans": [
                    {"type": s.entity, "track": s.track, "start": round(s.start, 2),
                     "end": round(s.end, 2)}
                    for s in padded
                ],
                "fill": rule.fill,
                "padding_ms": rule.padding_ms,
                "samples_masked": masked,
                "objects_created": created,
                "objects_shredded": shredded,
            },
            now=now,
        )  # fmt: skip

    async def _rewrite(
        self,
        recording: Recording,
        call: Call,
        track: str,
        originals: Sequence[StoredObject],
        mask: Mask,
        now: datetime,
    ) -> tuple[StoredObject, int]:
        """The track's records, masked, sealed as one new ``audio.redacting`` object;
        it and the samples overwritten."""
        tenant = recording.tenant_id
        masker = TrackMasker(codec(call.codec), mask)
        upload = await self._vault.create_object(
            tenant=tenant,
            kind=REDACTING_KIND,
            data_class=originals[0].data_class,
            now=now,
            recording_id=recording.id,
            track=track,
        )
        try:
            streams = [await self._vault.open_object(tenant, o.id) for o in originals]
            async for record in track_records(streams):
                # Opus fill is encoded by libopus: off the loop; G.711 and L16 are a few
                # numpy operations on a 2 s record, cheaper than a thread hop.
                if masker.packetized:
                    masked = await asyncio.to_thread(masker.mask, record)
                else:
                    masked = masker.mask(record)
                for piece in masked:
                    await upload.write(encode_record(piece.offset, piece.payload))
            stored = await upload.commit(now=now)
        except Exception:  # cancelled, it stays "writing": the retry shreds it
            await upload.abort(now=now)
            raise
        return stored, masker.masked


def _of(
    objects: Sequence[StoredObject], kind: str, track: str, *, committed: bool
) -> list[StoredObject]:
    """The recording's objects of ``kind`` on ``track``: committed ones, or (``committed``
    false) any not yet deleted."""
    return [
        o
        for o in objects
        if o.kind == kind
        and o.track == track
        and (o.state == "committed" if committed else o.state != "deleted")
    ]
