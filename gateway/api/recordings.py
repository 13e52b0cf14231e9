"""Recordings: listing, metadata, the audio export, the transcript and the analysis.

``GET .../audio`` decrypts each track's objects on the fly and mixes them into a stereo WAV
(inbound left, outbound right) aligned by the records' sample offsets, gaps as silence. The
``audio.read`` audit event is written before the first byte is sent; nothing decrypted is
ever written anywhere but the response. The transcript and the analysis are sealed objects
of their own (written by the AI worker), opened and verified whole, audited
(``transcript.read``, ``analysis.read``) and returned as they were sealed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ai.pipeline import ANALYSIS_FEATURES
from ai.worker import ANALYSIS_KIND, ORIGINAL_TRANSCRIPT_KIND, TRANSCRIPT_KIND
from crypto.errors import CallvaultError, KeyUnavailable
from gateway.api.common import TENANT, found, iso, principal_of, query_int, query_time
from gateway.errors import BadRequest, Forbidden, RangeNotSatisfiable, TooLarge
from gateway.services import Services
from gateway.state import CLOCK, SERVICES
from storage.catalog import Call, Catalog, DataClass, Recording, StoredObject
from storage.errors import Conflict, Gone, NotFound, StorageUnavailable
from storage.instructions import normalize_number
from storage.media.codecs import codec
from storage.media.timeline import stereo_pcm
from storage.media.tracks import AUDIO_KIND, track_records
from storage.media.wav import wav_header
from storage.retention import Holds, Windows, current_windows

log = logging.getLogger(__name__)

LEFT, RIGHT = "inbound", "outbound"


class Lifecycle:
    """What decides when a tenant's recordings go: the windows of its current instructions
    (a changed window applies to stored recordings too) and its active legal holds; loaded
    once for a page of recordings."""

    def __init__(self, windows: Windows, holds: Holds) -> None:
        self.windows = windows
        self.holds = holds

    @classmethod
    async def load(cls, catalog: Catalog, tenant: str) -> Lifecycle:
        windows = await current_windows(catalog, tenant)
        return cls(windows, Holds(await catalog.holds.list(tenant, active_only=True)))

    def fields(self, recording: Recording, call: Call) -> dict[str, Any]:
        """``expires_at`` (when the recording goes: with its last kind of data; null while
        held, deleted or live), ``expires`` per data class, ``legal_hold`` and the ids of
        the holds on it."""
        holds = self.holds.covering(call.id, call.from_number, call.to_number)
        ended = call.ended_at if recording.status != "recording" else None
        expires: dict[str, str | None] = {"recordings": None, "transcripts": None}
        content = None
        if ended is not None and recording.status != "deleted":
            classes: list[DataClass] = []
            if call.decision.get("store_recording") and not recording.audio_purged:
                classes.append("recordings")
            if call.decision.get("ai") and recording.status in ("processing", "analyzed"):
                classes.append("transcripts")
            when = {c: self.windows.expires(c, ended) for c in ("recordings", "transcripts")}
            expires = {data_class: iso(at) for data_class, at in when.items()}
            last = max((when[c] for c in classes), default=self.windows.first_expires(ended))
            content = None if holds else last
        call_record = (
            None if call.ended_at is None else self.windows.call_records.after(call.ended_at)
        )
        return {
            "expires_at": iso(content),
            "expires": {**expires, "call_records": iso(call_record)},
            "legal_hold": bool(holds),
            "legal_holds": [hold.id for hold in holds],
        }


def recording_view(
    recording: Recording, call: Call, tracks: list[str], lifecycle: Lifecycle
) -> dict[str, Any]:
    duration = None
    if recording.samples is not None:
        duration = round(recording.samples / call.sample_rate, 3)
    return {
        "id": recording.id,
        "call_id": call.id,
        "tenant": recording.tenant_id,
        "from": call.from_number,
        "to": call.to_number,
        "direction": call.direction,
        "started_at": iso(call.started_at),
        "ended_at": iso(recording.ended_at),
        "duration_s": duration,
        "codec": call.codec,
        "sample_rate": call.sample_rate,
        "tracks": tracks,
        "instructions_version": recording.instructions_version,
        "decision": call.decision,
        "status": recording.status,
        "delete_reason": recording.delete_reason,
        "deleted_at": iso(recording.deleted_at),
        **lifecycle.fields(recording, call),
        "audio_purged": recording.audio_purged,
    }


def _encode_cursor(recording: Recording) -> str:
    raw = orjson.dumps([recording.created_at.isoformat(), recording.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, recording_id = orjson.loads(raw)
        value = datetime.fromisoformat(created_at)
        if value.tzinfo is None or not isinstance(recording_id, str):
            raise ValueError
    except (binascii.Error, ValueError, TypeError):  # orjson's errors are ValueErrors
        raise BadRequest("cursor is not one this API handed out.", code="bad_query") from None
    return value, recording_id


async def list_recordings(request: web.Request) -> web.Response:
    """The tenant's recordings, newest first, a page at a time."""
    tenant = request[TENANT]
    catalog = request.app[SERVICES].catalog
    number = request.query.get("number")
    if number is not None:
        try:
            number = normalize_number(number)
        except ValueError:
            raise BadRequest("number is not a phone number.", code="bad_query") from None
    limit = query_int(request, "limit", default=50, low=1, high=200)
    cursor = request.query.get("cursor")
    entries = await catalog.recordings.list_entries(
        tenant,
        number=number,
        since=query_time(request, "since"),
        until=query_time(request, "until"),
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page, more = entries[:limit], len(entries) > limit
    tracks = await catalog.objects.tracks(tenant, [r.id for r, _ in page], kind=AUDIO_KIND)
    lifecycle = await Lifecycle.load(catalog, tenant)
    items = [
        recording_view(recording, call, tracks[recording.id], lifecycle) for recording, call in page
    ]
    next_cursor = _encode_cursor(page[-1][0]) if more else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def find_recording(
    catalog: Catalog, tenant: str, path: Mapping[str, str]
) -> tuple[Recording, Call]:
    """The path's recording in the caller's tenant, with its call (404 otherwise)."""
    return await catalog.recordings.get_entry(tenant, path["recording_id"])


async def get_recording(request: web.Request) -> web.Response:
    """The recording's metadata (no audio)."""
    tenant, catalog = request[TENANT], request.app[SERVICES].catalog
    recording, call = found(request)
    tracks = await catalog.objects.tracks(tenant, [recording.id], kind=AUDIO_KIND)
    lifecycle = await Lifecycle.load(catalog, tenant)
    return web.json_response(recording_view(recording, call, tracks[recording.id], lifecycle))


async def get_audio(request: web.Request) -> web.StreamResponse:
    """A WAV of 16-bit PCM, stereo (inbound left, outbound right) at the call's sample rate,
    decrypted on the fly; paused stretches are silence. A `Range: bytes=...` request (one
    range) is answered 206 with those bytes, so players can seek. Every read is audited
    (`audio.read`) before the first byte is sent. If a sealed object fails to verify mid-stream the
    connection is closed early: the body is shorter than Content-Length and nothing
    unverified was sent."""
    principal, tenant = await principal_of(request), request[TENANT]
    app = request.app
    services = app[SERVICES]
    recording, call = found(request)
    wav = await open_wav(services, recording, call)
    wanted = byte_range(request.headers.get("Range"), wav.size)  # a 416 reads nothing
    await services.catalog.audit.append(
        tenant,
        actor=principal.actor,
        action="audio.read",
        object=recording.id,
        detail={"tracks": wav.tracks},
        now=app[CLOCK].now(),
    )
    response = web.StreamResponse(
        status=200 if wanted is None else 206,
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="{recording.id}.wav"',
            "Cache-Control": "no-store",
            "Accept-Ranges": "bytes",
        },
    )
    body = wav.body
    if wanted is None:
        response.content_length = wav.size
    else:
        first, last = wanted
        response.headers["Content-Range"] = f"bytes {first}-{last}/{wav.size}"
        response.content_length = last - first + 1
        body = byte_slice(wav.body, first, last)
    await response.prepare(request)
    try:
        async for block in body:
            await response.write(block)
    except CallvaultError as e:
        # The status line is sent: the only honest signal left is a short body, which the
        # client sees against Content-Length. Nothing unverified was sent.
        log.error("recording %s: export stopped: %s", recording.id, e.code)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


_RANGE = re.compile(r"bytes=[ \t]*(?P<first>[0-9]{0,19})-(?P<last>[0-9]{0,19})[ \t]*", re.ASCII)
"""One byte range (RFC 9110 14.1.2): ASCII digits only, at most 19 of them (what an int64
holds); anything else is ignored, as the RFC allows."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a ``Range`` header asks of a ``size``-byte body (RFC 9110
    14.2), so a browser's player can seek; ``None`` for the whole body: no header, or one
    this server ignores as the RFC allows (another unit, several ranges, a malformed one).
    ``RangeNotSatisfiable`` (416) for a range that starts past the end."""
    found = _RANGE.fullmatch(header) if header is not None else None
    if found is None or not (found["first"] or found["last"]):
        return None
    first_text, last_text = found["first"], found["last"]
    if not first_text:  # "bytes=-N": the last N bytes
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(f"The body has {size} bytes; bytes=-0 asks for none.", size)
        return max(0, size - suffix), size - 1
    first = int(first_text)
    if first >= size:
        raise RangeNotSatisfiable(f"The body has {size} bytes; the range starts at {first}.", size)
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


async def byte_slice(
    body: AsyncGenerator[bytes, None], first: int, last: int
) -> AsyncGenerator[bytes, None]:
    """Bytes ``first`` to ``last`` (inclusive) of ``body``. The body is produced from its
    start (each sealed block must be opened and verified in order); what comes before
    ``first`` is dropped, and reading stops after ``last``."""
    offset = 0
    try:
        async for block in body:
            end = offset + len(block)
            if end > first:
                yield block[max(0, first - offset) : last + 1 - offset]
            offset = end
            if offset > last:
                return
    finally:
        await body.aclose()


@dataclass(frozen=True)
class Wav:
    """A recording's audio as a WAV stream, opened (keys unwrapped) but not yet read."""

    tracks: list[str]
    size: int
    body: AsyncGenerator[bytes, None]
    """The header, then the PCM; raises ``CallvaultError`` if an object fails to verify."""


async def open_wav(
    services: Services,
    recording: Recording,
    call: Call,
    objects: Sequence[StoredObject] | None = None,
) -> Wav:
    """Open the stored audio of a recording as a stereo WAV (inbound left, outbound right),
    or raise the error that says why there is none (deleted 410, purged 410, AI only 403,
    in progress 409, still in the spool 503, too long 413). ``objects``: the recording's
    objects when the caller has them already (the export reads them a page at a time)."""
    catalog, tenant = services.catalog, recording.tenant_id
    if recording.status == "deleted":
        raise Gone(f"Recording {recording.id!r} was deleted.", code="recording_deleted")
    if recording.audio_purged:
        raise Gone(f"The audio of {recording.id!r} was purged after analysis.", code="audio_purged")
    if not call.decision.get("store_recording"):
        raise Forbidden(
            "The tenant's instructions allowed AI processing of this call, not a recording.",
        )
    if recording.status == "recording" or recording.samples is None:
        raise Conflict(f"Recording {recording.id!r} is still in progress.")
    if call.decision.get("redact_audio") and recording.status in ("processing", "failed"):
        # The instructions said the audio is redacted: until the analysis has done it, the
        # audio holds what was to be taken out, so nobody hears it.
        raise Conflict(
            f"The audio of {recording.id!r} is not redacted yet"
            + (" (its analysis failed)." if recording.status == "failed" else "."),
            code="audio_not_redacted",
        )
    if objects is None:
        objects = await catalog.objects.list(tenant, recording_id=recording.id)
    audio = [o for o in objects if o.kind == AUDIO_KIND]
    if any(o.state == "writing" for o in audio):
        # Its commit failed (the store was down): the audio waits in the spool and is
        # published by the next recovery pass. A WAV now would have silence for it.
        raise StorageUnavailable(
            f"Part of the audio of {recording.id!r} is still being published to the object "
            "store; try again shortly."
        )
    if audio and all(o.state == "deleted" for o in audio):
        raise Gone(
            f"The audio of {recording.id!r} was deleted: its retention window ended.",
            code="audio_deleted",
        )
    tracks: dict[str, list[AsyncIterator[bytes]]] = {}
    for stored in audio:
        if stored.state == "committed" and stored.track in (LEFT, RIGHT):
            try:
                stream = await services.vault.open_stored(stored)
            except KeyUnavailable:  # shredded by a deletion that a crash interrupted
                raise Gone(
                    f"The audio of {recording.id!r} is being deleted.", code="audio_deleted"
                ) from None
            tracks.setdefault(stored.track, []).append(stream)
    frames = recording.samples
    try:
        header = wav_header(channels=2, sample_rate=call.sample_rate, frames=frames)
    except ValueError:  # RIFF sizes are 32-bit; longer recordings would need RF64
        raise TooLarge(
            f"Recording {recording.id!r} is too long for one WAV file "
            f"({frames / call.sample_rate / 3600:.1f} h of stereo at {call.sample_rate} Hz)."
        ) from None

    async def body() -> AsyncGenerator[bytes, None]:
        yield header
        left = track_records(tracks.get(LEFT, []))
        right = track_records(tracks.get(RIGHT, []))
        async for block in stereo_pcm(left, right, codec=codec(call.codec), frames=frames):
            yield block

    return Wav(tracks=sorted(tracks), size=len(header) + frames * 4, body=body())


async def _result(request: web.Request, kind: str, features: tuple[str, ...]) -> web.Response:
    """A recording's sealed transcript or analysis, audited before it is sent."""
    principal, tenant = await principal_of(request), request[TENANT]
    services = request.app[SERVICES]
    catalog = services.catalog
    recording, call = found(request)
    if recording.status == "deleted":
        raise Gone(f"Recording {recording.id!r} was deleted.", code="recording_deleted")
    if not any(feature in features for feature in call.decision.get("ai", ())):
        raise NotFound(
            f"The instructions that accepted recording {recording.id!r} did not ask for "
            f"{'a transcript' if kind == TRANSCRIPT_KIND else 'any analysis'}.",
            code="not_instructed",
        )
    if recording.status in ("recording", "processing"):
        raise Conflict(
            f"Recording {recording.id!r} is {recording.status}; its {kind} is not ready yet.",
            code="analysis_pending",
        )
    if recording.status == "failed":
        raise Conflict(
            f"The analysis of recording {recording.id!r} failed: {recording.failure_reason}",
            code="analysis_failed",
        )
    of_kind = [
        o for o in await catalog.objects.list(tenant, recording_id=recording.id) if o.kind == kind
    ]
    stored = [o for o in of_kind if o.state == "committed"]
    if not of_kind and kind == ORIGINAL_TRANSCRIPT_KIND:
        raise NotFound(
            f"No unredacted transcript of {recording.id!r} was kept (its instructions did not "
            "say ai.redaction.transcript with keep_original).",
            code="original_not_kept",
        )
    if not stored:
        code = "transcript_deleted" if kind == ORIGINAL_TRANSCRIPT_KIND else f"{kind}_deleted"
        raise Gone(f"The {kind} of {recording.id!r} was deleted.", code=code)
    body = await services.vault.read_object(tenant, stored[-1].id)
    await catalog.audit.append(
        tenant,
        actor=principal.actor,
        action=f"{kind}.read",
        object=recording.id,
        detail={"object": stored[-1].id},
        now=request.app[CLOCK].now(),
    )
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def get_transcript(request: web.Request) -> web.Response:
    """The transcript per track (inbound = caller, outbound = agent), decrypted from its
    sealed object; every read is audited (`transcript.read`)."""
    return await _result(request, TRANSCRIPT_KIND, ("transcript",))


async def get_original_transcript(request: web.Request) -> web.Response:
    """The unredacted transcript, kept beside the redacted one only when the call's
    instructions said `ai.redaction.keep_original`; for admins only, and every read is
    audited (`transcript.original.read`)."""
    return await _result(request, ORIGINAL_TRANSCRIPT_KIND, ("transcript",))


async def get_analysis(request: web.Request) -> web.Response:
    """Summary, sentiment, talk/listen metrics and topics: only the features the call's
    instructions asked for. Decrypted from its sealed object; every read is audited
    (`analysis.read`)."""
    return await _result(request, ANALYSIS_KIND, ANALYSIS_FEATURES)
