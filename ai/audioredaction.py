"""Redacting a recording's stored audio: each track rewritten, the originals crypto-shredded.

When a tenant's instructions say ``ai.redaction.audio``, what the analysis found
(``ai.redaction``: its spans, with the seconds their words took) is taken out of the sealed
recording itself, so that an export, the console's player and everything after them only
ever see the redacted audio: each span, padded by ``padding_ms`` either side (word
timestamps are approximate), is overwritten by silence or a 1 kHz tone
(``storage.media.masking``) in a new object per track, and the original objects are then
crypto-shredded (DEK first, then the bytes). ``audio.redacted`` in the tenant's audit log
says what was redacted where (types and times, never values) and which objects went.

The swap is written so that an attempt killed anywhere is finished by the next one (the
worker retries the job), one track at a time: the new object is sealed under the kind
``audio.redacting``, which nothing reads as the recording's audio; once it is committed
(after every original was read into it) the originals are shredded, the swap is audited,
and the copy is relabelled ``audio``. A retry that finds a committed copy takes it as the
track and finishes shredding the originals (one left with its DEK gone but its row not
yet marked is shredded again, which is idempotent); one that finds only a half-written
copy shreds it and starts over from the originals. Redacting a track twice (a retry after
the relabel) is harmless: the same spans are overwritten with the same fill, and the
second swap is audited too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime

from ai.redaction.redact import Span
from ai.transcript import TRACKS
from storage.catalog import Call, Catalog, Recording, StoredObject
from storage.media.codecs import codec
from storage.media.masking import Mask, TrackMasker
from storage.media.tracks import AUDIO_KIND, encode_record, track_records
from storage.redactionrules import RedactionRule
from storage.vault import MediaVault

REDACTING_KIND = "audio.redacting"
"""The kind of a redacted track while the swap is under way (never served as audio)."""


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
        spans: Sequence[Span],
        rule: RedactionRule,
        *,
        now: datetime,
        fence: Callable[[], Awaitable[None]],
    ) -> None:
        """Redact ``spans`` from the recording's audio as ``rule`` says; each track's swap
        audited. ``fence`` is awaited before every step that destroys anything: it raises
        when this worker no longer holds the job."""
        tenant = recording.tenant_id
        objects = await self._catalog.objects.list(tenant, recording_id=recording.id)
        rate = call.sample_rate
        pad = rule.padding_ms / 1000
        padded = [
            replace(s, start=max(0.0, s.start - pad), end=s.end + pad, words=()) for s in spans
        ]
        for track in TRACKS:
            on_track = [s for s in padded if s.track == track]
            originals = [o for o in objects if o.kind == AUDIO_KIND and o.track == track]
            copies = [o for o in objects if o.kind == REDACTING_KIND and o.track == track]
            committed = [o for o in copies if o.state == "committed"]
            if not on_track or not (committed or any(o.state == "committed" for o in originals)):
                continue
            masked = 0
            await fence()
            for leftover in copies:  # a killed attempt's half-made copy
                if leftover.state == "writing":
                    await self._vault.shred_object(tenant, leftover.id, now=now)
            if committed:
                # A killed attempt committed its copy from every original (it reads them
                # all before committing): that copy is the track now, whatever of the
                # originals it managed to shred.
                replacement = committed[-1]
            else:
                intervals = [
                    (math.floor(s.start * rate), math.ceil(s.end * rate)) for s in on_track
                ]
                mask = Mask.build(intervals, rule.fill, rate)
                live = [o for o in originals if o.state == "committed"]
                replacement, masked = await self._rewrite(recording, call, track, live, mask, now)
            await fence()
            for original in originals:
                if original.state != "deleted":  # one left half-shredded is finished too
                    await self._vault.shred_object(tenant, original.id, now=now)
            # Audited before the relabel: a retry after it relabels and audits again (twice
            # at worst, never not at all); after the relabel the track is done.
            await self._catalog.audit.append(
                tenant,
                actor=self._actor,
                action="audio.redacted",
                object=recording.id,
                detail={
                    "track": track,
                    "spans": [
                        {"type": s.entity, "start": round(s.start, 2), "end": round(s.end, 2)}
                        for s in on_track
                    ],
                    "fill": rule.fill,
                    "padding_ms": rule.padding_ms,
                    "samples_masked": masked,
                    "object_created": replacement.id,
                    "objects_shredded": [o.id for o in originals],
                },
                now=now,
            )
            await self._catalog.objects.relabel(
                replacement.id, tenant_id=tenant, kind=AUDIO_KIND, from_kind=REDACTING_KIND
            )

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
                # numpy operations on a 2 s record, cheaper than a thread hop (so is a
                # record no span touches).
                if masker.packetized and masker.touches(record):
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
