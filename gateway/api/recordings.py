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
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from ai.pipeline import ANALYSIS_FEATURES
from ai.worker import ANALYSIS_KIND, TRANSCRIPT_KIND
from crypto.errors import (
    BadRequest,
    CallvaultError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    StorageUnavailable,
    TooLarge,
)
from gateway.api.common import iso, principal_of, query_int, query_time
from gateway.auth import require_role, scope, tenant_of
from gateway.instructions import normalize_number, parse_duration, parse_instructions
from gateway.state import CLOCK, SERVICES
from storage.catalog import Call, Catalog, Recording
from storage.media import AUDIO_KIND, codec, stereo_pcm, track_records, wav_header

log = logging.getLogger(__name__)

LEFT, RIGHT = "inbound", "outbound"


class _Expiry:
    """When a recording's audio expires under the instructions version that allowed it
    (cached per version for a page of recordings)."""

    def __init__(self, catalog: Catalog, tenant: str) -> None:
        self._catalog = catalog
        self._tenant = tenant
        self._retention: dict[int, str] = {}

    async def of(self, recording: Recording) -> datetime | None:
        if recording.ended_at is None:
            return None
        version = recording.instructions_version
        if version not in self._retention:
            row = await self._catalog.get_instructions(self._tenant, version)
            self._retention[version] = parse_instructions(row.document).retention.recordings
        return parse_duration(self._retention[version]).after(recording.ended_at)


def recording_view(
    recording: Recording, call: Call, tracks: list[str], expires_at: datetime | None
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
        "expires_at": iso(expires_at),
        "legal_hold": False,
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
    tenant = scope(
        await principal_of(request), request.match_info["tenant"], {"admin", "processor"}
    )
    catalog = request.app[SERVICES].catalog
    number = request.query.get("number")
    if number is not None:
        try:
            number = normalize_number(number)
        except ValueError:
            raise BadRequest("number is not a phone number.", code="bad_query") from None
    limit = query_int(request, "limit", default=50, low=1, high=200)
    cursor = request.query.get("cursor")
    entries = await catalog.list_recordings(
        tenant,
        number=number,
        since=query_time(request, "since"),
        until=query_time(request, "until"),
        after=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page, more = entries[:limit], len(entries) > limit
    tracks = await catalog.recording_tracks(tenant, [r.id for r, _ in page], kind=AUDIO_KIND)
    expiry = _Expiry(catalog, tenant)
    items = [
        recording_view(recording, call, tracks[recording.id], await expiry.of(recording))
        for recording, call in page
    ]
    next_cursor = _encode_cursor(page[-1][0]) if more else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


async def get_recording(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    tenant = tenant_of(principal)
    catalog = request.app[SERVICES].catalog
    recording, call = await catalog.get_recording_entry(tenant, request.match_info["recording_id"])
    require_role(principal, {"admin", "processor"})
    tracks = await catalog.recording_tracks(tenant, [recording.id], kind=AUDIO_KIND)
    expires_at = await _Expiry(catalog, tenant).of(recording)
    return web.json_response(recording_view(recording, call, tracks[recording.id], expires_at))


async def get_audio(request: web.Request) -> web.StreamResponse:
    """The recording as a stereo 16-bit PCM WAV at the call's sample rate."""
    principal = await principal_of(request)
    tenant = tenant_of(principal)
    app = request.app
    services = app[SERVICES]
    catalog = services.catalog
    recording, call = await catalog.get_recording_entry(tenant, request.match_info["recording_id"])
    require_role(principal, {"admin"})
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
    tracks: dict[str, list[AsyncIterator[bytes]]] = {}
    objects = await catalog.list_objects(tenant, recording_id=recording.id)
    if any(o.kind == AUDIO_KIND and o.state == "writing" for o in objects):
        # Its commit failed (the store was down): the audio waits in the spool and is
        # published by the next recovery pass. A WAV now would have silence for it.
        raise StorageUnavailable(
            f"Part of the audio of {recording.id!r} is still being published to the object "
            "store; try again shortly."
        )
    for stored in objects:
        if (
            stored.kind == AUDIO_KIND
            and stored.state == "committed"
            and stored.track in (LEFT, RIGHT)
        ):
            stream = await services.vault.open_object(tenant, stored.id)
            tracks.setdefault(stored.track, []).append(stream)
    await catalog.append_audit(
        tenant,
        actor=principal.actor,
        action="audio.read",
        object=recording.id,
        detail={"tracks": sorted(tracks)},
        now=app[CLOCK].now(),
    )
    track_codec = codec(call.codec)
    frames = recording.samples
    try:
        header = wav_header(channels=2, sample_rate=call.sample_rate, frames=frames)
    except ValueError:  # RIFF sizes are 32-bit; longer recordings would need RF64
        raise TooLarge(
            f"Recording {recording.id!r} is too long for one WAV file "
            f"({frames / call.sample_rate / 3600:.1f} h of stereo at {call.sample_rate} Hz)."
        ) from None
    response = web.StreamResponse(
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="{recording.id}.wav"',
            "Cache-Control": "no-store",
        }
    )
    response.content_length = len(header) + frames * 4
    await response.prepare(request)
    await response.write(header)
    try:
        left = track_records(tracks.get(LEFT, []))
        right = track_records(tracks.get(RIGHT, []))
        async for block in stereo_pcm(left, right, codec=track_codec, frames=frames):
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


async def _result(request: web.Request, kind: str, features: tuple[str, ...]) -> web.Response:
    """A recording's sealed transcript or analysis, audited before it is sent."""
    principal = await principal_of(request)
    tenant = tenant_of(principal)
    services = request.app[SERVICES]
    catalog = services.catalog
    recording, call = await catalog.get_recording_entry(tenant, request.match_info["recording_id"])
    require_role(principal, {"admin", "processor"})
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
    stored = [
        o
        for o in await catalog.list_objects(tenant, recording_id=recording.id, state="committed")
        if o.kind == kind
    ]
    if not stored:
        raise Gone(f"The {kind} of {recording.id!r} was deleted.", code=f"{kind}_deleted")
    body = await services.vault.read_object(tenant, stored[-1].id)
    await catalog.append_audit(
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
    """``{"language", "model", "duration_s", "segments": [{"track", "start", "end", "text"}]}``"""
    return await _result(request, TRANSCRIPT_KIND, ("transcript",))


async def get_analysis(request: web.Request) -> web.Response:
    """The instructed features only: ``summary``, ``sentiment``, ``talk_listen``, ``topics``."""
    return await _result(request, ANALYSIS_KIND, ANALYSIS_FEATURES)
